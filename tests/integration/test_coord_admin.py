"""`meshvpn coord` end to end through the real command line: the server as a subprocess, the
admin verbs as subprocesses over its admin socket, nodes as in-process clients on loopback.

The narrated script: start the server; create keys; two nodes join; list nodes and networks
(table and JSON); approve a waiting node; revoke a node, which is disconnected at once and leaves
its peer's map; reload on SIGHUP; stop on SIGTERM; then read-only verbs read the database and
write verbs say the server must run.
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshvpn import joinstring, keys
from meshvpn.control import messages as m
from meshvpn.node.coordclient import CoordLinkClosed, CoordRefused, connect

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
private_key_file: coord.key
database: coord.db
listen: 127.0.0.1:0
stun_listen: 127.0.0.1:0
admin_socket: admin.sock
keepalive: {keepalive}
networks:
  - name: home
    cidr: 100.64.0.0/24
  - name: office
    cidr: 100.65.0.0/24
    approval_required: true
relays: []
log:
  level: {level}
"""


def write_config(directory: Path, keepalive: str = "15s", level: str = "info") -> Path:
    path = directory / "coord.yaml"
    path.write_text(CONFIG.format(keepalive=keepalive, level=level))
    return path


def meshvpn(config: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meshvpn", "coord", "-c", str(config), *argv],
        capture_output=True, text=True, timeout=20,
    )


