"""Where hole-punching probes go: a peer's candidate endpoints and the strategy that picks targets.

The path machine (`pathfinder.py`) knows *when* to punch; a `ProbeStrategy` decides *where*,
round by round. The default probes every known candidate. `PortSpread` also probes ports
near or around a public candidate, which is how we get through NATs that give a new port
per destination: "ports above the observed one" for sequential NATs (as Skype does with
Check Point FireWall-1) and many random ports ("birthday" probing) for random ones. Both
are the same idea — extra ports derived from the public candidate — with a different port
generator, so the machine never changes when a generator is added.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from meshvpn.control import messages as m
from meshvpn.wire import Endpoint


class CandidateKind(enum.StrEnum):
    """How we learned that the peer might be reachable at an endpoint."""

    LAN = "lan"
    """The peer's own interface address, as it reported it: works when we share its LAN."""
    PUBLIC = "public"
    """The peer's address as a STUN server saw it, relayed by the coordination server."""
    MAPPED = "mapped"
    """A port the peer's router forwards to it on request (UPnP IGD, NAT-PMP, PCP): open to anyone."""
    IPV6 = "ipv6"
    """The peer's global IPv6 address (or its IPv6 mapping as STUN saw it): no NAT to guess around."""
    OBSERVED = "observed"
    """Where an authenticated probe or packet from the peer came from."""
    PREDICTED = "predicted"
    """A port a `ProbeStrategy` guessed from a public candidate."""


@dataclass(frozen=True)
class Candidate:
    """An endpoint where the peer may be reachable, and how we learned it."""

    endpoint: Endpoint
    kind: CandidateKind


class ProbeStrategy(Protocol):
    """Chooses the probe targets of one punch round from the peer's known candidates."""

    def targets(self, candidates: Sequence[Candidate], round_no: int) -> list[Candidate]:
        """Targets for punch round `round_no` (0 is the first round of a burst)."""
        ...


class AllCandidates:
    """Probe every known candidate every round, LAN candidates first."""

    news_at_once = True
    """A candidate learnt during a burst is probed at once (`PathFinder.set_candidates`): it costs
    our NAT nothing the next round would not. Strategies that predict ports (`PortSpread`) do not:
    behind a counting NAT a probe out of turn takes the port the peer predicted."""

    def targets(self, candidates: Sequence[Candidate], round_no: int) -> list[Candidate]:
        """Every candidate, LAN ones first so they win ties on the wire."""
        return sorted(candidates, key=lambda c: c.kind is not CandidateKind.LAN)


class AnswerFirst:
    """Behind a router's port mapping (UPnP IGD, NAT-PMP, PCP), let a peer without one send first.

    A probe of ours to the peer's public endpoint makes a flow in our NAT; the peer's probe to
    the forwarded port that arrives after it then belongs to that flow (conntrack keeps the first
    flow of a pair of endpoints), our answer leaves from the flow's port, and the peer's NAT, which
    sent only to the forwarded one, drops it. So for the first `hold_rounds` rounds of a burst we
    probe only what our NAT does not stand before (LAN, IPv6), the peer's own mapping, and endpoints
    `heard` from (their probe came through the forward: the flow is the forwarded port's). Later
    rounds probe everything, in case the forward does not work; a peer with a mapping of its own
    gets everything at once (each side's probes go to the other's forward, no flow is shared).
    """

    _FREE = (CandidateKind.LAN, CandidateKind.IPV6, CandidateKind.MAPPED)
    news_at_once = True
    """As `AllCandidates`, within the rounds' hold."""

    def __init__(self, heard: Callable[[Endpoint], bool], hold_rounds: int) -> None:
        self._heard = heard
        self._hold = hold_rounds

    def targets(self, candidates: Sequence[Candidate], round_no: int) -> list[Candidate]:
        """Every candidate (LAN first), less those still held in this round."""
        chosen = AllCandidates().targets(candidates, round_no)
        if round_no >= self._hold or any(c.kind is CandidateKind.MAPPED for c in candidates):
            return chosen
        return [c for c in chosen if c.kind in self._FREE or self._heard(c.endpoint)]


PortGenerator = Callable[[int, int], Iterable[int]]
"""(public port, round number) -> extra ports to probe on the same address."""


