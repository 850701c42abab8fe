"""Sites that let no UDP out, against every other kind: the lab matrix's paths, in time, and under changes.

The pairs harness (`meshvpn.sim.pairs`) with TCP (`meshvpn.sim.tcp`, `meshvpn.sim.tcpnat`): the
real node punches TCP from its punch port (`meshvpn.sim.streams`), and falls back to the real relay
core over a TCP stream, or over its TLS port when only 443 gets out: the relay link races plain
TCP and TLS 0.25 s apart once UDP was silent for 0.5 s, as the daemon does. `udp-blocked` and
`port-443-only` are the lab's kinds of those names (`TCP_ONLY_KINDS`).

What the lab matrix shows (`docs/nat-traversal.md`), and these hold every pair to: a UDP-blocked
site goes direct over TCP where the other side's TCP mapping is endpoint-independent (or its
router maps the punch port, `upnp`), and through the relay over TCP otherwise; a port-443-only
site relays, over the relay's TLS port, unless the peer's router maps its port 443 to the punch
port (`UPNP_443`, `portmap.tcp_443`): then it connects there, direct over TCP.

Against the endpoint-dependent kinds (address-dependent, sequential, random-ports, cgn) the TCP
path comes from TCP port prediction or a TCP birthday campaign (`meshvpn.node.tcp.prediction`):
the hard side's TCP port sample at the STUN server (`meshvpn.sim.tcpstun`), passed on in the
coord's punch (``tcp_sample``).

Targets (issue 12): direct within 1 s of the first packet, relay within 3 s; after a change,
traffic back within 1 s and the path back within 3 s. Where the node misses one today the test
holds it to what it does, and the constant says why:

* a TCP path that breaks silently (a NAT re-mapped us) is noticed by silence detection
  (`meshvpn.node.silence`) as a UDP path is, then the coord link reconnects from the punch port,
  so the peer learns its new mapping, and both punch over TCP again (a new TCP port sample where
  one side predicts). Against a peer whose router maps its punch port (`upnp`) our first connect
  reaches the mapping before the peer found its own path silent and is refused; the peer's punch
  then has us connect to the mapping again at once, beside the pending connect to its NAT's
  mapping (which only the peer's own connect would open): TCP again 0.65 s after the re-mapping
  (3.35 s when the mapping's turn came only after that connect's 2.5 s `attempt_timeout`);
* a 5 s link outage leaves the TCP paths and relay streams standing, but TCP's retransmission
  timer backed off (0.2 s doubling, on both ends of a stream, each from its first lost segment)
  and would send again only 1.2 s or more after the link is back. So when it is back, each path
  and stream checks itself (`meshvpn.node.tcpresume`): one whose data waits behind that timer is
  replaced at once (a new punch, a new stream raced), the relay carrying a pair whose TCP path is
  being replaced (`TCP_RESUME`: traffic back 0.18-0.28 s, 0.33-1.36 s before; after an idle
  outage the first echo 0.16-0.28 s, 0.59-1.40 s before). The sim leaves out netlink's 0.15 s
  debounce, which the daemon adds;
* a node that moves onto a UDP-blocked network reaches the relay once its UDP hellos were silent
  for 0.5 s and the raced stream connected (`ONTO_BLOCKED_TRAFFIC`: up to 1.06 s measured, the
  peer port-preserving). Its peers are asked to punch it again 0.5 s into its endpoint round
  (`meshvpn.node.endpointreports`), not when STUN gives up (5 s), so TCP is back within 1 s.

A relayed pair whose UDP-blocked side is re-mapped is within the targets: the relay resets the
re-mapped stream at its first segment and the link races a new one at once, since the stream had
lasted (`meshvpn.node.streamdial`; traffic back 0.28 s, 0.74-0.88 s when it waited the backoff's
first 0.5 s). A relay that restarts (it resets every stream, and has lost them) under a pair of
stream-only sites is likewise back within `RESTART_BACK` (0.22 s measured, 0.72 s before).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from meshvpn.node.pathfinder import PathKind
from meshvpn.sim.pairs import World, flow, longest_gap
from meshvpn.sim.sitekinds import KINDS, RELAYED, TCP_ONLY_KINDS, Site
from meshvpn.sim.relays import TLS_PORT

ALL = {**KINDS, **TCP_ONLY_KINDS}
TCP_DIRECT = frozenset({"port-preserving", "full-cone", "restricted-cone", "port-range", "port-range-known", "upnp",
                        "udp-blocked", "address-dependent", "sequential", "random-ports", "cgn", "dual-stack",
                        "peer-relay"})
"""The kinds a UDP-blocked site meets over TCP: endpoint-independent TCP mapping, a router's TCP port
mapping, or a TCP port sample that prediction or a birthday campaign works from."""
DIRECT_WITHIN = 1.0
RELAY_WITHIN = 3.0
TRAFFIC_BACK = 1.0
PATH_BACK = 3.0
TCP_RESUME = 0.5
"""Seconds from the link's return to traffic again, after a 5 s outage (0.28 s at the worst measured)."""
ONTO_BLOCKED_TRAFFIC = 1.5
RESTART_BACK = 0.5
"""Seconds a relay's restart may cost a pair whose ends both reach it over streams: the streams it
reset are raced again at once, not after the backoff's first step (0.5 s)."""
GAP = 0.1
WARM_UP = 4.0
STEP = 0.05


