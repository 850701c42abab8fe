"""Hard NATs in the simulator: sequential prediction and birthday probing, or the relay.

A `Side` is a node with its main socket, the sockets birthday probing opens and a PathFinder
using the strategy `strategy_for` picks from both NAT profiles. Messages are one letter plus
a body: S/s STUN request and answer, P probe, R reply. The test plays the coordination
server: fresh STUN samples are exchanged, then both sides punch at the same instant.
"""

from __future__ import annotations

import random

import pytest

from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.node.pathfinder import PathFinder, PathKind, SendProbe
from meshvpn.node.prediction import (
    Allocation, BirthdayPlan, NatProfile, ResampleSchedule, opens_many_mappings, strategy_for,
)
from meshvpn.sim import (
    PORT_RESTRICTED_CONE, SYMMETRIC_RANDOM, SYMMETRIC_SEQUENTIAL, Host, Nat, NatBehavior, Network, Scheduler,
)

STUN = ("198.51.100.53", 3478)
PORT = 41641
EASY = NatProfile()
SEQUENTIAL = NatProfile(endpoint_independent=False, allocation=Allocation.SEQUENTIAL)
RANDOM = NatProfile(endpoint_independent=False, allocation=Allocation.RANDOM)
PROFILES = {id(PORT_RESTRICTED_CONE): EASY, id(SYMMETRIC_SEQUENTIAL): SEQUENTIAL, id(SYMMETRIC_RANDOM): RANDOM}


class Side:
    """One node: a PathFinder for the other side, and the sockets its probes leave from."""

    def __init__(self, net: Network, host: Host, rng: random.Random) -> None:
        self.net, self.host, self.rng = net, host, rng
        self.sock = host.bind(PORT, self._receiver(None))
        self.sample: tuple[str, int] | None = None
        self.finder: PathFinder | None = None
        self.extra = []
        self._timer = None

    def take_sample(self, profile: NatProfile) -> None:
        """STUN from the main socket, or behind an endpoint-dependent NAT from a fresh one:
        there the port it sees is the NAT's latest, and the next mappings come right above."""
        sock = self.sock if profile.endpoint_independent else self.host.bind(0, self._receiver(None))
        sock.sendto(b"S", STUN)

    def meet(self, peer: Side, local: NatProfile, remote: NatProfile, plan: BirthdayPlan) -> None:
        strategy = strategy_for(local, remote, self.rng.randrange, 0.2, birthday=plan)
        self.finder = PathFinder(lambda: self.rng.randbytes(8), strategy=strategy)
        self.finder.relay_ready(True, self.now)
        self.peer_plan = (local, remote, plan)

    def punch(self, peer_sample: tuple[str, int]) -> None:
        self.finder.set_candidates([Candidate(peer_sample, CandidateKind.PUBLIC)], self.now)
        local, remote, plan = self.peer_plan
        if opens_many_mappings(local, remote):
            for _ in range(plan.sockets - len(self.extra)):
                extra = self.host.bind(0, None)
                extra.on_receive = self._receiver(extra)
                self.extra.append(extra)
            for extra in self.extra:
                extra.sendto(b"P" + bytes(8), peer_sample)
        self.finder.punch(self.now)
        self._pump()

    @property
    def now(self) -> float:
        return self.net.scheduler.now

    @property
    def path(self) -> PathKind | None:
        path = self.finder.current_path
        return path.kind if path else None

    def _receiver(self, sock):
        def receive(data: bytes, src) -> None:
            kind, body = data[:1], data[1:]
            if kind == b"s" and sock is None:
                ip, port = body.decode().split(":")
                self.sample = (ip, int(port))
                return
            if kind == b"P":
                if sock is not None and sock is not self.sock:
                    self.sock = sock  # the birthday hit: talk to the peer from this mapping
                self.sock.sendto(b"R" + body, src)
                self.finder.probe_received(src, self.now)
            elif kind == b"R":
                self.finder.probe_reply_received(body, src, self.now)
            self._pump()
        return receive

    def _pump(self) -> None:
        for action in self.finder.next_actions():
            if isinstance(action, SendProbe):
                self.sock.sendto(b"P" + action.tx_id, action.endpoint)
        if self._timer is not None:
            self._timer.cancel()
        when = self.finder.get_timer()
        self._timer = None if when is None else self.net.scheduler.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.finder.handle_timer(self.now)
        self._pump()


