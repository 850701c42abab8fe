"""What the daemon checks before it starts, and the lines a newcomer reads when something is wrong."""

import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshvpn import keys
from meshvpn.node.datapath import fastpath
from meshvpn.config import Address, load_node_config
from meshvpn.node.coordclient import CoordHandshakeFailed, CoordLinkClosed, CoordUnreachable
from meshvpn.errors import MeshError
from meshvpn.node import startup
from meshvpn.node.ctl import format_status

COORD = Address("vps.example.net", 7400)


def node_config(tmp_path: Path, port: int = 0, address: str = "127.0.0.1"):
    keys.write_private_key(tmp_path / "node.key")
    real = keys.encode_key(keys.public_key(keys.generate_private_key()))
    (tmp_path / "node.yaml").write_text(
        f"private_key_file: node.key\nstate_dir: {tmp_path}/state/meshvpn\n"
        f"coord:\n  address: 192.0.2.1:7400\n  public_key: {real}\n"
        f"listen:\n  address: {address}\n  port: {port}\n")
    return load_node_config(tmp_path / "node.yaml")


def test_preflight_creates_the_state_directory_and_logs_the_data_path(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(startup, "TUN_DEVICE", tmp_path)  # exists
    monkeypatch.setattr(startup.os, "geteuid", lambda: 0)
    config = node_config(tmp_path)
    caplog.set_level("INFO", "meshvpn.node")
    startup.preflight(config, tmp_path / "node.yaml")
    assert config.state_dir.is_dir() and (config.state_dir.stat().st_mode & 0o777) == 0o700
    assert f"data path: {fastpath.DATA_PATH_TEXT}" in caplog.text
    assert fastpath.DATA_PATH == ("native" if fastpath.NATIVE else "pure-python")


def test_a_missing_tun_device_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(startup, "TUN_DEVICE", tmp_path / "absent")
    with pytest.raises(MeshError, match=r"absent is missing: load the module \(`modprobe tun`\).*--device /dev/net/tun"):
        startup.preflight(node_config(tmp_path), tmp_path / "node.yaml")


def test_not_root_without_net_admin_says_to_run_as_root(tmp_path, monkeypatch):
    monkeypatch.setattr(startup, "TUN_DEVICE", tmp_path)
    monkeypatch.setattr(startup.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(startup, "_has_net_admin", lambda: False)
    with pytest.raises(MeshError, match="needs root or CAP_NET_ADMIN: run it as root"):
        startup.preflight(node_config(tmp_path), tmp_path / "node.yaml")


def test_a_udp_port_in_use_names_the_port_and_the_key_to_change(tmp_path, monkeypatch):
    monkeypatch.setattr(startup, "TUN_DEVICE", tmp_path)
    monkeypatch.setattr(startup.os, "geteuid", lambda: 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(MeshError, match=f"UDP port {port} is in use.*set listen.port in .*node.yaml"):
            startup.preflight(node_config(tmp_path, port), tmp_path / "node.yaml")


def test_coord_failures_say_what_was_tried_and_what_to_check():
    refused = startup.explain_coord_failure(COORD, CoordUnreachable("vps.example.net", 7400, "Connection refused"))
    assert "cannot reach the coordination server at vps.example.net:7400 over TCP (Connection refused)" in refused
    assert "firewall let TCP port 7400 in" in refused
    unresolved = startup.explain_coord_failure(COORD, CoordUnreachable("vps.example.net", 7400, "Name unknown", True))
    assert "cannot resolve the coordination server's name 'vps.example.net'" in unresolved
    wrong = startup.explain_coord_failure(COORD, CoordHandshakeFailed("handshake failed: closed", "closed by the server"))
    assert "did not finish the handshake (closed by the server)" in wrong and "coord.public_key" in wrong
    lost = startup.explain_coord_failure(COORD, CoordLinkClosed("closed by the server"))
    assert lost == "coord link to vps.example.net:7400 lost: closed by the server"


@pytest.mark.parametrize("code, says", [
    ("auth_key_invalid", "meshvpn coord key create"),
    ("auth_key_expired", "has expired"),
    ("auth_key_used", "--reusable"),
    ("revoked", "revoked this node"),
    ("approval_pending", "meshvpn coord nodes approve NAME"),
])
def test_refusals_say_what_to_do(code, says):
    line = startup.explain_refusal(code, "the server's words")
    assert line.startswith("the coordination server refused this node: the server's words; ") and says in line


def test_an_unknown_refusal_keeps_its_code():
    assert startup.explain_refusal("bad_request", "") == \
        "the coordination server refused this node: bad_request (bad_request)"


def test_status_shows_the_data_path():
    status = {"self": {"name": "alice", "overlay": "100.64.0.1", "coord": "connected", "data_path": "native"},
              "peers": []}
    assert format_status(status).split() == ["100.64.0.1", "alice", "self", "coord", "connected", "data", "path",
                                             "native"]


def test_the_descriptor_limit_is_raised_for_birthday_and_tcp_campaigns():
    """In a child process that starts with the 1,024 descriptors many systems give: the daemon asks for more."""
    program = (
        "import resource\n"
        "from meshvpn.node import startup\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))\n"
        "print(startup.raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    answer = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    returned, soft, hard = (int(word) for word in answer.split())
    expected = startup.DESCRIPTORS if hard == resource.RLIM_INFINITY else min(startup.DESCRIPTORS, hard)
    assert returned == soft == expected
