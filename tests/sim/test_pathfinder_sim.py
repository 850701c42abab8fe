"""Two nodes behind simulated NATs find (or fail to find) a direct path.

Each node is a small harness around a PathFinder that speaks a trivial test encoding over
a simulated UDP socket: b"P"+tx is a probe, b"R"+tx its reply, b"D" data, b"S" a STUN
request and b"s"+"ip:port" the answer. Every run is seeded and deterministic.
"""

import random

import pytest

from meshvpn.node.candidates import Candidate, CandidateKind, PortSpread, ports_above
from meshvpn.node.pathfinder import (
    RELAY_PATH,
    ChangeReason,
    Path,
    PathChanged,
    PathFinder,
    PathKind,
    SendProbe,
)
from meshvpn.sim import (
    PORT_RESTRICTED_CONE,
    FULL_CONE,
    SYMMETRIC_RANDOM,
    SYMMETRIC_SEQUENTIAL,
    Host,
    Link,
    LinkDirection,
    Nat,
    NatBehavior,
    Network,
    PortAllocation,
    Scheduler,
)

STUN = ("198.51.100.53", 3478)
PORT = 41641
T0 = 1.0
"""When the coordination server tells both nodes to punch."""


class Node:
    """One node's socket and its PathFinder for the other node."""

    def __init__(self, scheduler, host, seed, strategy=None):
        self.scheduler = scheduler
        self.sock = host.bind(PORT, self._on_datagram)
        rng = random.Random(seed)
        self.finder = PathFinder(lambda: rng.randbytes(8), strategy=strategy)
        self.changes = []
        self.public = None
        self._timer = None

    @property
    def lan(self):
        return self.sock.address

    def discover(self):
        self.sock.sendto(b"S", STUN)

    def learn(self, peer, now):
        self.finder.set_candidates([Candidate(peer.lan, CandidateKind.LAN),
                                    Candidate(peer.public, CandidateKind.PUBLIC)], now)
        self.finder.relay_ready(True, now)
        self._pump()

    def punch(self):
        self.finder.punch(self.scheduler.now)
        self._pump()

    def path_kinds(self):
        return [change.new.kind if change.new else None for _, change in self.changes]

    def _on_datagram(self, data, src):
        now, kind, body = self.scheduler.now, data[:1], data[1:]
        if kind == b"s":
            ip, port = body.decode().split(":")
            self.public = (ip, int(port))
        elif kind == b"P":
            self.sock.sendto(b"R" + body, src)
            self.finder.probe_received(src, now)
        elif kind == b"R":
            self.finder.probe_reply_received(body, src, now)
        elif kind == b"D":
            self.finder.traffic_received(src, now)
        self._pump()

    def _on_timer(self):
        self._timer = None
        self.finder.handle_timer(self.scheduler.now)
        self._pump()

    def _pump(self):
        for action in self.finder.next_actions():
            if isinstance(action, SendProbe):
                self.sock.sendto(b"P" + action.tx_id, action.endpoint)
            elif isinstance(action, PathChanged):
                self.changes.append((self.scheduler.now, action))
        if self._timer is not None:
            self._timer.cancel()
        when = self.finder.get_timer()
        self._timer = None if when is None else self.scheduler.call_at(when, self._on_timer)


class Pair:
    """Nodes a and b, each behind its own NAT (or both behind one), plus a STUN server."""

    def __init__(self, behavior_a, behavior_b=None, same_nat=False, loss=0.0, seed=1,
                 strategy_a=None, background_b=0.0):
        self.scheduler = Scheduler()
        self.net = Network(self.scheduler, random.Random(seed))
        stun = Host(self.net, STUN[0]).bind(STUN[1], None)
        stun.on_receive = lambda data, src: stun.sendto(b"s%s:%d" % (src[0].encode(), src[1]), src)
        lossy = Link(up=LinkDirection(0.01, loss=loss), down=LinkDirection(0.01, loss=loss))
        self.nat_a = Nat(self.net, "203.0.113.10", behavior_a, link=lossy)
        self.nat_b = self.nat_a if same_nat else Nat(self.net, "203.0.113.20", behavior_b,
                                                      link=Link(LinkDirection(0.01),
                                                                LinkDirection(0.01)))
        self.a = Node(self.scheduler, Host(self.net, "192.168.1.10", self.nat_a.lan), seed,
                      strategy_a)
        lan_b = "192.168.1.11" if same_nat else "192.168.2.10"
        self.b = Node(self.scheduler, Host(self.net, lan_b, self.nat_b.lan), seed + 100)
        self.nat_b.set_background_traffic(background_b)
        self.coordinate()

    def coordinate(self):
        """What the coordination server does: learn STUN endpoints, hand them out, punch."""
        for node in (self.a, self.b):
            while node.public is None:
                node.discover()
                self.scheduler.run_for(0.5)
        self.scheduler.run_until(max(self.scheduler.now, T0))
        self.a.learn(self.b, self.scheduler.now)
        self.b.learn(self.a, self.scheduler.now)
        self.a.punch()
        self.scheduler.run_for(0.02)
        self.b.punch()

    def run_until(self, t):
        self.scheduler.run_until(t)