def expected(name_a: str, name_b: str) -> PathKind:
    """The path the lab matrix shows for the pair (`RELAYED` where neither side blocks UDP)."""
    if "port-443-only" in (name_a, name_b):
        return PathKind.RELAY
    if "udp-blocked" not in (name_a, name_b):
        return PathKind.RELAY if (name_a, name_b) in RELAYED else PathKind.DIRECT
    other = name_b if name_a == "udp-blocked" else name_a
    return PathKind.TCP if other in TCP_DIRECT else PathKind.RELAY


def kinds(world: World) -> tuple[PathKind | None, PathKind | None]:
    routes = world.a.route_to(world.b), world.b.route_to(world.a)
    return tuple(None if route is None else route.path.kind for route in routes)


def first_reply(name_a: str, name_b: str, until: float, seed: int = 1) -> tuple[World, float | None]:
    """Start both nodes, `a` sends one packet; when its echo came back (None: not within `until`)."""
    world = World(ALL[name_a], ALL[name_b], seed, random.Random)
    world.start()
    start = world.now
    world.a.send(world.b, b"ping")
    while world.now - start < until and not world.a.received:
        world.net.scheduler.run_for(STEP)
    return world, world.a.received[0][0] - start if world.a.received else None


PAIRS = [*(("udp-blocked", other) for other in ALL), *((other, "udp-blocked") for other in ALL if other != "udp-blocked")]


@pytest.mark.parametrize("name_a, name_b", PAIRS)
def test_a_udp_blocked_site_gets_the_lab_matrix_path_in_time(name_a: str, name_b: str) -> None:
    want = expected(name_a, name_b)
    limit = DIRECT_WITHIN if want is PathKind.TCP else RELAY_WITHIN
    world, replied = first_reply(name_a, name_b, limit)
    assert replied is not None, f"no reply within {limit} s"
    world.net.scheduler.run_for(0.5)
    assert kinds(world) == (want, want)
    world.b.send(world.a, b"from b")
    world.net.scheduler.run_for(0.3)
    assert world.a.received[-1][1] == b"from b" and world.b.received[-1][1] == b"echo from b"


@pytest.mark.parametrize("other", ["port-preserving", "random-ports", "port-443-only"])
def test_a_port_443_only_site_relays_through_the_relays_tls_port(other: str) -> None:
    world, replied = first_reply("port-443-only", other, RELAY_WITHIN)
    assert replied is not None, "the TLS attempt of the race wins while plain TCP is dropped unanswered"
    assert kinds(world) == (PathKind.RELAY, PathKind.RELAY)
    streams = world.a.relay_streams.streams
    assert streams and {s.endpoint.port for s in streams.values()} == {TLS_PORT}
    assert world.net.drops["tcp port blocked"] > 0 and world.net.drops["udp blocked"] > 0


class Run:
    """A world with a flow going (`a` to `b` every `GAP`, `b` echoes), and what it saw around one event."""

    def __init__(self, name_a: str, name_b: str, seed: int = 5) -> None:
        self.world = World(ALL[name_a], ALL[name_b], seed, random.Random)
        self.world.start()
        flow(self.world, GAP, float("inf"))
        self.world.net.scheduler.run_for(WARM_UP)
        self.before = kinds(self.world)
        assert self.before == (expected(name_a, name_b),) * 2

    @property
    def now(self) -> float:
        return self.world.now

    def run_until_kinds(self, want: PathKind, until: float) -> float | None:
        """Run to `until`; the first time from which both paths were `want` to the end (None: not at the end)."""
        since = None
        while self.now < until:
            self.world.net.scheduler.run_for(STEP)
            since = (since if since is not None else self.now) if kinds(self.world) == (want, want) else None
        return since

    def gap(self, start: float) -> float:
        """The longest stretch since `start` with nothing received, either way."""
        to_b = [t for t, payload in self.world.b.received if not payload.startswith(b"echo ")]
        to_a = [t for t, payload in self.world.a.received if payload.startswith(b"echo ")]
        return max(longest_gap(to_b, start, self.now), longest_gap(to_a, start, self.now))


BLOCKED_PAIRS = [*(("udp-blocked", other) for other in ALL), ("port-range", "udp-blocked"), ("unreported", "udp-blocked")]
"""The blocked site against every kind, and second against both outcomes."""


@pytest.mark.parametrize("name_a, name_b", BLOCKED_PAIRS)
def test_the_udp_blocked_sites_nat_re_mapping_it(name_a: str, name_b: str) -> None:
    run = Run(name_a, name_b)
    blocked = run.world.a if name_a == "udp-blocked" else run.world.b
    remapped = run.now
    blocked.nat.rebind()
    want = run.before[0]
    since = run.run_until_kinds(want, remapped + 4.0)
    assert run.gap(remapped) < TRAFFIC_BACK, "the relay (or TCP again) within a second of the silence"
    assert since is not None and since - remapped <= PATH_BACK, f"{want} again at {since and since - remapped}"


