"""A node punches a peer that has not heard of it yet: the peer keeps the probe and answers it once it has.

The coord's fan-out batches changes for up to 0.25 s (`docs/coordination.md`), so of two nodes that
start together one may know the other, and punch, while the other has not heard of it. Here `a`
(behind a port-restricted NAT) knows `b` from its welcome and sends a packet at once; `b` (behind a
full-cone NAT, which lets `a`'s probes in) hears of `a` only later, up to the whole window, and
`a`'s first punch round reaches it in between. `b` cannot open a probe from a key it does not know.
It used to drop it as `malformed`, and the pair's path waited for `a`'s first round after `b` heard
of `a` (the rounds of a burst are 0.2 s apart): told 0.25 s after `a`'s first probe, `a` was direct
0.44 s and `b` 0.46 s after it. Now `b` keeps the probe (`meshvpn.node.strangers`) and takes it when
the coord names `a`: it answers, which proves the path to `a`, and punches back: 0.27 s and 0.29 s,
one way and one round trip after `b` heard of `a`.

The punch `a` asks the coord for does not wait for the window: the coord sends `b` the news of `a`
right before it (`docs/coordination.md`), and the pair is direct 0.08 s and 0.10 s after `a`'s first
probe; a punch that came first would be dropped, and the path would wait for the window.
"""

import random

import pytest

from test_node_sim import PORT, SimNode

from meshvpn.control import messages as m
from meshvpn.node.pathfinder import PathKind
from meshvpn.sim import FULL_CONE, PORT_RESTRICTED_CONE, Host, Nat, Network, Scheduler

NETWORK = m.NetworkInfo(name="sim", cidr="100.64.0.0/24")
STUN = ("198.51.100.53", 3478)
WINDOW = 0.25
"""The coord's fan-out window: `b` hears of `a` at most this long after `a`'s first probe."""
CONTROL_DELAY = 0.03
"""One way from the coord to a node."""
ROUND_TRIP = 0.04
"""Between the two nodes: four hops of 5 ms each way (the sim's default links)."""


class LateCoord:
    """Welcomes both nodes, `b` with an empty peer map; names `a` to `b` when told to (its fan-out
    window's round), once.

    A punch request is answered at once on both sides. With `news_first`, `b` hears of `a` right
    before the punch that names it, as from the real coord, which sends a node what its fan-out
    holds for it before any other message (`CoordServer._send_held`, `Fanout.take`). Without, the
    punch comes first, the order of a coord that skipped that step, and `b`, which does not know `a`
    yet, drops it ("punch for unknown peer"); `a`'s probes still reach `b` before it hears of `a`,
    as they do when `a` probes without asking the coord for a punch (or its request waits).
    """

    def __init__(self, net: Network, a: SimNode, b: SimNode, news_first: bool = False):
        self.net, self.a, self.b, self.news_first = net, a, b, news_first
        self.named = False
        for node, peers in ((a, (b.info(),)), (b, ())):
            node.coord = self
            self._send(node, m.Registered(node_key=node.public, name=node.name, address=node.address, network=NETWORK))
            self._send(node, m.PeerMap(peers=peers))

    def _send(self, node: SimNode, msg: m.Message) -> None:
        self.net.scheduler.call_later(CONTROL_DELAY, node.from_coord, m.decode(m.encode(msg)))

    def name_a_to_b(self) -> None:
        """`b` learns of `a` (sent now, arriving after CONTROL_DELAY), unless it did already."""
        if not self.named:
            self.named = True
            self._send(self.b, m.PeerUpdate(self.a.info()))

    def receive(self, node: SimNode, msg: m.Message) -> None:
        if isinstance(msg, m.PunchRequest):
            peer = self.b if node is self.a else self.a
            for to, about in ((node, peer), (peer, node)):
                if to is self.b and self.news_first:
                    self.name_a_to_b()
                endpoints = (m.Endpoint(about.host.ip, PORT), m.Endpoint(about.nat.ip, PORT))
                self._send(to, m.Punch(peer_key=about.public, endpoints=endpoints))


