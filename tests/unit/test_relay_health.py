"""Relay health per relay (issue 12): a dead relay stops being home within 2 s whether or not it
carries traffic, and a peer that stops reporting a relay has ours checked at once, so both ends of
a pair agree on it. The real node and two real relay cores in memory, a plain float clock."""

import random
from dataclasses import replace

from meshvpn import keys
from meshvpn.config import RelayLimits
from meshvpn.control import messages as m
from meshvpn.node.relay.link import RelayLinkConfig
from meshvpn.relay.core import RelayCore
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim.nodes import WALL_OFFSET, MemoryNode, seeded
from meshvpn.wire import Endpoint, MessageType

COORD = bytes([7]) * 32
NODE_AT = Endpoint("198.51.100.3", 41641)
RELAYS = {"r1": (Endpoint("203.0.113.31", 7500), 0.01), "r2": (Endpoint("203.0.113.32", 7500), 0.03)}
"""Name → the relay's endpoint and the round trip to it: r1 is home."""
PEER = m.PeerInfo(key=bytes([9]) * 32, name="peer", address="100.64.0.7", online=True, home_relay="r1",
                  relay_rtts=(m.RelayRtt("r1", 10), m.RelayRtt("r2", 30)))


class TwoRelays:
    """A registered node, a peer the coord described, and two relays that answer after their round
    trip unless `dead`. `run` steps the node at each deadline it asks for."""

    def __init__(self) -> None:
        self.node: MemoryNode = seeded(random.Random, 1, "me", "100.64.0.2", NODE_AT)
        self.cores = {name: RelayCore(bytes([20 + i]) * 32, keys.public_key(COORD), RelayLimits(),
                                      random.Random(i).randbytes, WALL_OFFSET) for i, name in enumerate(RELAYS)}
        self.dead: set[str] = set()
        self.hellos: dict[str, list[float]] = {name: [] for name in RELAYS}
        self._answers: list[tuple[float, bytes, Endpoint]] = []
        minter = TokenMinter(COORD, random.Random(5).randbytes)
        infos, tokens = [], []
        for name, (at, _) in RELAYS.items():
            relay_key = keys.public_key(bytes([20 + len(infos)]) * 32)
            infos.append(m.RelayInfo(name, at.host, at.port, relay_key))
            token, expires = minter.mint(relay_key, self.node.public, WALL_OFFSET)
            tokens.append(m.RelayToken(name, token, float(expires)))
        self.node.from_coord(m.Registered(node_key=self.node.public, name="me", address="100.64.0.2",
                                          network=m.NetworkInfo("health", "100.64.0.0/24"), relays=tuple(infos),
                                          relay_tokens=tuple(tokens)), 0.0)
        self.node.from_coord(m.PeerMap(peers=(PEER,)), 0.0)
        self.now = 0.0
        self._carry()

    @property
    def relays(self):
        return self.node.node.relays

    def run(self, until: float) -> None:
        while True:
            due = [t for t in (self.node.node.get_timer(), *(at for at, _, _ in self._answers)) if t is not None]
            if not due or min(due) > until:
                break
            self.now = max(self.now, min(due))
            self.node.tick(self.now)
            self._carry()
        self.now = until

    def coord(self, msg: m.Message) -> None:
        self.node.from_coord(msg, self.now)
        self._carry()

    def _carry(self) -> None:
        """Hellos to the relays; their acks back after the round trip (held until then)."""
        by_endpoint = {at: name for name, (at, _) in RELAYS.items()}
        for dst, data in self.node.collect():
            name = by_endpoint.get(dst)
            if name is None or data[1] != MessageType.RELAY_HELLO:
                continue
            self.hellos[name].append(self.now)
            if name in self.dead:
                continue
            self.cores[name].receive(data, NODE_AT, WALL_OFFSET + self.now)
            rtt = RELAYS[name][1]
            self._answers += [(self.now + rtt, answer, dst) for _, answer in self.cores[name].datagrams_to_send()]
        ready = [a for a in self._answers if a[0] <= self.now]
        self._answers = [a for a in self._answers if a[0] > self.now]
        for _, answer, src in ready:
            self.node.receive([(answer, src)], self.now)
        if ready:
            self._carry()


def settled() -> TwoRelays:
    world = TwoRelays()
    world.run(5.0)
    assert world.relays.home.name == "r1" and all(link.ready for link in world.relays.links.values())
    return world


def test_an_idle_home_relay_that_dies_is_left_within_two_seconds_of_its_last_ack() -> None:
    world = settled()
    last_ack = world.hellos["r1"][-1] + 0.01
    world.dead.add("r1")
    world.run(last_ack + RelayLinkConfig().down_after - 0.01)
    assert world.relays.home.name == "r1", "not before down_after: a late hello is retried first"
    world.run(last_ack + RelayLinkConfig().down_after)
    assert world.relays.home.name == "r2" and not world.relays.links["r1"].ready
    assert RelayLinkConfig().down_after <= 2.0


def test_a_peer_that_stops_reporting_a_relay_has_ours_checked_at_once() -> None:
    world = settled()
    world.run(world.hellos["r1"][-1] + 0.05)  # r1 dies just after answering
    world.dead.add("r1")
    told = world.now
    world.coord(m.PeerUpdate(peer=replace(PEER, home_relay="r2", relay_rtts=(m.RelayRtt("r2", 30),))))
    assert world.hellos["r1"][-1] == told, "a hello to the relay the peer left, at once"
    world.run(told + RelayLinkConfig().check_timeout)
    assert world.relays.home.name == "r2" and not world.relays.links["r1"].ready, "left well before down_after"


def test_a_peer_report_that_keeps_its_relays_checks_nothing() -> None:
    world = settled()
    world.run(world.hellos["r1"][-1] + 0.05)
    before = {name: len(times) for name, times in world.hellos.items()}
    world.coord(m.PeerUpdate(peer=replace(PEER, relay_rtts=(m.RelayRtt("r1", 12), m.RelayRtt("r2", 30)))))
    assert {name: len(times) for name, times in world.hellos.items()} == before


def test_a_relay_the_peer_left_that_still_answers_stays_ready() -> None:
    world = settled()
    world.run(world.hellos["r1"][-1] + 0.05)
    world.coord(m.PeerUpdate(peer=replace(PEER, relay_rtts=(m.RelayRtt("r2", 30),))))
    world.run(world.now + 1.0)
    assert world.relays.home.name == "r1" and world.relays.links["r1"].ready