@pytest.mark.parametrize("name_a, name_b", BLOCKED_PAIRS)
def test_a_udp_blocked_node_whose_link_is_down_for_five_seconds(name_a: str, name_b: str) -> None:
    run = Run(name_a, name_b)
    blocked = run.world.a if name_a == "udp-blocked" else run.world.b
    blocked.link_down()
    run.world.net.scheduler.run_for(5.0)
    back = run.now
    blocked.link_up()
    since = run.run_until_kinds(run.before[0], back + 4.0)
    assert run.gap(back) < TCP_RESUME, "paths and streams that wait for TCP's retransmission are replaced"
    assert since is not None and since - back <= PATH_BACK


@pytest.mark.parametrize("name_a, name_b", BLOCKED_PAIRS)
def test_an_idle_pair_whose_udp_blocked_side_was_offline_for_five_seconds(name_a: str, name_b: str) -> None:
    """Nothing but keepalives and hellos went out during the outage, which TCP holds for its
    backed-off retransmission: the flow that starts as the link returns is answered within `TCP_RESUME`."""
    world = World(ALL[name_a], ALL[name_b], 5, random.Random)
    world.start()
    world.a.send(world.b, b"warm")
    world.net.scheduler.run_for(WARM_UP)
    blocked = world.a if name_a == "udp-blocked" else world.b
    blocked.link_down()
    world.net.scheduler.run_for(5.0)
    back = world.now
    blocked.link_up()
    flow(world, GAP, back + 2.0)
    world.net.scheduler.run_for(2.0)
    echoes = [t - back for t, payload in world.a.received if t > back and payload.startswith(b"echo ")]
    assert echoes and echoes[0] < TCP_RESUME, f"first echo {echoes[:1]} s after the link came back"


@pytest.mark.parametrize("old, new, peer", [
    ("udp-blocked", "udp-blocked", "port-preserving"),
    ("udp-blocked", "port-preserving", "port-preserving"),
    ("udp-blocked", "random-ports", "udp-blocked"),
    ("port-preserving", "udp-blocked", "udp-blocked"),
    ("random-ports", "udp-blocked", "port-preserving"),
])
def test_a_node_that_moves_from_or_onto_a_udp_blocked_network(old: str, new: str, peer: str) -> None:
    run = Run(old, peer)
    moved = run.now
    run.world.a.move_to(Site(run.world.net, 2, ALL[new]))
    want = expected(new, peer)
    onto_blocked = new == "udp-blocked" and old != "udp-blocked"
    since = run.run_until_kinds(want, moved + PATH_BACK + 1.0)
    assert run.gap(moved) < (ONTO_BLOCKED_TRAFFIC if onto_blocked else TRAFFIC_BACK)
    assert since is not None and since - moved <= PATH_BACK, f"{want} at {since}"


UPNP_443 = replace(KINDS["upnp"], mapped_tcp_port=443)
"""The `upnp` router whose TCP mapping of the punch port is external port 443 (`portmap.tcp_443`)."""


@pytest.mark.parametrize("mapped_first", [True, False])
def test_a_port_443_only_site_connects_to_a_routers_mapping_at_port_443(mapped_first: bool) -> None:
    """The only way out of a port-443-only site is TCP to port 443: a peer whose router forwards
    its port 443 to the peer's punch port is reached there, directly over TCP, in either order."""
    kinds_ab = (UPNP_443, ALL["port-443-only"]) if mapped_first else (ALL["port-443-only"], UPNP_443)
    world = World(*kinds_ab, 1, random.Random)
    world.start()
    start = world.now
    world.a.send(world.b, b"ping")
    while world.now - start < DIRECT_WITHIN and not world.a.received:
        world.net.scheduler.run_for(STEP)
    assert world.a.received, f"no reply within {DIRECT_WITHIN} s"
    world.net.scheduler.run_for(0.5)
    assert kinds(world) == (PathKind.TCP, PathKind.TCP)
    mapped = world.a if mapped_first else world.b
    assert mapped.site.mapped_tcp.port == 443


@pytest.mark.parametrize("name_a, name_b", [("port-443-only", "udp-blocked"), ("port-443-only", "port-443-only")])
def test_a_relay_restart_under_a_pair_of_stream_only_sites(name_a: str, name_b: str) -> None:
    """The other relay dead, the pair's relay restarts: its resets have both ends race a new stream at once."""
    run = Run(name_a, name_b)
    run.world.kill_relay("far")
    run.world.net.scheduler.run_for(3.0)
    relay = next(r for r in run.world.relays if r.info.name == "near")
    restarted = run.now
    relay.restart()
    since = run.run_until_kinds(PathKind.RELAY, restarted + 3.0)
    assert run.gap(restarted) < RESTART_BACK, f"no traffic for {run.gap(restarted):.2f} s"
    assert since is not None
