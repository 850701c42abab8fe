"""Where to probe a peer behind a hard NAT: port prediction and birthday probing, sans-IO.

A NAT with an endpoint-dependent mapping gives the peer a new public port for every new
destination, so the port its STUN server saw is not the one our probes must reach. Two
answers, both plugged into the path finder as `PortSpread` port generators
(`meshvpn.node.candidates`), so the path machine does not change:

* **Sequential prediction** (the seed article's FireWall-1 case). The hard side samples its
  NAT's current port with a STUN request from a fresh socket just before punching and
  publishes it; its next mappings take the ports right above. The other side probes those
  ports in order, `ports_per_round` per punch round, at most `max_ports` above one sample.
  If that fails, the hard side re-samples (`ResampleSchedule`: bounded count, fixed gap) and
  the run restarts above the new port — background traffic has moved the NAT on meanwhile.
  Both sides sequential works too when both probe in order at the same moment: each side's
  i-th new mapping is aimed at the other's i-th predicted port.
* **Birthday probing**, for an endpoint-dependent *random* NAT on one side and an endpoint-
  independent one on the other. The hard side opens `sockets` mappings (up to 256), each
  sending a probe to the easy side's public endpoint; the easy side probes random ports of
  the hard side's address at `probes_per_second` for `seconds`. With M mappings among P
  ports and K probes, a hit has probability 1 - (1 - M/P)^K: 256 mappings and 900 probes give
  about 97 %. The hard side then talks to the peer from the socket that was hit.

Two random sides cannot be met this way (both would need the birthday's M·K on each side at
once); they use the relay. `strategy_for` picks from the two sides' NAT profiles.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from meshvpn.node.candidates import AllCandidates, Candidate, CandidateKind, PortSpread, ProbeStrategy

PORT_SPACE = (1024, 65536)
"""Ports a NAT hands out (low inclusive, high exclusive): what birthday probing draws from."""


class Allocation(enum.StrEnum):
    """How a NAT picks the public port of a new mapping (what netcheck reports)."""

    PRESERVING = "port preservation"
    OFFSET = "fixed offset"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NatProfile:
    """What a node knows (from netcheck-style STUN tests) about one side's NAT."""

    endpoint_independent: bool = True
    """One public endpoint for every destination: the peer's STUN endpoint is the one to probe."""
    allocation: Allocation = Allocation.PRESERVING
    """Port allocation of new mappings; matters only when the mapping is endpoint-dependent."""

    @property
    def predictable(self) -> bool:
        """New mappings land at or right above the last sampled port."""
        return self.endpoint_independent or self.allocation in (
            Allocation.PRESERVING, Allocation.OFFSET, Allocation.SEQUENTIAL)


@dataclass(frozen=True)
class SequentialLimits:
    """Bounds of sequential port prediction."""

    ports_per_round: int = 16
    """Predicted ports probed per punch round (80 probes/s at the 0.2 s burst interval)."""
    max_ports: int = 128
    """Ports probed above one sample before waiting for a new sample."""


class SequentialPorts:
    """Port generator: the ports above the peer's sampled public port, in order, bounded.

    The run is counted from the round in which a public port was first seen, so a re-sample
    (a new public candidate) starts its own run from the bottom.
    """

    def __init__(self, limits: SequentialLimits | None = None) -> None:
        self.limits = limits if limits is not None else SequentialLimits()
        self._first_round: dict[int, int] = {}

    def __call__(self, port: int, round_no: int) -> Iterable[int]:
        first = self._first_round.setdefault(port, round_no)
        if round_no < first:
            self._first_round[port] = first = round_no
        per = self.limits.ports_per_round
        start = 1 + (round_no - first) * per
        stop = min(start + per, self.limits.max_ports + 1)
        return range(port + start, port + stop)


class PredictedFirst:
    """Another strategy's targets in the order a counting NAT needs: predicted ports first, LAN last.

    When both sides are sequential, each side's run must be the first new mappings after its
    sample: any other new destination in between shifts its ports out of the other's run. And
    a side behind a sequential NAT must give its next port to the peer's public address, not to
    the peer's LAN address (a probe there leaves through the NAT too and takes a port).
    """

    def __init__(self, inner: ProbeStrategy) -> None:
        self._inner = inner

    def targets(self, candidates: Sequence[Candidate], round_no: int) -> list[Candidate]:
        """The inner strategy's targets, predicted ones first, LAN ones last, each group in its own order."""
        chosen = self._inner.targets(candidates, round_no)
        return sorted(chosen, key=lambda c: (c.kind is not CandidateKind.PREDICTED) + (c.kind is CandidateKind.LAN))