class ServerProcess:
    """`meshvpn coord` as a child process; its stderr log is collected in a file."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.parent / "coord.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshvpn", "coord", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """The first match of `pattern` in the log, waited for up to `timeout` seconds: a bound, not a
        speed asked for (a coord starting on a loaded two-core machine took over 10 s to log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            assert self.proc.poll() is None, f"server exited early:\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the server log:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def coord_dir(tmp_path):
    keys.write_private_key(tmp_path / "coord.key")
    return tmp_path


@pytest.fixture
def server(coord_dir):
    process = ServerProcess(write_config(coord_dir))
    try:
        process.wait_for_log(r"listening on 127\.0\.0\.1:\d+")
        yield process
    finally:
        process.stop()


def server_address(process: ServerProcess) -> tuple[tuple[str, int], bytes]:
    found = process.wait_for_log(r"coordination server (\S+) listening on 127\.0\.0\.1:(\d+)")
    return ("127.0.0.1", int(found.group(2))), keys.decode_key(found.group(1))


def create_key(config: Path, *options: str) -> dict:
    result = meshvpn(config, "key", "create", *options, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_admin_verbs_end_to_end(coord_dir, server):
    config = coord_dir / "coord.yaml"
    address, server_public = server_address(server)
    home = create_key(config, "--network", "home", "--reusable", "--expires", "1h", "--address", "vps.example.net:7401")
    home_key = home["token"]
    joining = joinstring.decode(home["join"])
    assert (str(joining.coord), joining.coord_key, joining.auth_key) == ("vps.example.net:7401", server_public, home_key)
    office = create_key(config, "--network", "office")
    office_key = office["token"]
    joining = joinstring.decode(office["join"])
    assert (joining.coord, joining.coord_key, joining.auth_key) == (address, server_public, office_key), \
        "without --address or public_address: where the server listens"
    assert re.fullmatch(r"mvk-[0-9a-f]{12}-[A-Za-z0-9_-]{43}", home_key)
    assert (coord_dir / "admin.sock").stat().st_mode & 0o777 == 0o600

    async def nodes_join_and_one_is_revoked():
        alice = await connect(address, server_public, keys.generate_private_key())
        await alice.register(m.Register("alice", "1", (m.Endpoint("10.0.0.1", 41641),), auth_key=home_key))
        bob = await connect(address, server_public, keys.generate_private_key())
        bob_reg, _ = await bob.register(m.Register("bob", "1", (m.Endpoint("10.0.0.2", 41641),), auth_key=home_key))
        carol = await connect(address, server_public, keys.generate_private_key())
        with pytest.raises(CoordRefused):
            await carol.register(m.Register("carol", "1", (), auth_key=office_key))

        listing = await asyncio.to_thread(meshvpn, config, "nodes", "list")
        as_json = await asyncio.to_thread(meshvpn, config, "nodes", "list", "--json")
        networks = await asyncio.to_thread(meshvpn, config, "networks", "list")
        approved = await asyncio.to_thread(meshvpn, config, "nodes", "approve", "carol")
        carol_reg, _ = await carol.registration()

        revoked = await asyncio.to_thread(meshvpn, config, "nodes", "revoke", "bob")
        revoked_at = time.monotonic()
        with pytest.raises(CoordLinkClosed):
            while True:
                await bob.recv(timeout=5)
        disconnected_after = time.monotonic() - revoked_at
        removal = None
        while removal is None:
            message = await alice.recv(timeout=5)
            removal = message if isinstance(message, m.PeerRemove) else None
        unknown = await asyncio.to_thread(meshvpn, config, "nodes", "revoke", "nobody")
        return listing, as_json, networks, approved, carol_reg, revoked, disconnected_after, removal, bob_reg, unknown

    (listing, as_json, networks, approved, carol_reg, revoked, disconnected_after,
     removal, bob_reg, unknown) = asyncio.run(nodes_join_and_one_is_revoked())

    check_listings_while_alice_and_bob_are_online(listing, as_json, networks)
    assert approved.returncode == 0 and "carol (office, 100.65.0.2): online" in approved.stdout
    assert carol_reg.address == "100.65.0.2"
    assert revoked.returncode == 0 and "bob (home, 100.64.0.3): revoked" in revoked.stdout
    assert disconnected_after < 2.0
    assert removal.key == bob_reg.node_key
    assert unknown.returncode == 1 and "no node named 'nobody'" in unknown.stderr
    server.wait_for_log(r"node revoked node=bob")

    assert server.stop() == 0
    assert "shutting down" in server.log()
    check_verbs_with_the_server_stopped(config)


def check_listings_while_alice_and_bob_are_online(listing, as_json, networks) -> None:
    """`nodes list` (text and JSON) and `networks list` with alice and bob online, carol pending."""
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "NETWORK", "ADDRESS", "STATE"]
    assert [row.split()[:4] for row in rows] == [
        ["alice", "home", "100.64.0.2", "online"],
        ["bob", "home", "100.64.0.3", "online"],
        ["carol", "office", "100.65.0.2", "pending"],
    ]
    nodes = json.loads(as_json.stdout)["nodes"]
    assert [(n["name"], n["online"], n["observed_host"]) for n in nodes] == [
        ("alice", True, "127.0.0.1"), ("bob", True, "127.0.0.1"), ("carol", False, "127.0.0.1"),
    ]
    assert [row.split() for row in networks.stdout.splitlines()] == [
        ["NETWORK", "CIDR", "APPROVAL", "NODES", "ONLINE"],
        ["home", "100.64.0.0/24", "no", "2", "2"],
        ["office", "100.65.0.0/24", "yes", "1", "0"],
    ]


def check_verbs_with_the_server_stopped(config: Path) -> None:
    """`nodes list` reads the database when the server is down; `key create` needs it running."""
    offline = meshvpn(config, "nodes", "list", "--json")
    assert offline.returncode == 0, offline.stderr
    assert "server not running; read from" in offline.stderr
    assert [(n["name"], n["state"]) for n in json.loads(offline.stdout)["nodes"]] == [
        ("alice", "offline"), ("bob", "revoked"), ("carol", "offline"),
    ]
    refused = meshvpn(config, "key", "create", "--network", "home")
    assert refused.returncode == 1
    assert "the coordination server must be running" in refused.stderr


def test_sighup_reloads_live_keys_and_names_the_ones_needing_a_restart(coord_dir, server):
    config = coord_dir / "coord.yaml"
    text = config.read_text().replace("level: info", "level: debug").replace("keepalive: 15s", "keepalive: 5s")
    config.write_text(text.replace("cidr: 100.64.0.0/24", "cidr: 100.66.0.0/24"))
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for_log(r"reloaded: keepalive=5.0, log.level=debug")
    assert "needs a restart: networks" in server.log()

    config.write_text("networks: [\n")
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for_log(r"reload failed, keeping the running configuration: .*invalid YAML")
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_a_second_server_on_the_same_admin_socket_refuses_to_start(coord_dir, server):
    second = meshvpn(coord_dir / "coord.yaml")
    assert second.returncode == 1
    assert "coord cannot listen" in second.stderr and "admin.sock" in second.stderr



def join(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshvpn", "join", "--root", str(root), *argv],
                          capture_output=True, text=True, timeout=30)


def test_join_checks_the_server_before_writing_anything(coord_dir, server, tmp_path):
    config = coord_dir / "coord.yaml"
    address, server_public = server_address(server)
    made = create_key(config, "--network", "home")
    shown = meshvpn(config, "key", "create", "--network", "home", "--qr")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].startswith("mvk-") and joinstring.decode(lines[1]).coord_key == server_public
    assert len(lines) > 20 and set("".join(lines[2:])) <= set("█▀▄ \xa0"), "a QR code follows the string"

    wrong = joinstring.encode(joinstring.decode(made["join"]).coord, keys.generate_private_key(), made["token"])
    refused = join(tmp_path / "wrong", "--key", wrong)
    assert refused.returncode == 1
    assert f"the server at 127.0.0.1:{address[1]} did not finish the handshake" in refused.stderr
    assert "coord.public_key" in refused.stderr and not (tmp_path / "wrong").exists(), "nothing written"

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        unreachable = join(tmp_path / "closed", f"127.0.0.1:{port}", "--key", made["join"])
    assert unreachable.returncode == 1
    assert f"cannot reach the coordination server at 127.0.0.1:{port} over TCP" in unreachable.stderr
    assert f"firewall let TCP port {port} in" in unreachable.stderr

    joined = join(tmp_path / "good", f"localhost:{address[1]}", "--key", made["join"], "--name", "alice")
    assert joined.returncode == 0, joined.stderr
    assert f"coordination server localhost:{address[1]} answered with the pinned key" in joined.stdout
    assert "meshvpn daemon -c" in joined.stdout


def test_the_server_creates_its_database_directory(coord_dir):
    config = write_config(coord_dir)
    config.write_text(config.read_text().replace("database: coord.db", "database: state/meshvpn/coord.db"))
    process = ServerProcess(config)
    try:
        process.wait_for_log(r"listening on 127\.0\.0\.1:\d+")
        state = coord_dir / "state/meshvpn"
        assert (state / "coord.db").is_file() and (state.stat().st_mode & 0o777) == 0o700
    finally:
        process.stop()