def test_port_preserving_nats_go_direct_within_a_second():
    pair = Pair(PORT_RESTRICTED_CONE, PORT_RESTRICTED_CONE)
    pair.run_until(T0 + 1.0)
    assert pair.a.finder.current_path == Path(PathKind.DIRECT, pair.b.public)
    assert pair.b.finder.current_path == Path(PathKind.DIRECT, pair.a.public)
    assert pair.a.public == ("203.0.113.10", PORT)
    for node in (pair.a, pair.b):
        assert [c.reason for _, c in node.changes] == [ChangeReason.PUNCHED]
    pair.run_until(T0 + 120.0)
    assert pair.a.path_kinds() == [PathKind.DIRECT] and pair.b.path_kinds() == [PathKind.DIRECT]


@pytest.mark.parametrize("hairpinning", [False, True])
def test_same_nat_uses_the_lan_path(hairpinning):
    pair = Pair(NatBehavior(hairpinning=hairpinning), same_nat=True)
    pair.run_until(T0 + 1.0)
    assert pair.a.finder.current_path == Path(PathKind.LAN, pair.b.lan)
    assert pair.b.finder.current_path == Path(PathKind.LAN, pair.a.lan)


def test_symmetric_random_nats_fall_back_to_the_relay_at_relay_after():
    pair = Pair(SYMMETRIC_RANDOM, SYMMETRIC_RANDOM)
    pair.run_until(T0 + 60.0)
    assert pair.a.changes == [(pytest.approx(T0 + 2.0),
                               PathChanged(None, RELAY_PATH, ChangeReason.RELAY_FALLBACK))]
    assert pair.b.changes[0][0] == pytest.approx(T0 + 0.02 + 2.0)
    probes = pair.a.finder.stats.probes_sent
    pair.run_until(T0 + 120.0)
    assert pair.a.finder.stats.probes_sent > probes  # still punching in the background


def test_full_cone_meets_symmetric_through_the_observed_endpoint():
    pair = Pair(FULL_CONE, SYMMETRIC_RANDOM)
    pair.run_until(T0 + 1.0)
    path = pair.a.finder.current_path
    assert path.kind is PathKind.DIRECT and path.endpoint != pair.b.public
    assert pair.b.finder.current_path == Path(PathKind.DIRECT, pair.a.public)


def test_cut_link_falls_back_to_relay_then_returns_to_direct():
    pair = Pair(PORT_RESTRICTED_CONE, PORT_RESTRICTED_CONE)
    pair.run_until(30.0)
    pair.nat_b.link.connected = False
    pair.run_until(45.0)
    for node in (pair.a, pair.b):
        when, change = node.changes[-1]
        assert change.reason is ChangeReason.PATH_TIMEOUT and change.new == RELAY_PATH
        assert 30.0 < when <= 40.0
    pair.nat_b.link.connected = True
    pair.run_until(45.0 + 31.0)
    for node in (pair.a, pair.b):
        assert node.path_kinds() == [PathKind.DIRECT, PathKind.RELAY, PathKind.DIRECT]


def test_nat_reboot_with_a_new_port_recovers_after_the_coordinator_updates():
    pair = Pair(PORT_RESTRICTED_CONE, NatBehavior(ports=PortAllocation.SEQUENTIAL))
    pair.run_until(30.0)
    old_public = pair.b.public
    pair.nat_b.flush()
    pair.run_until(45.0)
    assert pair.a.finder.current_path == RELAY_PATH == pair.b.finder.current_path
    pair.b.public = None
    pair.coordinate()
    assert pair.b.public != old_public
    pair.run_until(pair.scheduler.now + 1.0)
    assert pair.a.finder.current_path == Path(PathKind.DIRECT, pair.b.public)
    assert pair.b.finder.current_path.kind is PathKind.DIRECT


@pytest.mark.parametrize("seed", range(1, 6))
def test_twenty_percent_loss_still_goes_direct(seed):
    pair = Pair(PORT_RESTRICTED_CONE, PORT_RESTRICTED_CONE, loss=0.2, seed=seed)
    pair.run_until(T0 + 2.0)
    assert pair.a.finder.current_path == Path(PathKind.DIRECT, pair.b.public)
    assert pair.b.finder.current_path == Path(PathKind.DIRECT, pair.a.public)
    assert pair.net.drops["loss"] > 0


def test_traffic_keeps_a_path_alive_while_probes_go_every_keepalive():
    pair = Pair(PORT_RESTRICTED_CONE, PORT_RESTRICTED_CONE)
    pair.run_until(T0 + 1.0)
    sent = pair.a.finder.stats.probes_sent
    data_from_b = pair.b.sock
    for second in range(3, 53):
        pair.scheduler.call_at(float(second), data_from_b.sendto, b"D", pair.a.public)
    pair.run_until(52.5)
    assert pair.a.finder.stats.probes_sent - sent == 2  # one keepalive every 25 s
    assert pair.a.path_kinds() == [PathKind.DIRECT]


@pytest.mark.parametrize("strategy, background, expected", [
    (None, 0.0, PathKind.RELAY),
    (PortSpread(ports_above(4)), 0.0, PathKind.DIRECT),
    (PortSpread(ports_above(4)), 200.0, PathKind.RELAY),
])
def test_port_prediction_against_a_sequential_nat(strategy, background, expected):
    """The seed article's FireWall-1 case: B's port for A is right above its STUN port."""
    pair = Pair(PORT_RESTRICTED_CONE, SYMMETRIC_SEQUENTIAL, strategy_a=strategy,
                background_b=background)
    pair.run_until(T0 + 10.0)
    assert pair.a.finder.current_path.kind is expected
    assert pair.b.finder.current_path.kind is expected
