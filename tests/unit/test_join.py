"""`meshvpn join` and `meshvpn leave` on files under a temporary root (never the machine's /etc)."""

import socket
import stat
import threading
from pathlib import Path

import pytest

from meshvpn import cli, keys
from meshvpn.config import Address, load_node_config
from meshvpn.coord.authkeys import token_for_secret
from meshvpn.join import default_name
from meshvpn.joinstring import encode

COORD_KEY = bytes(range(1, 33))
OTHER_KEY = bytes(range(2, 34))
JOIN = encode("vps.example.net:7400", COORD_KEY, token_for_secret(bytes(32)))
NOBODY = encode("127.0.0.1:9", COORD_KEY, token_for_secret(bytes(32)))
"""A coordination server on a loopback port nothing listens on: leave's message is refused at once."""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def join(capsys, root: Path, *extra: str, key: str = JOIN) -> tuple[int, str, str]:
    return run(capsys, "join", "--root", str(root), "--key", key, "--no-check", *extra)


def test_join_writes_a_commented_private_config_and_a_key(tmp_path, capsys):
    code, out, _ = join(capsys, tmp_path, "--name", "alice")
    assert code == 0
    config_path = tmp_path / "etc/meshvpn/node.yaml"
    config = load_node_config(config_path)
    assert config.hostname == "alice"
    assert config.coord.address == Address("vps.example.net", 7400)
    assert config.coord.public_key == COORD_KEY
    assert config.coord.auth_key == token_for_secret(bytes(32))
    assert config.state_dir == tmp_path / "var/lib/meshvpn" and config.state_dir.is_dir()
    assert config.control_socket == tmp_path / "run/meshvpn/meshvpn.sock"
    for path in (config_path, config.private_key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = keys.encode_key(keys.public_key(keys.read_private_key(config.private_key_file)))
    assert public in out
    assert f"start the daemon with: meshvpn daemon -c {config_path}" in out
    text = config_path.read_text()
    assert "# coordination server's public key, pinned" in text and "  # pre-auth key" in text


def test_join_again_changes_nothing(tmp_path, capsys):
    join(capsys, tmp_path, "--name", "alice")
    config_path, key_path = tmp_path / "etc/meshvpn/node.yaml", tmp_path / "etc/meshvpn/node.key"
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in (config_path, key_path)]
    code, out, _ = join(capsys, tmp_path, "--name", "alice")
    assert code == 0 and "already joined to vps.example.net:7400 as alice" in out and "nothing changed" in out
    code, out, _ = join(capsys, tmp_path, "--name", "bob")
    assert code == 0 and "nothing changed; to take another name, `meshvpn leave` and join again" in out
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in (config_path, key_path)] == before


def test_join_never_overwrites_a_config_for_another_server(tmp_path, capsys):
    join(capsys, tmp_path)
    before = (tmp_path / "etc/meshvpn/node.yaml").read_bytes()
    other = encode("203.0.113.9:7400", OTHER_KEY, token_for_secret(bytes(32)))
    code, _, err = join(capsys, tmp_path, key=other)
    assert code == 1 and "meshvpn leave" in err and "vps.example.net:7400" in err
    assert (tmp_path / "etc/meshvpn/node.yaml").read_bytes() == before


def test_coord_given_on_the_command_line_wins_over_the_strings_address(tmp_path, capsys):
    code, _, _ = run(capsys, "join", "198.51.100.7:7401", "--root", str(tmp_path), "--key", JOIN, "--no-check")
    assert code == 0
    assert load_node_config(tmp_path / "etc/meshvpn/node.yaml").coord.address == Address("198.51.100.7", 7401)


def test_join_keeps_an_existing_node_key(tmp_path, capsys):
    (tmp_path / "etc/meshvpn").mkdir(parents=True)
    private = keys.write_private_key(tmp_path / "etc/meshvpn/node.key")
    join(capsys, tmp_path)
    assert keys.read_private_key(tmp_path / "etc/meshvpn/node.key") == private


def test_leave_removes_config_and_key_and_is_safe_to_repeat(tmp_path, capsys):
    join(capsys, tmp_path, "--name", "alice", key=NOBODY)
    code, out, _ = run(capsys, "leave", "--root", str(tmp_path))
    assert code == 0
    assert "could not tell the coordination server at 127.0.0.1:9" in out
    assert "until its admin runs `meshvpn coord nodes revoke alice`" in out
    assert not (tmp_path / "etc/meshvpn/node.yaml").exists() and not (tmp_path / "etc/meshvpn/node.key").exists()
    code, out, _ = run(capsys, "leave", "--root", str(tmp_path))
    assert code == 0 and "not joined" in out


def test_root_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MESHVPN_ROOT", str(tmp_path))
    assert run(capsys, "join", "--key", JOIN, "--no-check")[0] == 0
    assert (tmp_path / "etc/meshvpn/node.yaml").is_file()


def test_under_systemd_a_config_the_unit_does_not_read_is_not_started(tmp_path, capsys):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    code, out, _ = join(capsys, tmp_path)
    assert code == 0 and "the meshvpn unit reads /etc/meshvpn/node.yaml" in out


@pytest.mark.parametrize("key, says", [
    ("mvk-0123456789ab-" + "A" * 43, "bare pre-auth key"),
    ("hello", "starts with mvk-"),
    (JOIN[:-6], "copy it again"),
])
def test_a_bad_join_string_says_what_to_do_and_writes_nothing(tmp_path, capsys, key, says):
    code, _, err = join(capsys, tmp_path, key=key)
    assert code == 1 and says in err
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("host, name", [("Alice-PC.local", "alice-pc"), ("--", "node"), ("bob_laptop", "bob-laptop")])
def test_default_name_is_one_dns_label(host, name):
    assert default_name(host) == name


def test_leave_refuses_while_a_daemon_answers_on_the_control_socket(tmp_path, capsys):
    join(capsys, tmp_path, key=NOBODY)
    path = tmp_path / "run/meshvpn/meshvpn.sock"
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()

        def answer():
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b'{"done": true}\n')

        daemon = threading.Thread(target=answer)
        daemon.start()
        code, _, err = run(capsys, "leave", "--root", str(tmp_path))
        daemon.join(5)
    assert code == 1 and "a meshvpn daemon runs with this config" in err and "stop it first" in err
    assert (tmp_path / "etc/meshvpn/node.yaml").exists() and (tmp_path / "etc/meshvpn/node.key").exists()
