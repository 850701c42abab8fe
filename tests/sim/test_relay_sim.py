"""Nodes behind symmetric NATs reach each other through relays on the simulated internet.

Each node is a `RelaySet` on a simulated UDP socket; each relay is a `RelayCore` on another.
Tokens come from a `TokenMinter`, as the coordination server would send them. Two relays sit at
different distances, so the home choice by round-trip time shows. Every run is seeded.
"""

import random

from meshvpn import keys, wire
from meshvpn.node import events as ev
from meshvpn.node.relay.link import Transport
from meshvpn.node.relay.core import RelaySet
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim import SYMMETRIC_RANDOM, Host, Nat, Network, Scheduler
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.sim.relays import COORD, SimRelay, relay_tokens
from meshvpn.wire import Endpoint, MessageType

NEAR, FAR = ("203.0.113.20", 0.005), ("198.51.100.20", 0.040)
DATA = wire.header(MessageType.DATA) + bytes(12) + b"sealed" + bytes(16)


class SimNode:
    """A node's relay side: a RelaySet on one socket; relayed envelopes land in `received`."""

    def __init__(self, scheduler, net, nat, lan_ip, rng):
        self.scheduler = scheduler
        self.private = rng.randbytes(32)
        self.public = keys.public_key(self.private)
        self.relays = RelaySet(self.private, self.public, rng.randbytes, WALL_OFFSET)
        self.sock = Host(net, lan_ip, nat.lan).bind(41641, self._on_datagram)
        self.received: list[tuple[float, bytes, bytes]] = []
        self.homes: list[tuple[float, str | None]] = []
        self.tcp_attempts = 0
        """The simulation has no TCP: every connection attempt is refused after 0.1 s."""
        self._timer = None

    def register(self, relays, minter):
        now = self.scheduler.now
        self.relays.configure(relays, relay_tokens(minter, relays, self.public, now), now)
        self._pump()

    def send(self, peer_public, inner):
        self.sock.sendto(wire.encode_relay(peer_public, inner), self.relays.home_endpoint())

    def _on_datagram(self, data, src):
        now = self.scheduler.now
        if data[1] in (MessageType.RELAY_HELLO_ACK, MessageType.RELAY_COOKIE):
            self.relays.receive(data, Endpoint(*src), Transport.UDP, now)
        else:
            relayed = wire.decode_relay(data)
            self.received.append((now, relayed.node_key, bytes(relayed.inner)))
        self._pump()

    def _tcp_refused(self, name):
        self.relays.tcp_down(name, self.scheduler.now)
        self._pump()

    def _on_timer(self):
        self._timer = None
        self.relays.handle_timer(self.scheduler.now)
        self._pump()

    def _pump(self):
        now = self.scheduler.now
        for dst, data in self.relays.datagrams_to_send():
            self.sock.sendto(data, dst)
        for wish in self.relays.stream_wishes(now):
            if isinstance(wish, ev.OpenRelayStream):
                self.tcp_attempts += 1
                self.scheduler.call_later(0.1, self._tcp_refused, wish.name)
        if self.relays.home_changed():
            home = self.relays.home
            self.homes.append((self.scheduler.now, None if home is None else home.name))
        if self._timer is not None:
            self._timer.cancel()
        when = self.relays.get_timer()
        self._timer = None if when is None else self.scheduler.call_at(when, self._on_timer)


class World:
    def __init__(self, seed=1):
        rng = random.Random(seed)
        self.scheduler = Scheduler()
        self.net = Network(self.scheduler, rng)
        self.near = SimRelay(self.scheduler, self.net, "near", *NEAR, rng)
        self.far = SimRelay(self.scheduler, self.net, "far", *FAR, rng)
        self.minter = TokenMinter(COORD, rng.randbytes)
        self.a = SimNode(self.scheduler, self.net, Nat(self.net, "192.0.2.10", SYMMETRIC_RANDOM), "10.1.0.11", rng)
        self.b = SimNode(self.scheduler, self.net, Nat(self.net, "192.0.2.20", SYMMETRIC_RANDOM), "10.2.0.11", rng)

    def start(self, relays=None):
        relays = relays or (self.far.info, self.near.info)
        self.a.register(relays, self.minter)
        self.b.register(relays, self.minter)


def test_both_nodes_pick_the_nearest_relay_and_exchange_through_it():
    world = World()
    world.start()
    world.scheduler.run_for(1.0)
    assert world.a.homes[-1][1] == world.b.homes[-1][1] == "near"
    assert all(link.ready for node in (world.a, world.b) for link in node.relays.links.values())
    world.a.send(world.b.public, DATA)
    world.b.send(world.a.public, DATA)
    world.scheduler.run_for(0.5)
    assert [(key, inner) for _, key, inner in world.b.received] == [(world.a.public, DATA)]
    assert world.a.received[0][1] == world.b.public
    assert world.near.core.stats.forwarded == 2 and world.far.core.stats.forwarded == 0


def test_home_moves_when_its_relay_goes_silent_and_comes_back_after_a_restart():
    world = World(seed=2)
    world.start()
    world.scheduler.run_for(1.0)
    world.near.sock.close()
    world.scheduler.run_for(10.0)
    assert world.a.homes[-1][1] == "far"
    assert 3 <= world.a.tcp_attempts <= 6, "TCP to the silent relay is retried with backoff"
    world.a.send(world.b.public, DATA)
    world.scheduler.run_for(0.5)
    assert world.b.received and world.far.core.stats.forwarded == 1

    world.far.restart()
    restarted = world.scheduler.now
    world.scheduler.run_for(3.0)
    world.a.send(world.b.public, DATA)
    world.scheduler.run_for(0.5)
    assert world.far.core.stats.forwarded == 1, "the restarted relay forwarded within a hello interval"
    assert world.far.core.registered_link(world.a.public) is not None
    assert world.b.received[-1][0] > restarted


def test_a_node_without_tokens_is_never_served():
    world = World(seed=3)
    world.a.register((world.near.info,), world.minter)
    world.b.relays.configure((world.near.info,), (), world.scheduler.now)
    world.scheduler.run_for(5.0)
    assert world.b.relays.home is None
    world.a.send(world.b.public, DATA)
    world.scheduler.run_for(0.5)
    assert world.b.received == [] and world.near.core.drops["destination not registered"] == 1