@dataclass(frozen=True)
class BirthdayPlan:
    """Bounds of birthday probing; both sides must use the same plan."""

    sockets: int = 256
    """Mappings the hard side opens towards the easy side's public endpoint."""
    probes_per_second: int = 300
    """Rate of the easy side's probes to random ports of the hard side."""
    seconds: float = 3.0
    """How long the easy side probes before leaving the peer to the relay."""

    @property
    def max_probes(self) -> int:
        """The easy side's probe budget per campaign."""
        return int(self.probes_per_second * self.seconds)

    def success_probability(self, port_space: int = PORT_SPACE[1] - PORT_SPACE[0]) -> float:
        """Chance that one of `max_probes` random ports hits one of the `sockets` mappings."""
        return 1.0 - (1.0 - self.sockets / port_space) ** self.max_probes


class BirthdayPorts:
    """Port generator for the easy side: random ports of the hard side's address, budgeted.

    `round_interval` is the path finder's punch interval: each round gets the share of the
    rate that falls in it, and nothing is generated once `max_probes` have been.
    """

    def __init__(self, plan: BirthdayPlan, randrange: Callable[[int, int], int], round_interval: float) -> None:
        self.plan = plan
        self._randrange = randrange
        self._per_round = max(1, round(plan.probes_per_second * round_interval))
        self.generated = 0

    def __call__(self, port: int, round_no: int) -> Iterable[int]:
        count = min(self._per_round, self.plan.max_probes - self.generated)
        self.generated += max(count, 0)
        return [self._randrange(*PORT_SPACE) for _ in range(count)]


@dataclass
class ResampleSchedule:
    """When the hard side takes a fresh STUN sample of its NAT's next port.

    `start(now)` asks for a sample at once; while no direct path is found, another follows
    every `interval`, at most `max_samples` in all. The shell sends the STUN request from a
    fresh socket, publishes the mapped port as the node's public endpoint and calls
    `sampled(now)`; `stop()` ends the schedule once a path is found. After a fall back
    (`extend`) samples go on every `slow_interval` until `until`, past `max_samples`.
    """

    interval: float = 1.0
    max_samples: int = 3
    taken: int = 0
    _due: float | None = None
    until: float = float("-inf")
    slow_interval: float = 3.0

    def start(self, now: float) -> None:
        """A punch campaign begins: sample now."""
        self.taken = 0
        self._due = now

    def due(self, now: float) -> bool:
        """Whether a sample should be taken at `now`."""
        return self._due is not None and now >= self._due

    def sampled(self, now: float) -> None:
        """A sample was taken and published."""
        self.taken += 1
        if self.taken < self.max_samples:
            self._due = now + self.interval
        else:
            self._due = now + self.slow_interval if now + self.slow_interval <= self.until else None

    def extend(self, now: float, until: float, interval: float) -> None:
        """The peer fell back to the relay: keep sampling every `interval` until `until` (at once if
        the samples were spent), as the path finder keeps punching through its fast window."""
        self.until, self.slow_interval = until, interval
        if self._due is None:
            self._due = now

    def stop(self) -> None:
        """A direct path exists (or the peer is gone): no more samples."""
        self._due = None

    def get_timer(self) -> float | None:
        """When the next sample is due, or None."""
        return self._due


def strategy_for(
    local: NatProfile,
    peer: NatProfile,
    randrange: Callable[[int, int], int],
    round_interval: float,
    sequential: SequentialLimits | None = None,
    birthday: BirthdayPlan | None = None,
) -> ProbeStrategy:
    """How we probe `peer`, given both NATs: every candidate, plus predicted ports if they help, in
    the order our NAT needs when it counts (`PredictedFirst`)."""
    if peer.endpoint_independent or not peer.predictable and not local.endpoint_independent:
        return PredictedFirst(AllCandidates()) if samples_ports(local) else AllCandidates()
    if peer.predictable:
        return PredictedFirst(PortSpread(SequentialPorts(sequential)))
    return PortSpread(BirthdayPorts(birthday or BirthdayPlan(), randrange, round_interval))


def samples_ports(profile: NatProfile) -> bool:
    """Whether a side behind this NAT samples its ports before punching (sequential mapping)."""
    return not profile.endpoint_independent and profile.predictable


def opens_many_mappings(local: NatProfile, peer: NatProfile) -> bool:
    """Whether this side is the hard side of a birthday pairing and must open extra mappings."""
    return not local.predictable and peer.endpoint_independent
