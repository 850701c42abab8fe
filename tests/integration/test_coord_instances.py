"""Two coord instances in-process on one throwaway PostgreSQL: a change made through one
reaches nodes connected to the other within a second, and keys, relay tokens and admin verbs
work across them (`meshvpn.coord.instances`)."""

import asyncio
import contextlib
import ipaddress
import os
import time

import pytest

from meshvpn import keys
from meshvpn.config import Address, CoordConfig, NetworkConfig, RelayOffer
from meshvpn.control import messages as m
from meshvpn.coord import instances
from meshvpn.coord import server as server_module
from meshvpn.coord.fanout import FanoutSettings
from meshvpn.node.coordclient import CoordRefused, connect
from meshvpn.coord.server import CoordServer
from meshvpn.localsock import request
from meshvpn.relaytoken import TokenVerifier
from test_coord_server import PUNCH_WINDOW, assert_news_then_punch, punch_at_once

pytestmark = pytest.mark.timeout(90)

HOME = NetworkConfig(name="home", cidr=ipaddress.ip_network("100.64.0.0/24"))
OFFICE = NetworkConfig(name="office", cidr=ipaddress.ip_network("100.65.0.0/24"), approval_required=True)
RELAY_PRIVATE = keys.generate_private_key()
REACH = 1.0
"""Seconds within which a change on one instance must reach nodes on the other (issue 16)."""


def instance_config(tmp_path, dsn, index: int) -> CoordConfig:
    """Instance `index`'s config: one server key for all (nodes pin it), its own ports and admin socket."""
    key_file = tmp_path / "coord.key"
    if not key_file.exists():
        keys.write_private_key(key_file)
    relay = RelayOffer(name="fra", address=Address("203.0.113.50", 7500), public_key=keys.public_key(RELAY_PRIVATE))
    return CoordConfig(private_key_file=key_file, database=dsn, listen=Address("127.0.0.1", 0),
                       stun_listen=Address("127.0.0.1", 0), admin_socket=tmp_path / f"admin{index}.sock",
                       networks=(HOME, OFFICE), relays=(relay,), keepalive=15.0)


@contextlib.asynccontextmanager
async def two_instances(tmp_path, dsn, fanout: FanoutSettings = FanoutSettings()):
    """Instances 1 and 2 on one database."""
    servers = []
    try:
        for index in (1, 2):
            servers.append(CoordServer(instance_config(tmp_path, dsn, index), fanout=fanout))
            await servers[-1].start()
        yield servers
    finally:
        for server in reversed(servers):
            await server.close()


def auth_key(server: CoordServer, network: str = "home", **options) -> str:
    options.setdefault("reusable", True)
    return server.membership.create_auth_key(network, secret=os.urandom(32), now=time.time(), **options)[0]


async def join(server: CoordServer, hostname: str, token: str | None):
    client = await connect(server.address, server.identity.public, keys.generate_private_key())
    registered, peer_map = await client.register(m.Register(hostname, "test", (m.Endpoint("10.0.0.7", 41641),),
                                                            auth_key=token))
    return client, registered, peer_map