class PortSpread:
    """Every candidate, plus extra ports on each public candidate's address.

    `ports` generates the extra ports for one round; a predicted endpoint that is already a
    candidate is not probed twice. Use `ports_above` for sequential NATs and
    `random_ports` for random ones.
    """

    def __init__(self, ports: PortGenerator, base: ProbeStrategy | None = None) -> None:
        self._ports = ports
        self._base = base if base is not None else AllCandidates()

    def targets(self, candidates: Sequence[Candidate], round_no: int) -> list[Candidate]:
        """The base strategy's targets followed by the predicted ports."""
        chosen = self._base.targets(candidates, round_no)
        seen = {c.endpoint for c in chosen}
        for candidate in candidates:
            if candidate.kind is not CandidateKind.PUBLIC:
                continue
            ip, port = candidate.endpoint
            for guess in self._ports(port, round_no):
                endpoint = (ip, guess)
                if 0 < guess < 65536 and endpoint not in seen:
                    seen.add(endpoint)
                    chosen.append(Candidate(endpoint, CandidateKind.PREDICTED))
        return chosen


def ports_above(per_round: int) -> PortGenerator:
    """Sequential NATs: each round covers the next `per_round` ports above the public one."""

    def generate(port: int, round_no: int) -> Iterable[int]:
        start = port + 1 + round_no * per_round
        return range(start, start + per_round)

    return generate


def random_ports(per_round: int, randrange: Callable[[int, int], int]) -> PortGenerator:
    """Random NATs: `per_round` random ports in 1024..65535 each round (birthday probing)."""

    def generate(port: int, round_no: int) -> Iterable[int]:
        return [randrange(1024, 65536) for _ in range(per_round)]

    return generate


def candidates_of(info: m.PeerInfo) -> list[Candidate]:
    """Where the coord says a peer may be: its LAN addresses, its router's port mapping, its STUN
    mapping, and its coord-observed address with its local ports (port-preserving NATs keep them);
    and its IPv6 endpoints, probed in the same rounds, so the two families race."""
    out = [Candidate(Endpoint(e.host, e.port), CandidateKind.LAN) for e in info.local_endpoints]
    out += [Candidate(Endpoint(e.host, e.port), CandidateKind.IPV6) for e in info.ipv6_endpoints or ()]
    if info.mapped_endpoint is not None:
        out.append(Candidate(Endpoint(info.mapped_endpoint.host, info.mapped_endpoint.port), CandidateKind.MAPPED))
    if info.public_endpoint is not None:
        out.append(Candidate(Endpoint(info.public_endpoint.host, info.public_endpoint.port), CandidateKind.PUBLIC))
    if info.observed_host is not None and not ipaddress.ip_address(info.observed_host).is_loopback:
        for port in dict.fromkeys(e.port for e in info.local_endpoints):
            guess = Candidate(Endpoint(info.observed_host, port), CandidateKind.PUBLIC)
            if guess not in out:
                out.append(guess)
    return out


def tcp_candidates_of(info: m.PeerInfo) -> list[Candidate]:
    """Where TCP punching connects to a peer: its router's mapping of its punch port first (open to
    anyone), then its NAT's mapping of that port as the coord saw it (``public_tcp``), then its
    global IPv6 addresses: untranslated, at its punch port (the port of its UDP socket, which is
    what ``ipv6_endpoints`` name), through a stateful firewall that a simultaneous open passes."""
    found = [(info.mapped_tcp, CandidateKind.MAPPED), (info.public_tcp, CandidateKind.PUBLIC)]
    found += [(e, CandidateKind.IPV6) for e in info.ipv6_endpoints or ()]
    return [Candidate(Endpoint(e.host, e.port), kind) for e, kind in found if e is not None]



def tcp_sources_of(info: m.PeerInfo) -> list[str]:
    """Addresses a peer's TCP connections may come from besides its TCP candidates: its NAT's (and
    router's) public UDP address, which its IPv4 connects leave from even when its coord link, and
    so every TCP candidate the coord saw, is IPv6."""
    found = (info.public_endpoint, info.mapped_endpoint)
    return list(dict.fromkeys(e.host for e in found if e is not None))