def traverse(behavior_a: NatBehavior, behavior_b: NatBehavior, seed: int, background: float = 0.0,
             plan: BirthdayPlan = BirthdayPlan(), seconds: float = 6.0) -> tuple[PathKind, PathKind]:
    """Run one campaign; the hard sides re-sample on `ResampleSchedule` until a path is found."""
    scheduler = Scheduler()
    net = Network(scheduler, random.Random(seed))
    stun = Host(net, STUN[0]).bind(STUN[1], None)
    stun.on_receive = lambda data, src: stun.sendto(b"s%s:%d" % (src[0].encode(), src[1]), src)
    sides = []
    for index, behavior in enumerate((behavior_a, behavior_b)):
        nat = Nat(net, f"203.0.113.{10 * (index + 1)}", behavior)
        nat.set_background_traffic(background)
        sides.append(Side(net, Host(net, f"192.168.{index + 1}.10", nat.lan), random.Random(seed * 7 + index)))
    a, b = sides
    profile_a, profile_b = PROFILES[id(behavior_a)], PROFILES[id(behavior_b)]
    a.meet(b, profile_a, profile_b, plan)
    b.meet(a, profile_b, profile_a, plan)
    schedule = ResampleSchedule(interval=1.5, max_samples=3)
    schedule.start(scheduler.now)
    end = scheduler.now + seconds
    while scheduler.now < end and not a.path == b.path == PathKind.DIRECT:
        if schedule.due(scheduler.now):
            for side, profile in ((a, profile_a), (b, profile_b)):
                side.take_sample(profile)
            scheduler.run_for(0.1)
            schedule.sampled(scheduler.now)
            a.punch(b.sample)
            b.punch(a.sample)
        scheduler.run_until(min(end, schedule.get_timer() or end))
    scheduler.run_until(end)
    return a.path, b.path


@pytest.mark.parametrize("seed", range(1, 6))
def test_sequential_side_with_background_traffic_goes_direct(seed: int) -> None:
    assert traverse(PORT_RESTRICTED_CONE, SYMMETRIC_SEQUENTIAL, seed, background=5.0) == (PathKind.DIRECT,) * 2


def test_both_sides_sequential_go_direct_without_background() -> None:
    assert traverse(SYMMETRIC_SEQUENTIAL, SYMMETRIC_SEQUENTIAL, seed=1) == (PathKind.DIRECT,) * 2


def test_both_sides_sequential_with_moderate_background_mostly_go_direct() -> None:
    runs = [traverse(SYMMETRIC_SEQUENTIAL, SYMMETRIC_SEQUENTIAL, seed, background=1.0) for seed in range(1, 11)]
    assert sum(run == (PathKind.DIRECT,) * 2 for run in runs) >= 7


def test_birthday_probing_meets_a_random_nat_in_most_runs() -> None:
    runs = [traverse(PORT_RESTRICTED_CONE, SYMMETRIC_RANDOM, seed) for seed in range(1, 11)]
    direct = sum(run == (PathKind.DIRECT,) * 2 for run in runs)
    assert direct >= 8, runs
    assert BirthdayPlan().success_probability() > 0.9


def test_birthday_probing_without_the_many_mappings_fails() -> None:
    runs = [traverse(PORT_RESTRICTED_CONE, SYMMETRIC_RANDOM, seed, plan=BirthdayPlan(sockets=0)) for seed in range(1, 4)]
    assert all(run == (PathKind.RELAY,) * 2 for run in runs)


def test_two_random_sides_use_the_relay() -> None:
    assert traverse(SYMMETRIC_RANDOM, SYMMETRIC_RANDOM, seed=1) == (PathKind.RELAY,) * 2
