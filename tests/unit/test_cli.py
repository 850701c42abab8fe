"""The `meshvpn` command line: help, keys end to end, lazy verb dispatch and error reporting."""

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshvpn import cli, keys

REPO = Path(__file__).resolve().parents[2]


def run_meshvpn(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run `python -m meshvpn ARGS` as a user would, with the source tree importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "meshvpn", *args], input=stdin, capture_output=True, text=True, env=env, timeout=30
    )


def test_help_lists_every_verb() -> None:
    result = run_meshvpn("--help")
    assert result.returncode == 0
    for verb in ("keygen", "pubkey", "daemon", "coord", "relay", "status", "peers", "ping", "netcheck"):
        assert f"    {verb} " in result.stdout


def test_keygen_then_pubkey_end_to_end(tmp_path: Path) -> None:
    key_file = tmp_path / "node.key"
    made = run_meshvpn("keygen", "-o", str(key_file))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = keys.public_key(keys.read_private_key(key_file))
    assert made.stdout == keys.encode_key(public) + "\n"
    shown = run_meshvpn("pubkey", "-k", str(key_file))
    assert (shown.returncode, shown.stdout) == (0, made.stdout)

    again = run_meshvpn("keygen", "-o", str(key_file))
    assert again.returncode == 1
    assert again.stderr == f"meshvpn: key file {key_file} already exists; refusing to overwrite it\n"


def test_keygen_to_stdout_pipes_into_pubkey() -> None:
    made = run_meshvpn("keygen", "-o", "-")
    private = keys.decode_key(made.stdout)
    assert made.stderr == keys.encode_key(keys.public_key(private)) + "\n"
    shown = run_meshvpn("pubkey", "-k", "-", stdin=made.stdout)
    assert shown.stdout == made.stderr


def test_bad_config_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    keys.write_private_key(tmp_path / "node.key")
    (tmp_path / "node.yaml").write_text("private_key_file: node.key\ncoord:\n  adress: 198.51.100.1:7400\n")
    result = run_meshvpn("daemon", "-c", str(tmp_path / "node.yaml"))
    assert result.returncode == 1
    assert result.stderr == f"meshvpn: {tmp_path / 'node.yaml'}:3: coord.adress: unknown key (did you mean 'address'?)\n"
    assert result.stdout == ""


def test_group_readable_key_is_refused_without_traceback(tmp_path: Path) -> None:
    key_file = tmp_path / "node.key"
    keys.write_private_key(key_file)
    key_file.chmod(0o640)
    result = run_meshvpn("pubkey", "-k", str(key_file))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"chmod 600 {key_file}" in result.stderr


@pytest.fixture
def verb_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the `status` verb at a throwaway module whose body is given by the test."""

    def install(body: str) -> None:
        (tmp_path / "fake_verb.py").write_text(textwrap.dedent(body))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setitem(cli.VERB_TARGETS, "status", "fake_verb:main")
        sys.modules.pop("fake_verb", None)

    yield install
    sys.modules.pop("fake_verb", None)


def test_verb_is_dispatched_with_parsed_arguments(verb_module, capsys) -> None:
    verb_module("""
        def main(args):
            print(args.command, args.socket, args.json)
            return 7
    """)
    assert cli.main(["status", "--json", "--socket", "/tmp/x.sock"]) == 7
    assert capsys.readouterr().out == "status /tmp/x.sock True\n"


def test_missing_verb_module_is_reported(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(cli.VERB_TARGETS, "status", "meshvpn.not_in_this_build:main")
    assert cli.main(["status"]) == 2
    assert capsys.readouterr().err == "meshvpn: 'status' is not available in this build\n"


def test_missing_dependency_inside_a_verb_module_is_not_hidden(verb_module) -> None:
    verb_module("import a_dependency_that_is_not_installed\n")
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        cli.main(["status"])


def test_mesh_error_from_a_verb_is_one_line(verb_module, capsys) -> None:
    verb_module("""
        from meshvpn.errors import LocalProtocolError
        def main(args):
            raise LocalProtocolError("the daemon is not running\\nsecond line")
    """)
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().err == "meshvpn: the daemon is not running second line\n"


def test_interrupt_exits_130_quietly(verb_module, capsys) -> None:
    verb_module("""
        def main(args):
            raise KeyboardInterrupt
    """)
    assert cli.main(["status"]) == 130
    assert capsys.readouterr() == ("", "")


def test_coord_admin_verbs_parse_into_one_target() -> None:
    args = cli.build_parser().parse_args(["coord", "key", "create", "--network", "home", "--reusable", "--expires", "2h"])
    assert (args.admin, args.action, args.network, args.reusable, args.expires, args.ephemeral) == (
        "key", "create", "home", True, 7200.0, False,
    )
    assert args.target == cli.VERB_TARGETS["coord-admin"] and args.loader is None
    approve = cli.build_parser().parse_args(["coord", "nodes", "approve", "laptop"])
    assert (approve.admin, approve.action, approve.node) == ("nodes", "approve", "laptop")
    server = cli.build_parser().parse_args(["coord", "-c", "c.yaml"])
    assert (server.admin, server.target, server.config) == (None, cli.VERB_TARGETS["coord"], Path("c.yaml"))


@pytest.mark.parametrize("argv", [["ping", "laptop", "-c", "0"], ["coord", "key", "create", "--network", "n", "--expires", "soon"]])
def test_bad_arguments_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
