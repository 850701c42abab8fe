"""The node's coord link (`meshvpn.node.coordlink`) against real coord servers in-process: back
within seconds of a restarted coord answering, a node started during the outage joins as soon,
with two instances on one PostgreSQL a link moves to the other when its instance stops, and
STUN goes to the instance in use."""

import asyncio
import contextlib
import dataclasses
import socket
from pathlib import Path

import pytest

from meshvpn import keys
from meshvpn.config import Address, ListenConfig, NodeConfig, NodeCoordLink
from meshvpn.control import messages as m
from meshvpn.noise import StaticIdentity
from meshvpn.node.coordlink import CoordLink
from meshvpn.node.discovery import port_sample
from meshvpn.stunio import start_stun_server

from test_coord_instances import auth_key, two_instances
from test_coord_server import coord_config, register, running

pytestmark = pytest.mark.timeout(90)

BACK_WITHIN = 5.0
"""Seconds from a coord answering again until every node is registered there (issue 12)."""


class Watched:
    """A running CoordLink and what it reported."""

    def __init__(self, addresses, server_public: bytes, token: str, name: str) -> None:
        self.states: list[bool] = []
        self.messages: list[m.Message] = []
        self.link = CoordLink(addresses, server_public, StaticIdentity.from_private(keys.generate_private_key()),
                              lambda: dataclasses.replace(register(name, token), deltas=True),
                              self.messages.append, self.states.append)

    async def until(self, check, seconds: float) -> float:
        """Seconds until `check()` held; fails after `seconds`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not check():
            assert loop.time() - started < seconds, f"not within {seconds}s: states {self.states}"
            await asyncio.sleep(0.02)
        return loop.time() - started


@contextlib.asynccontextmanager
async def links(*watched: Watched):
    for one in watched:
        one.link.start()
    try:
        yield watched
    finally:
        for one in watched:
            await one.link.close()


def test_nodes_are_back_within_seconds_of_the_coord_restarting_and_a_newcomer_joins(tmp_path):
    async def run():
        config = coord_config(tmp_path)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(running(config))
            token, address, public = auth_key(server), Address(*server.address), server.identity.public
            first, second = Watched([address], public, token, "a1"), Watched([address], public, token, "b1")
            await stack.enter_async_context(links(first, second))
            for one in (first, second):
                await one.until(lambda o=one: o.link.connected, 10)
            await server.close()
            await first.until(lambda: not first.link.connected, 5)
            late = Watched([address], public, token, "c1")  # started while the coord is away
            await stack.enter_async_context(links(late))
            await asyncio.sleep(4.0)
            assert first.link.failures >= 2 and late.link.failures >= 2, "they kept trying meanwhile"
            await stack.enter_async_context(running(dataclasses.replace(config, listen=address)))
            back = [await one.until(lambda o=one: o.link.connected, BACK_WITHIN) for one in (first, second, late)]
            return back, late.messages

    back, late_messages = asyncio.run(run())
    assert max(back) < BACK_WITHIN, back
    assert any(isinstance(msg, m.PeerMap) for msg in late_messages), "the newcomer joined with its key"


def test_a_link_moves_to_the_other_instance_when_its_instance_stops(tmp_path, postgres_dsn):
    async def run():
        async with two_instances(tmp_path, postgres_dsn) as (one, two):
            token, public = auth_key(one), one.identity.public
            addresses = [Address(*one.address), Address(*two.address)]
            node = Watched(addresses, public, token, "a1")
            peer = Watched(addresses[::-1], public, token, "b1")
            async with links(node, peer):
                for watched in (node, peer):
                    await watched.until(lambda w=watched: w.link.connected, 10)
                assert (tuple(node.link.endpoint), tuple(peer.link.endpoint)) == tuple(map(tuple, addresses))
                await one.close()
                moved = await node.until(lambda: node.link.connected and tuple(node.link.endpoint) == addresses[1], 30)
                await peer.until(lambda: any(isinstance(msg, m.PeerDelta) and any(p.name == "a1" and p.online
                                                                                for p in msg.peers)
                                             for msg in peer.messages), 5)
                return moved, peer.states[:]

    moved, peer_states = asyncio.run(run())
    assert moved < BACK_WITHIN, f"registered on the other instance after {moved:.1f}s"
    assert peer_states == [True], "the peer on the surviving instance never lost its link"


def test_stun_goes_to_the_coord_instance_in_use(free_udp_port):
    """Each instance answers STUN on its own host: once the node moved, the one that took it answers."""
    port = free_udp_port("127.0.0.1", "127.0.0.2")
    config = NodeConfig(private_key_file=Path("unused.key"), listen=ListenConfig(address="127.0.0.1", port=0),
                        coord=NodeCoordLink(address=Address("127.0.0.1", 7400), public_key=bytes(32), stun_port=port))

    async def run():
        server = await start_stun_server("127.0.0.2", port)  # the instance in use; nothing on 127.0.0.1
        try:
            assert await port_sample(config, socket.AF_INET) is None, "coord.address's host does not answer"
            return await port_sample(config, socket.AF_INET, host="127.0.0.2")
        finally:
            server.close()

    sample = asyncio.run(run())
    assert sample is not None and sample.host == "127.0.0.1"


def test_stun_goes_to_a_coord_address_of_the_sockets_family_when_the_link_was_won_over_the_other(free_udp_port):
    """Registered over IPv6 (the race put it first), an IPv4 socket's STUN query goes to the first
    coord address with an IPv4 address, not to the IPv6 host it cannot send to."""
    port = free_udp_port("127.0.0.1")
    config = NodeConfig(private_key_file=Path("unused.key"), listen=ListenConfig(address="127.0.0.1", port=0),
                        coord=NodeCoordLink(address=Address("::1", 7400), public_key=bytes(32), stun_port=port,
                                            other_addresses=(Address("127.0.0.1", 7400),)))

    async def run():
        server = await start_stun_server("127.0.0.1", port)
        try:
            return await port_sample(config, socket.AF_INET, host="::1")
        finally:
            server.close()

    sample = asyncio.run(run())
    assert sample is not None and sample.host == "127.0.0.1"