def direct_at(node: SimNode, other: SimNode):
    """When `node` first had a direct path to `other`, or None."""
    peer = node.core.peers.by_key.get(other.public)
    times = [] if peer is None else [r.at for r in peer.path_log.records if r.new == PathKind.DIRECT.value]
    return times[0] if times else None


def start(told_after: float, news_first: bool = False):
    """`a` sends its first packet to `b` at `t0`, when `b` has not heard of `a`; `b` hears of it at
    `t0 + told_after`, or with the punch `a` asks for if that comes first and `news_first`."""
    net = Network(Scheduler(), random.Random(1))
    nat_a, nat_b = Nat(net, "203.0.113.1", PORT_RESTRICTED_CONE), Nat(net, "203.0.113.2", FULL_CONE)
    a = SimNode(net, 10, "a", "100.64.0.1", Host(net, "192.168.1.10", realm=nat_a.lan), nat_a)
    b = SimNode(net, 11, "b", "100.64.0.2", Host(net, "192.168.2.11", realm=nat_b.lan), nat_b)
    Host(net, STUN[0]).bind(STUN[1], lambda data, src: None)
    for node in (a, b):
        node.sock.sendto(b"S", STUN)  # each node's endpoint discovery: the mapping its NAT made stays
    coord = LateCoord(net, a, b, news_first)
    net.scheduler.run_for(0.1)
    t0 = net.scheduler.now
    a.send_ip(b, b"first")
    net.scheduler.call_at(t0 + told_after - CONTROL_DELAY, coord.name_a_to_b)
    return net, a, b, t0


@pytest.mark.parametrize("told_after", [0.05, 0.15, WINDOW])
def test_the_first_punch_round_makes_the_path_though_the_peer_heard_of_us_after_it(told_after):
    net, a, b, t0 = start(told_after)
    net.scheduler.run_for(told_after - 0.001)
    assert b.core.drops["probe from unknown key"] >= 1, "a's first round reached b before b knew a"
    assert b.core.drops["malformed"] == 0
    assert direct_at(a, b) is None
    net.scheduler.run_for(1.0)
    a_direct, b_direct = direct_at(a, b) - t0, direct_at(b, a) - t0
    print(f"told after {told_after} s: direct {a_direct:.3f} s (a), {b_direct:.3f} s (b) after a's first probe")
    assert told_after < a_direct <= told_after + ROUND_TRIP / 2 + 0.005, "b's answer to the kept probe proves it"
    assert told_after < b_direct <= told_after + ROUND_TRIP + 0.005, "b punched back at once"
    assert a.path_to(b).endpoint == (b.nat.ip, PORT) and b.path_to(a).endpoint == (a.nat.ip, PORT)
    assert [p[20:] for p in b.tun] == [b"first"]
    assert len(b.core.strangers) == 0, "taken when a became a peer"


@pytest.mark.parametrize("news_first", [False, True], ids=["punch-first", "news-first"])
def test_the_punch_brings_the_news_of_the_peer_it_names_and_the_path_a_window_sooner(news_first):
    """`a` asks the coord for a punch with its first packet; the fan-out would name `a` to `b` only
    when its window closes. News first (the real coord's order), `b` hears of `a` with the punch,
    one coord round trip after `a`'s first probe, takes `a`'s kept probes and acts on the punch;
    punch first, `b` drops the punch and the path waits for the window."""
    net, a, b, t0 = start(WINDOW, news_first)
    net.scheduler.run_for(1.0)
    a_direct, b_direct = direct_at(a, b) - t0, direct_at(b, a) - t0
    print(f"news first {news_first}: direct {a_direct:.3f} s (a), {b_direct:.3f} s (b) after a's first probe")
    heard = 2 * CONTROL_DELAY if news_first else WINDOW
    assert b.core.drops["punch for unknown peer"] == (0 if news_first else 1)
    assert heard < a_direct <= heard + ROUND_TRIP / 2 + 0.005, "b's answer to the kept probe proves a's path"
    assert heard < b_direct <= heard + ROUND_TRIP + 0.005
    assert a.path_to(b).endpoint == (b.nat.ip, PORT) and b.path_to(a).endpoint == (a.nat.ip, PORT)
    assert [p[20:] for p in b.tun] == [b"first"]
