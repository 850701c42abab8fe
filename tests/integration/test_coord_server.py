"""The coordination server in-process on loopback, driven by real clients over TCP and UDP.

Each test is a short script: start a server on 127.0.0.1 with ports chosen by the kernel, join
nodes through `meshvpn.coord.client`, and check what every side sees, including the log line
the server writes when it drops a misbehaving client while it keeps serving the others.
"""

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from meshvpn import keys
from meshvpn.channel import ClientChannel
from meshvpn.config import Address, CoordConfig, NetworkConfig
from meshvpn.coord import admin
from meshvpn.control import messages as m
from meshvpn.coord.fanout import FanoutSettings
from meshvpn.coord.client import CoordClient, CoordLinkClosed, CoordRefused, connect
from meshvpn.coord.server import CoordServer, ServerLimits
from meshvpn.stunio import stun_binding

pytestmark = pytest.mark.timeout(60)

HOME = NetworkConfig(name="home", cidr=ipaddress.ip_network("100.64.0.0/24"))
OFFICE = NetworkConfig(name="office", cidr=ipaddress.ip_network("100.65.0.0/24"), approval_required=True)


class LogLines(logging.Handler):
    """Every line the server logs, to wait for the one a test expects."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    async def wait_for(self, *fragments: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if all(fragment in line for fragment in fragments):
                    return line
            await asyncio.sleep(0.01)
        raise AssertionError(f"no log line with {fragments}; got:\n" + "\n".join(self.lines))


@pytest.fixture
def server_log():
    logger = logging.getLogger("meshvpn.coord.server")
    handler, old_level = LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def coord_config(tmp_path: Path, **overrides) -> CoordConfig:
    key_file = tmp_path / "coord.key"
    if not key_file.exists():
        keys.write_private_key(key_file)
    settings = dict(
        private_key_file=key_file,
        database=tmp_path / "coord.db",
        listen=Address("127.0.0.1", 0),
        stun_listen=Address("127.0.0.1", 0),
        admin_socket=tmp_path / "admin.sock",
        networks=(HOME, OFFICE),
        keepalive=15.0,
    )
    settings.update(overrides)
    return CoordConfig(**settings)


@contextlib.asynccontextmanager
async def running(config: CoordConfig, limits: ServerLimits = ServerLimits(), **options):
    server = CoordServer(config, limits=limits, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def auth_key(server: CoordServer, network: str = "home", **options) -> str:
    options.setdefault("reusable", True)
    token, _ = server.membership.create_auth_key(network, secret=os.urandom(32), now=time.time(), **options)
    return token


def register(hostname: str, token: str | None, port: int = 41641, public: m.Endpoint | None = None) -> m.Register:
    return m.Register(hostname, "test", (m.Endpoint("10.0.0.7", port),), auth_key=token, public_endpoint=public)


async def join(server: CoordServer, hostname: str, token: str | None, private: bytes | None = None, **kw):
    """Connect and register a node; returns its client, `registered` and `peer_map`."""
    client = await connect(server.address, server.identity.public, private or keys.generate_private_key(), **kw)
    registered, peer_map = await client.register(register(hostname, token))
    return client, registered, peer_map


async def next_of(client: CoordClient, kind: type, timeout: float = 5.0) -> m.Message:
    """The next message of `kind`, skipping others (pongs, unrelated peer updates)."""
    deadline = time.monotonic() + timeout
    while True:
        message = await client.recv(max(0.0, deadline - time.monotonic()))
        if isinstance(message, kind):
            return message


async def still_served(server: CoordServer) -> None:
    """A fresh node can still join and get answers: the server survived what came before."""
    client, registered, _ = await join(server, "witness", auth_key(server))
    client.send(m.Ping())
    assert isinstance(await next_of(client, m.Pong), m.Pong)
    client.close()


# ----- joining


def test_nodes_join_with_a_valid_key_and_learn_each_other(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            token = auth_key(server)
            alice, alice_reg, alice_map = await join(server, "Alice's Laptop", token)
            bob, bob_reg, bob_map = await join(server, "bob", token)
            update = await next_of(alice, m.PeerUpdate)
            return alice_reg, alice_map, bob_reg, bob_map, update

    alice_reg, alice_map, bob_reg, bob_map, update = asyncio.run(scenario())
    assert (alice_reg.name, alice_reg.address, alice_reg.network.name) == ("alice-s-laptop", "100.64.0.2", "home")
    assert (bob_reg.name, bob_reg.address) == ("bob", "100.64.0.3")
    assert alice_map.peers == ()
    assert [(p.name, p.online, p.observed_host) for p in bob_map.peers] == [("alice-s-laptop", True, "127.0.0.1")]
    assert (update.peer.name, update.peer.online, update.peer.key) == ("bob", True, bob_reg.node_key)


@pytest.mark.parametrize(
    "make_token, code",
    [
        (lambda server: auth_key(server)[:-4] + "AAAA", "auth_key_invalid"),
        (lambda server: "mvk-not-a-key", "auth_key_invalid"),
        (lambda server: None, "auth_key_invalid"),
        (lambda server: server.membership.create_auth_key(
            "home", secret=os.urandom(32), now=time.time() - 120, expires_in=60)[0], "auth_key_expired"),
        ("used", "auth_key_used"),
    ],
)
def test_a_bad_key_is_refused_with_its_reason_and_the_channel_closed(tmp_path, server_log, make_token, code):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            if make_token == "used":
                token = auth_key(server, reusable=False)
                first, _, _ = await join(server, "first", token)
            else:
                token = make_token(server)
            client = await connect(server.address, server.identity.public, keys.generate_private_key())
            with pytest.raises(CoordRefused) as refused:
                await client.register(register("intruder", token))
            with pytest.raises(CoordLinkClosed):
                await client.recv(timeout=5)
            line = await server_log.wait_for("connection refused", f"code={code}")
            return refused.value, line

    refused, line = asyncio.run(scenario())
    assert refused.code == code and str(refused)
    assert "observed_host=127.0.0.1" in line


def test_approval_required_network_holds_a_node_until_an_admin_approves(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            token = auth_key(server, "office")
            client = await connect(server.address, server.identity.public, keys.generate_private_key())
            with pytest.raises(CoordRefused) as pending:
                await client.register(register("newcomer", token))
            answer = admin.answer(server.membership, {"cmd": "node_approve", "node": "newcomer"}, time.time(), os.urandom)
            server.run_actions()
            registered, _ = await client.registration()
            return pending.value.code, answer, registered

    code, answer, registered = asyncio.run(scenario())
    assert code == "approval_pending"
    assert answer["node"]["approved"] is True
    assert (registered.name, registered.network.name) == ("newcomer", "office")


# ----- map deltas and signalling


def test_endpoint_change_and_leaving_reach_the_peers(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            token = auth_key(server)
            alice, _, _ = await join(server, "alice", token)
            bob, bob_reg, _ = await join(server, "bob", token)
            await next_of(alice, m.PeerUpdate)
            bob.send(m.Endpoints(local=(m.Endpoint("10.0.0.9", 5000),), public=m.Endpoint("198.51.100.7", 61000)))
            moved = await next_of(alice, m.PeerUpdate)
            bob.close()
            gone = await next_of(alice, m.PeerUpdate)
            return bob_reg, moved, gone

    bob_reg, moved, gone = asyncio.run(scenario())
    assert moved.peer.key == bob_reg.node_key
    assert moved.peer.public_endpoint == m.Endpoint("198.51.100.7", 61000)
    assert moved.peer.local_endpoints == (m.Endpoint("10.0.0.9", 5000),)
    assert (gone.peer.key, gone.peer.online) == (bob_reg.node_key, False)
    assert gone.peer.last_seen is not None


def test_a_node_that_takes_deltas_hears_a_window_of_changes_in_one_peer_delta(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path), fanout=FanoutSettings(window=3.0)) as server:
            token = auth_key(server)
            watcher = await connect(server.address, server.identity.public, keys.generate_private_key())
            await watcher.register(dataclasses.replace(register("watcher", token), deltas=True))
            carol, carol_reg, _ = await join(server, "carol", token)
            dave, dave_reg, _ = await join(server, "dave", token)
            carol.send(m.Endpoints(local=(m.Endpoint("10.0.0.9", 5000),)))
            carol.send(m.Ping())
            await next_of(carol, m.Pong)  # the change is in, well within the window
            delta = await next_of(watcher, m.PeerDelta)
            return delta, carol_reg.node_key, dave_reg.node_key

    delta, carol, dave = asyncio.run(scenario())
    assert sorted(peer.key for peer in delta.peers) == sorted([carol, dave]) and delta.removed == ()
    (carol_now,) = [peer for peer in delta.peers if peer.key == carol]
    assert carol_now.local_endpoints == (m.Endpoint("10.0.0.9", 5000),)


def test_punch_request_sends_punch_to_both_sides_with_each_others_candidates(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            token = auth_key(server)
            alice = await connect(server.address, server.identity.public, keys.generate_private_key())
            alice_reg, _ = await alice.register(register("alice", token, 4001, m.Endpoint("203.0.113.1", 40001)))
            bob = await connect(server.address, server.identity.public, keys.generate_private_key())
            bob_reg, _ = await bob.register(register("bob", token, 4002, m.Endpoint("203.0.113.2", 40002)))
            alice.send(m.PunchRequest(bob_reg.node_key))
            return alice_reg, bob_reg, await next_of(alice, m.Punch), await next_of(bob, m.Punch)

    alice_reg, bob_reg, to_alice, to_bob = asyncio.run(scenario())
    assert to_alice.peer_key == bob_reg.node_key and to_bob.peer_key == alice_reg.node_key
    assert to_alice.endpoints[0] == m.Endpoint("203.0.113.2", 40002)
    assert to_bob.endpoints[0] == m.Endpoint("203.0.113.1", 40001)
    assert m.Endpoint("127.0.0.1", 4002) in to_alice.endpoints


def test_revocation_disconnects_the_node_and_removes_it_from_peers_maps(tmp_path, server_log):
    mallory_private = keys.generate_private_key()

    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            token = auth_key(server)
            alice, _, _ = await join(server, "alice", token)
            mallory, mallory_reg, _ = await join(server, "mallory", token, mallory_private)
            await next_of(alice, m.PeerUpdate)
            answer = admin.answer(server.membership, {"cmd": "node_revoke", "node": "mallory"}, time.time(), os.urandom)
            server.run_actions()
            error = await next_of(mallory, m.Error)
            with pytest.raises(CoordLinkClosed):
                await mallory.recv(timeout=5)
            removed = await next_of(alice, m.PeerRemove)
            again = await connect(server.address, server.identity.public, mallory_private)
            with pytest.raises(CoordRefused) as refused:
                await again.register(register("mallory", token))
            line = await server_log.wait_for("node revoked", "node=mallory")
            return answer, mallory_reg, error, removed, refused.value, line

    answer, mallory_reg, error, removed, refused, line = asyncio.run(scenario())
    assert answer["node"]["state"] == "revoked"
    assert error.code == "revoked"
    assert removed.key == mallory_reg.node_key
    assert refused.code == "revoked"


# ----- persistence


def test_restart_keeps_names_addresses_and_key_state(tmp_path):
    alice_private, bob_private = keys.generate_private_key(), keys.generate_private_key()

    async def before():
        async with running(coord_config(tmp_path)) as server:
            one_off = auth_key(server, reusable=False)
            reusable = auth_key(server)
            alice, alice_reg, _ = await join(server, "alice", one_off, alice_private)
            bob, bob_reg, _ = await join(server, "bob", reusable, bob_private)
            return one_off, reusable, alice_reg, bob_reg

    async def after(one_off, reusable):
        async with running(coord_config(tmp_path)) as server:
            _, alice_reg, _ = await join(server, "renamed-host", None, alice_private)
            _, bob_reg, bob_map = await join(server, "bob", None, bob_private)
            _, carol_reg, _ = await join(server, "carol", reusable)
            client = await connect(server.address, server.identity.public, keys.generate_private_key())
            with pytest.raises(CoordRefused) as used:
                await client.register(register("dave", one_off))
            return alice_reg, bob_reg, bob_map, carol_reg, used.value.code

    one_off, reusable, alice_before, bob_before = asyncio.run(before())
    alice_after, bob_after, bob_map, carol, used = asyncio.run(after(one_off, reusable))
    assert (alice_after.name, alice_after.address) == (alice_before.name, alice_before.address) == ("alice", "100.64.0.2")
    assert (bob_after.name, bob_after.address) == (bob_before.name, bob_before.address)
    assert [p.name for p in bob_map.peers] == ["alice"]
    assert carol.address == "100.64.0.4"
    assert used == "auth_key_used"


# ----- misbehaving clients


async def raw_connection(server: CoordServer, rcvbuf: int | None = None) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, server.address)
    return sock


async def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Read until the server closes (EOF or reset)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not await asyncio.wait_for(loop.sock_recv(sock, 65536), deadline - time.monotonic()):
                return True
    except ConnectionError:
        return True
    except asyncio.TimeoutError:
        return False
    return False


async def established_channel(server: CoordServer, sock: socket.socket) -> ClientChannel:
    loop = asyncio.get_running_loop()
    channel = ClientChannel(keys.generate_private_key(), server.identity.public, os.urandom(32), time.time())
    await loop.sock_sendall(sock, channel.data_to_send())
    while not channel.established:
        channel.receive_data(await loop.sock_recv(sock, 4096))
    await loop.sock_sendall(sock, channel.data_to_send())
    return channel


@pytest.mark.parametrize(
    "attack, logged",
    [
        ("garbage", "handshake initiation frame, got a length of"),
        ("oversized", "exceeds the 1048576-byte limit"),
        ("forged", "failed authentication (bad MAC)"),
        ("not json", "not JSON"),
    ],
)
def test_a_broken_stream_is_dropped_with_a_log_line_and_others_are_served(tmp_path, server_log, attack, logged):
    async def scenario():
        loop = asyncio.get_running_loop()
        async with running(coord_config(tmp_path)) as server:
            sock = await raw_connection(server)
            if attack == "garbage":
                await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: coord\r\n\r\n")
            else:
                channel = await established_channel(server, sock)
                if attack == "oversized":
                    await loop.sock_sendall(sock, (2 << 20).to_bytes(4, "big") + bytes(64))
                elif attack == "forged":
                    await loop.sock_sendall(sock, (40).to_bytes(4, "big") + os.urandom(40))
                else:
                    channel.send(b"\xff{not json")
                    await loop.sock_sendall(sock, channel.data_to_send())
            closed = await closed_by_server(sock)
            sock.close()
            line = await server_log.wait_for(logged)
            await still_served(server)
            return closed, line

    closed, line = asyncio.run(scenario())
    assert closed
    assert "127.0.0.1" in line


def test_a_client_pinning_the_wrong_server_key_is_refused(tmp_path, server_log):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            wrong = keys.public_key(keys.generate_private_key())
            with pytest.raises(CoordLinkClosed) as failed:
                await connect(server.address, wrong, keys.generate_private_key(), timeout=5)
            line = await server_log.wait_for("dropping", "handshake initiation rejected")
            await still_served(server)
            return failed.value, line

    failed, line = asyncio.run(scenario())
    assert "handshake failed" in str(failed)
    assert "127.0.0.1:" in line


def test_a_client_that_never_finishes_the_handshake_is_dropped_at_the_deadline(tmp_path, server_log):
    async def scenario():
        limits = ServerLimits(handshake_timeout=0.3)
        async with running(coord_config(tmp_path), limits) as server:
            sock = await raw_connection(server)
            started = time.monotonic()
            closed = await closed_by_server(sock)
            waited = time.monotonic() - started
            sock.close()
            line = await server_log.wait_for("no channel handshake within 0.3s")
            await still_served(server)
            return closed, waited, line

    closed, waited, line = asyncio.run(scenario())
    assert closed and 0.25 <= waited < 3.0
    assert "127.0.0.1:" in line


def test_a_client_that_never_reads_is_dropped_when_its_buffer_fills(tmp_path, server_log):
    async def scenario():
        loop = asyncio.get_running_loop()
        limits = ServerLimits(max_write_buffer=64 << 10, socket_send_buffer=4096)
        async with running(coord_config(tmp_path), limits) as server:
            sock = await raw_connection(server, rcvbuf=4096)
            channel = await established_channel(server, sock)
            channel.send(m.encode(register("sloth", auth_key(server))))
            ping = m.encode(m.Ping())
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                for _ in range(100):  # bounded: far more pongs than the limits hold
                    for _ in range(500):
                        channel.send(ping)
                    await asyncio.wait_for(loop.sock_sendall(sock, channel.data_to_send()), 2)
                    if any("not reading" in line for line in server_log.lines):
                        break
            sock.close()
            line = await server_log.wait_for("dropping", "not reading")
            await still_served(server)
            return line

    line = asyncio.run(scenario())
    assert "bytes queued" in line and "key " in line


def test_a_large_peer_map_arrives_in_parts_and_its_size_does_not_count_as_not_reading(tmp_path, server_log):
    async def scenario():
        limits = ServerLimits(max_write_buffer=1024, socket_send_buffer=4096)
        async with running(coord_config(tmp_path), limits) as server:
            server.membership.settings = dataclasses.replace(server.membership.settings, peer_map_part_bytes=2000)
            token = auth_key(server)
            for n in range(60):
                client, _, _ = await join(server, f"offline-{n}", token)
                client.close()
                await client.wait_closed()
            client, _, peer_map = await join(server, "newcomer", token)
            client.close()
            return peer_map, server_log.lines

    peer_map, lines = asyncio.run(scenario())
    assert sorted(p.name for p in peer_map.peers) == sorted(f"offline-{n}" for n in range(60))
    assert not any("not reading" in line for line in lines)


def test_a_silent_client_is_closed_after_three_keepalives_and_a_pinging_one_stays(tmp_path, server_log):
    async def scenario():
        async with running(coord_config(tmp_path, keepalive=0.2)) as server:
            token = auth_key(server)
            quiet, quiet_reg, _ = await join(server, "quiet", token)
            chatty, _, _ = await join(server, "chatty", token, keepalive=0.1)
            with pytest.raises(CoordLinkClosed):
                while True:
                    await quiet.recv(timeout=3)
            line = await server_log.wait_for("closing", "silent for")
            gone = await next_of(chatty, m.PeerUpdate)
            return quiet_reg, line, gone, chatty.close_reason

    quiet_reg, line, gone, chatty_closed = asyncio.run(scenario())
    assert (gone.peer.key, gone.peer.online) == (quiet_reg.node_key, False)
    assert "127.0.0.1:" in line
    assert chatty_closed is None


# ----- STUN and limits


def test_stun_answers_on_the_stun_port(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            return port, await stun_binding(server.stun.address, sock=sock, timeout=2.0)

    port, result = asyncio.run(scenario())
    assert result.mapped == ("127.0.0.1", port)


def test_connections_per_source_address_are_capped(tmp_path, server_log):
    async def scenario():
        async with running(coord_config(tmp_path), ServerLimits(max_connections_per_host=2)) as server:
            token = auth_key(server)
            first, _, _ = await join(server, "one", token)
            second, _, _ = await join(server, "two", token)
            with pytest.raises(CoordLinkClosed):
                await connect(server.address, server.identity.public, keys.generate_private_key(), timeout=5)
            line = await server_log.wait_for("refusing", "more than 2 connections")
            first.close()
            await first.wait_closed()
            await asyncio.sleep(0.1)
            third, _, _ = await join(server, "three", token)
            return line, third.close_reason

    line, third_closed = asyncio.run(scenario())
    assert "from 127.0.0.1" in line
    assert third_closed is None
