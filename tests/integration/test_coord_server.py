"""The coordination server in-process on loopback, driven by real clients over TCP and UDP.

Each test is a short script: start a server on 127.0.0.1 with ports chosen by the kernel, join
nodes through `meshvpn.node.coordclient`, and check what every side sees. Clients that misbehave
are in test_coord_misbehaving.py, which uses the helpers here.
"""

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
import time
from pathlib import Path

import pytest

from meshvpn import keys
from meshvpn.config import Address, CoordConfig, NetworkConfig
from meshvpn.coord import admin
from meshvpn.control import messages as m
from meshvpn.coord.fanout import FanoutSettings
from meshvpn.node.coordclient import CoordClient, CoordLinkClosed, CoordRefused, connect
from meshvpn.coord.server import CoordServer, ServerLimits
from meshvpn.stunio import stun_binding

pytestmark = pytest.mark.timeout(60)

HOME = NetworkConfig(name="home", cidr=ipaddress.ip_network("100.64.0.0/24"))
OFFICE = NetworkConfig(name="office", cidr=ipaddress.ip_network("100.65.0.0/24"), approval_required=True)


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


def test_a_node_of_format_2_hears_only_what_changed_and_one_of_the_previous_release_whole_infos(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path), fanout=FanoutSettings(window=0.5)) as server:
            token = auth_key(server)
            carol, carol_reg, _ = await join(server, "carol", token)
            watchers = []
            for name, version in (("new", m.DELTA_VERSION), ("old", None)):
                watcher = await connect(server.address, server.identity.public, keys.generate_private_key())
                await watcher.register(dataclasses.replace(register(name, token), deltas=True, delta_version=version))
                watchers.append(watcher)
            await next_of(watchers[0], m.PeerDelta)  # the old watcher coming online
            carol.send(m.Endpoints(local=(m.Endpoint("10.0.0.9", 5000),), public=m.Endpoint("198.51.100.7", 61000)))
            return [await next_of(watcher, m.PeerDelta) for watcher in watchers], carol_reg.node_key

    (new, old), carol = asyncio.run(scenario())
    assert new.peers == () and new.changed == (m.Patch(carol, (
        ("local_endpoints", (m.Endpoint("10.0.0.9", 5000),)), ("public_endpoint", m.Endpoint("198.51.100.7", 61000)))),)
    (whole,) = old.peers
    assert old.changed is None and whole.key == carol and whole.public_endpoint == m.Endpoint("198.51.100.7", 61000)


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


def names(message: m.Message, key: bytes) -> bool:
    """Whether `message` tells the node of peer `key` (a whole peer info or a change of one)."""
    if isinstance(message, m.PeerUpdate):
        return message.peer.key == key
    if isinstance(message, m.PeerDelta):
        return key in {peer.key for peer in message.peers} | {patch.key for patch in message.changed or ()}
    return False


PUNCH_WINDOW = 30.0
"""A fan-out window longer than a test: the news it holds goes only with a message that takes it."""


async def punch_at_once(asker: CoordClient, asker_map: m.PeerMap, asked: CoordClient) -> tuple[list[m.Message], float]:
    """`asker` asks to punch the one peer of its map, `asked`: every message `asked` gets up to
    its first `punch`, that one last, and the seconds it took."""
    started = time.monotonic()
    asker.send(m.PunchRequest(asker_map.peers[0].key))
    deadline, got = started + PUNCH_WINDOW / 3, []
    while not got or not isinstance(got[-1], m.Punch):
        got.append(await asked.recv(max(0.0, deadline - time.monotonic())))
    return got, time.monotonic() - started


def assert_news_then_punch(got: list[m.Message], took: float, asker: bytes) -> None:
    """The asked node heard of `asker` once before the punch naming it, with it and not a window later."""
    assert got[-1].peer_key == asker
    assert [names(message, asker) for message in got[:-1]].count(True) == 1, "the asker's news first, once"
    assert took < PUNCH_WINDOW / 3, "with the punch, not with the window's round"


@pytest.mark.parametrize("deltas", [{}, {"deltas": True}, {"deltas": True, "delta_version": m.DELTA_VERSION}],
                         ids=["updates", "deltas-1", "deltas-2"])
def test_a_punch_reaches_a_node_after_the_news_of_the_peer_it_names_not_a_window_later(tmp_path, deltas):
    """Bob has alice in his map and asks at once to punch her; the fan-out still holds the news of
    bob for her window. The punch takes it along: she hears of bob, then the punch naming him, at
    once; a node that got the punch first would drop it (`punch for unknown peer`)."""
    async def scenario():
        async with running(coord_config(tmp_path), fanout=FanoutSettings(window=PUNCH_WINDOW)) as server:
            token = auth_key(server)
            alice = await connect(server.address, server.identity.public, keys.generate_private_key())
            await alice.register(dataclasses.replace(register("alice", token), **deltas))
            bob, bob_reg, bob_map = await join(server, "bob", token)
            return bob_reg.node_key, *await punch_at_once(bob, bob_map, alice)

    bob, got, took = asyncio.run(scenario())
    assert_news_then_punch(got, took, bob)


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


# ----- STUN


def test_stun_answers_on_the_stun_port(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            return port, await stun_binding(server.stun.address, sock=sock, timeout=2.0)

    port, result = asyncio.run(scenario())
    assert result.mapped == ("127.0.0.1", port)


def test_registrations_arriving_together_share_a_commit_and_each_is_stored_before_its_answer(tmp_path):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            commits = []
            execute = server.store._execute

            def counting(statement, args=()):
                if statement == "COMMIT":
                    commits.append(statement)
                return execute(statement, args)

            server.store._execute = counting
            token = auth_key(server)
            clients = [await connect(server.address, server.identity.public, keys.generate_private_key())
                       for _ in range(20)]
            commits.clear()  # the handshakes' turns wrote nothing
            for n, client in enumerate(clients):
                client.send(register(f"batch-{n}", token))
            answers = await asyncio.gather(*(client.registration() for client in clients))
            stored = {node.name for node in server.store.nodes("home")}  # committed: another connection sees them
            for client in clients:
                client.close()
            return commits, answers, stored

    commits, answers, stored = asyncio.run(scenario())
    assert {registered.name for registered, _ in answers} == {f"batch-{n}" for n in range(20)} <= stored
    assert len(commits) <= 3  # 20 registrations sent at once: one loop turn, one commit (or a few)