async def next_of(client, kind: type, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        message = await client.recv(max(0.0, deadline - time.monotonic()))
        if isinstance(message, kind):
            return message


async def admin(server: CoordServer, **req) -> dict:
    responses = await asyncio.to_thread(lambda: list(request(str(server.settings.admin_socket), req)))
    return responses[-1]


async def seen_online(server: CoordServer, name: str) -> None:
    """Wait until `server` knows node `name` is online (on either instance)."""
    deadline = time.monotonic() + REACH
    while not any(s.node.name == name and s.online for s in server.membership.list_nodes()):
        assert time.monotonic() < deadline, f"{name} not seen online within {REACH}s"
        await asyncio.sleep(0.01)


async def alice_on_one_bob_on_two(one: CoordServer, two: CoordServer):
    """Alice joins instance one, then (once two knows her online) bob joins two: both clients, bob's map."""
    token = auth_key(one)
    alice, _, _ = await join(one, "alice", token)
    await seen_online(two, "alice")
    bob, _, bob_map = await join(two, "bob", token)
    return alice, bob, bob_map


def test_joins_and_endpoint_changes_on_one_instance_reach_the_other_within_a_second(tmp_path, postgres_dsn):
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            token = auth_key(one)  # a key made through one instance admits nodes through both
            alice, _, _ = await join(one, "alice", token)
            await seen_online(two, "alice")
            started = time.monotonic()
            bob, bob_reg, bob_map = await join(two, "bob", token)
            joined = await next_of(alice, m.PeerUpdate, REACH)
            join_reach = time.monotonic() - started
            started = time.monotonic()
            bob.send(m.Endpoints(local=(m.Endpoint("10.0.0.9", 5000),), public=m.Endpoint("198.51.100.7", 61000)))
            moved = await next_of(alice, m.PeerUpdate, REACH)
            move_reach = time.monotonic() - started
            names = [(s.node.name, s.online) for s in one.membership.list_nodes()]
            return bob_reg, bob_map, joined, moved, join_reach, move_reach, names

    bob_reg, bob_map, joined, moved, join_reach, move_reach, names = asyncio.run(scenario())
    assert [(p.name, p.online) for p in bob_map.peers] == [("alice", True)]
    assert (joined.peer.key, joined.peer.online, joined.peer.name) == (bob_reg.node_key, True, "bob")
    assert bob_reg.address == "100.64.0.3"  # the address after alice's, though another instance gave hers
    assert moved.peer.public_endpoint == m.Endpoint("198.51.100.7", 61000)
    assert join_reach < REACH and move_reach < REACH
    assert sorted(names) == [("alice", True), ("bob", True)]


def test_an_admin_verb_on_one_instance_acts_on_nodes_connected_to_the_other(tmp_path, postgres_dsn):
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            token = auth_key(one)
            alice, _, _ = await join(two, "alice", token)
            mallory, mallory_reg, _ = await join(two, "mallory", token)
            await next_of(alice, m.PeerUpdate, REACH)
            started = time.monotonic()
            answer = await admin(one, cmd="node_revoke", node="mallory")
            with pytest.raises(CoordRefused) as refused:
                await mallory.registration(REACH)
            removed = await next_of(alice, m.PeerRemove, REACH)
            revoke_reach = time.monotonic() - started
            client = await connect(two.address, two.identity.public, keys.generate_private_key())
            client.send(m.Register("carol", "test", (), auth_key=auth_key(two, "office")))
            with pytest.raises(CoordRefused, match="approval_pending"):
                await client.registration(REACH)
            started = time.monotonic()
            await admin(one, cmd="node_approve", node="carol")
            carol_reg, _ = await client.registration(REACH)
            approve_reach = time.monotonic() - started
            return answer, refused.value.code, removed, mallory_reg, revoke_reach, carol_reg, approve_reach

    answer, code, removed, mallory_reg, revoke_reach, carol_reg, approve_reach = asyncio.run(scenario())
    assert answer["node"]["state"] == "revoked" and code == "revoked"
    assert removed.key == mallory_reg.node_key and revoke_reach < REACH
    assert carol_reg.name == "carol" and approve_reach < REACH


def test_a_one_off_key_admits_once_across_instances_and_relay_tokens_verify_from_both(tmp_path, postgres_dsn):
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            once = auth_key(two, reusable=False)
            _, first, _ = await join(one, "dave", once)
            with pytest.raises(CoordRefused) as refused:
                await join(two, "erin", once)
            _, second, _ = await join(two, "frank", auth_key(one))
            return first, second, refused.value.code, one.identity.public

    first, second, code, coord_public = asyncio.run(scenario())
    assert code == "auth_key_used"
    verifier = TokenVerifier(RELAY_PRIVATE, coord_public)
    for registered in (first, second):
        (token,) = registered.relay_tokens
        assert verifier.verify(token.token, registered.node_key, time.time()).node_key == registered.node_key


def test_nodes_of_an_instance_that_stops_without_a_word_go_offline_on_the_other_once_its_session_is_gone(
        tmp_path, postgres_dsn, monkeypatch):
    monkeypatch.setattr(server_module, "CHECK", 0.2)

    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            alice, bob, bob_map = await alice_on_one_bob_on_two(one, two)
            stopped = time.monotonic()
            await one.close()  # a closing instance does not announce its nodes offline, as a killed one
            gone = await next_of(bob, m.PeerUpdate, 5.0)
            return bob_map, gone, time.monotonic() - stopped

    bob_map, gone, took = asyncio.run(scenario())
    assert [(p.name, p.online) for p in bob_map.peers] == [("alice", True)]
    assert (gone.peer.name, gone.peer.online) == ("alice", False) and took < 2.0


def test_an_instance_whose_heartbeats_are_held_up_keeps_its_nodes_in_the_other_s_views(
        tmp_path, postgres_dsn, monkeypatch):
    monkeypatch.setattr(instances, "HEARTBEAT", 1000.0)  # one beat at start, then silence
    monkeypatch.setattr(server_module, "CHECK", 0.2)

    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            alice, bob, bob_map = await alice_on_one_bob_on_two(one, two)
            with pytest.raises(asyncio.TimeoutError):
                await next_of(bob, m.PeerUpdate, 3.0)  # fifteen checks, no word from one: alice stays
            return bob_map, [(s.node.name, s.online) for s in two.membership.list_nodes()]

    bob_map, seen = asyncio.run(scenario())
    assert [(p.name, p.online) for p in bob_map.peers] == [("alice", True)]
    assert sorted(seen) == [("alice", True), ("bob", True)]


def test_while_the_database_does_not_answer_nobody_counts_as_gone(tmp_path, postgres_dsn):
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            alive = one.instances.alive()
            one.instances._publisher.close()  # as when the database went away
            return alive, one.instances.alive(), {one.instances.instance, two.instances.instance}

    alive, unknown, both = asyncio.run(scenario())
    assert alive == both and unknown is None


def test_an_instance_that_starts_later_sees_the_nodes_already_online_on_the_other(tmp_path, postgres_dsn):
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            token = auth_key(one)
            alice, _, _ = await join(one, "alice", token)
            await seen_online(two, "alice")
            await two.close()
            three = CoordServer(instance_config(tmp_path, postgres_dsn, 3))  # a restart of two: heard no join
            await three.start()
            try:
                await seen_online(three, "alice")
                bob, _, bob_map = await join(three, "bob", token)
                return bob_map
            finally:
                await three.close()

    bob_map = asyncio.run(scenario())
    assert [(p.name, p.online) for p in bob_map.peers] == [("alice", True)]


def test_nodes_on_different_instances_both_get_their_punch_whichever_asks(tmp_path, postgres_dsn):
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            token = auth_key(one)
            alice, alice_reg, _ = await join(one, "alice", token)
            bob, bob_reg, _ = await join(two, "bob", token)
            await seen_online(one, "bob")
            await seen_online(two, "alice")
            punches = []
            for asker, asked, key in ((alice, bob, bob_reg.node_key), (bob, alice, alice_reg.node_key)):
                started = time.monotonic()
                asker.send(m.PunchRequest(key))
                answer = await next_of(asker, m.Punch, REACH)
                mirror = await next_of(asked, m.Punch, REACH)
                punches.append((answer, mirror, time.monotonic() - started))
            return alice_reg.node_key, bob_reg.node_key, punches

    alice_key, bob_key, punches = asyncio.run(scenario())
    lan = m.Endpoint("10.0.0.7", 41641)
    for (answer, mirror, took), (towards, back) in zip(punches, ((bob_key, alice_key), (alice_key, bob_key))):
        assert (answer.peer_key, mirror.peer_key) == (towards, back)
        assert lan in answer.endpoints and lan in mirror.endpoints
        assert took < REACH


def test_a_punch_from_another_instance_reaches_a_node_after_the_news_of_its_requester(tmp_path, postgres_dsn):
    """Bob joins instance two and at once asks to punch alice, on one, whose fan-out still holds the
    news of bob for her window: one applies that news before the punch notification
    (`CoordServer._punched_elsewhere`), and the punch takes it along to her."""
    async def scenario():
        async with two_instances(tmp_path, postgres_dsn, FanoutSettings(window=PUNCH_WINDOW)) as (one, two):
            token = auth_key(one)
            alice = await connect(one.address, one.identity.public, keys.generate_private_key())
            await alice.register(m.Register("alice", "test", (m.Endpoint("10.0.0.7", 41641),), auth_key=token,
                                            deltas=True, delta_version=m.DELTA_VERSION))
            await seen_online(two, "alice")
            bob, bob_reg, bob_map = await join(two, "bob", token)
            return bob_reg.node_key, *await punch_at_once(bob, bob_map, alice)

    bob, got, took = asyncio.run(scenario())
    assert_news_then_punch(got, took, bob)
