"""Control socket (`localsock`): 0600 socket in a created directory, streamed answers; the daemon verbs: clear client errors."""

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from meshvpn import localsock
from meshvpn.node import ctl

STATUS = {
    "self": {"name": "alice", "overlay": "100.64.0.1", "coord": "connected"},
    "peers": [
        {"name": "bob", "overlay": "100.64.0.2", "path": "direct", "endpoint": "203.0.113.7:41641",
         "last_handshake": 75.0, "rx_bytes": 2048, "tx_bytes": 10},
        {"name": "carol", "overlay": "100.64.0.3", "path": "-", "endpoint": None,
         "last_handshake": None, "rx_bytes": 0, "tx_bytes": 0},
    ],
}


async def handler(request):
    if request["cmd"] == "status":
        yield {**STATUS, "done": True}
    elif request["cmd"] == "ping":
        yield {"type": "path", "name": "bob", "old": "relay", "new": "direct"}
        yield {"type": "pong", "name": "bob", "overlay": "100.64.0.2", "path": "direct",
               "endpoint": "203.0.113.7:41641", "rtt_ms": 1.23}
        yield {"done": True}
    else:
        yield {"error": "unknown command", "done": True}


@pytest.fixture
def server(tmp_path):
    """A control server on its own loop thread; yields the socket path."""
    path = str(tmp_path / "run" / "sub" / "ctl.sock")
    loop = asyncio.new_event_loop()
    srv = localsock.ControlServer(path, handler)
    loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield path
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(srv.close())
    loop.close()


def test_socket_is_private_and_answers_stream(server):
    assert stat.S_IMODE(os.stat(server).st_mode) == 0o600
    replies = list(localsock.request(server, {"cmd": "ping", "peer": "bob"}))
    assert [r.get("type") for r in replies] == ["path", "pong", None] and replies[-1]["done"]


def test_status_text_and_json(server, capsys):
    assert ctl.client_main(SimpleNamespace(command="status", socket=server, json=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["100.64.0.1", "alice", "self", "coord", "connected"]
    column = lines[1].index("203.0.113.7:41641")
    assert lines[0][column:] == "coord connected" and lines[2][column:].startswith("- "), lines
    assert lines[1].split()[:4] == ["100.64.0.2", "bob", "direct", "203.0.113.7:41641"]
    assert "handshake 1m ago" in lines[1] and "rx 2.0 KiB tx 10 B" in lines[1]
    assert lines[2].split()[:4] == ["100.64.0.3", "carol", "-", "-"]
    with_instance = {"self": {"name": "alice", "coord": "connected", "coord_address": "203.0.113.12:7400"}, "peers": []}
    assert ctl.format_status(with_instance).split()[-3:] == ["coord", "connected", "203.0.113.12:7400"]
    assert ctl.client_main(SimpleNamespace(command="status", socket=server, json=True)) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_ping_prints_path_change_and_pong(server, capsys):
    assert ctl.client_main(SimpleNamespace(command="ping", socket=server, peer="bob", count=1)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "path to bob changed: relay -> direct",
        "pong from bob (100.64.0.2) via direct 203.0.113.7:41641 in 1.2 ms",
    ]


def test_bad_request_line_gets_an_error(server):
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server)
        sock.sendall(b"not json\n")
        assert "bad request" in json.loads(sock.makefile().readline())["error"]


def test_client_without_daemon_fails_with_one_line(tmp_path, capsys):
    args = SimpleNamespace(command="status", socket=str(tmp_path / "absent.sock"), json=False)
    assert ctl.client_main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not running" in err


def test_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "ctl.sock")
    dead = "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])"
    subprocess.run([sys.executable, "-c", dead, path], check=True, timeout=30)
    assert stat.S_ISSOCK(os.stat(path).st_mode), "the dead process left its socket file behind"

    async def run():
        srv = localsock.ControlServer(path, handler)
        await srv.start()
        try:
            return await asyncio.to_thread(lambda: list(localsock.request(path, {"cmd": "status"})))
        finally:
            await srv.close()

    assert asyncio.run(run()) == [{**STATUS, "done": True}]
    assert not os.path.exists(path)


def test_a_live_daemons_socket_is_not_replaced(server):
    async def second_daemon():
        await localsock.ControlServer(server, handler).start()

    with pytest.raises(OSError, match="another daemon is listening"):
        asyncio.run(second_daemon())
    assert list(localsock.request(server, {"cmd": "status"})) == [{**STATUS, "done": True}]


def test_peer_map_lines():
    peers = [{"name": "bob", "overlay": "100.64.0.2", "key": "K" * 44, "endpoints": ["10.0.0.2:41641", "203.0.113.7:41641"]}]
    assert ctl.format_peers(peers).split() == ["100.64.0.2", "bob", "K" * 44, "10.0.0.2:41641,203.0.113.7:41641"]
    assert ctl.format_peers([]) == "(no peers)"


def test_status_has_a_lan_line_once_the_node_joined_or_carried_something():
    idle = {"groups": [], "sent": {"broadcast": 0, "multicast": 0, "copies": 0},
            "received": {"broadcast": 0, "multicast": 0}, "dropped": {}, "access_rules": None}
    status = {"self": {**STATUS["self"], "lan": idle}, "peers": [{**STATUS["peers"][0], "groups": ["224.0.0.251"]}]}
    assert len(ctl.format_status(status).splitlines()) == 2, "nothing to say yet"
    status["self"]["lan"] = {**idle, "groups": ["224.0.0.251"], "sent": {"broadcast": 2, "multicast": 0, "copies": 6},
                             "dropped": {"rate_packets": 3}}
    self_line, lan_line, bob_line = ctl.format_status(status).splitlines()
    assert lan_line.split()[:5] == ["-", "lan", "groups", "224.0.0.251", "broadcast"]
    assert "copies 6" in lan_line and "dropped rate_packets 3" in lan_line
    assert bob_line.endswith("groups 224.0.0.251")


def test_a_relayed_peer_shows_its_relay_why_and_the_sums_under_it():
    carol = {**STATUS["peers"][1], "path": "relay", "relay": "east", "relay_reason": "lowest sum",
             "relay_rtts": {"east": 41, "west": 1},
             "relay_sums": {"east": {"ours": 1, "theirs": 41, "sum": 42}, "west": {"ours": 120, "theirs": 1, "sum": 121}}}
    _, carol_line, sums_line = ctl.format_status({**STATUS, "peers": [carol]}).splitlines()
    assert carol_line.endswith(" via east: lowest sum"), carol_line
    assert sums_line.split() == ["-", "relays", "*east", "1+41=42", "ms", "west", "120+1=121", "ms"]
    by_host = {**carol, "relay": "h1", "peer_relay": True, "relay_reason": "peer's home", "relay_sums": {}}
    assert ctl.format_status({**STATUS, "peers": [by_host]}).splitlines()[1].endswith(" via h1 (peer relay): peer's home")
    assert len(ctl.format_status({**STATUS, "peers": [by_host]}).splitlines()) == 2, "no sums, no line"
