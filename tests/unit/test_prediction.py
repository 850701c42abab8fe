"""Prediction strategies: windows, budgets, re-sampling and the choice between them."""

from __future__ import annotations

import pytest

from meshvpn.node.candidates import AllCandidates, Candidate, CandidateKind, PortSpread
from meshvpn.node.prediction import (
    Allocation, BirthdayPlan, BirthdayPorts, NatProfile, PredictedFirst, ResampleSchedule,
    SequentialLimits, SequentialPorts, opens_many_mappings, strategy_for,
)

EASY = NatProfile()
SEQUENTIAL = NatProfile(False, Allocation.SEQUENTIAL)
RANDOM = NatProfile(False, Allocation.RANDOM)
EIM_RANDOM = NatProfile(True, Allocation.RANDOM)
"""A port-range NAT as the mapping test shows it: one mapping per socket, its port drawn at random.
It plays the port-preserving side of birthday probing: it probes, the random-port side opens mappings."""


def test_sequential_ports_walk_up_in_bounded_runs_and_restart_on_a_new_sample() -> None:
    ports = SequentialPorts(SequentialLimits(ports_per_round=4, max_ports=10))
    assert [list(ports(30000, r)) for r in range(4)] == [
        [30001, 30002, 30003, 30004], [30005, 30006, 30007, 30008], [30009, 30010], []]
    assert list(ports(30050, 4)) == [30051, 30052, 30053, 30054]


def test_birthday_ports_spend_the_budget_then_stop() -> None:
    plan = BirthdayPlan(sockets=256, probes_per_second=300, seconds=1.0)
    ports = BirthdayPorts(plan, lambda low, high: low, round_interval=0.2)
    sizes = [len(list(ports(5000, r))) for r in range(7)]
    assert sizes == [60, 60, 60, 60, 60, 0, 0]


@pytest.mark.parametrize("sockets, probes, low, high", [(256, 900, 0.96, 0.98), (0, 900, 0.0, 0.0), (256, 0, 0.0, 0.0)])
def test_birthday_success_probability(sockets, probes, low, high) -> None:
    plan = BirthdayPlan(sockets=sockets, probes_per_second=probes, seconds=1.0)
    assert low <= plan.success_probability() <= high


def test_resample_schedule_is_bounded_and_stops() -> None:
    schedule = ResampleSchedule(interval=1.0, max_samples=2)
    assert schedule.get_timer() is None and not schedule.due(0.0)
    schedule.start(10.0)
    assert schedule.due(10.0)
    schedule.sampled(10.1)
    assert schedule.get_timer() == pytest.approx(11.1) and not schedule.due(11.0)
    schedule.sampled(11.1)
    assert schedule.get_timer() is None
    schedule.start(20.0)
    schedule.stop()
    assert not schedule.due(25.0)


def test_predicted_first_puts_the_run_before_other_candidates_and_the_lan_last() -> None:
    candidates = [Candidate(("10.2.0.11", 41641), CandidateKind.LAN), Candidate(("203.0.113.20", 30000), CandidateKind.PUBLIC)]
    strategy = PredictedFirst(PortSpread(SequentialPorts(SequentialLimits(ports_per_round=2))))
    assert [c.endpoint for c in strategy.targets(candidates, 0)] == [
        ("203.0.113.20", 30001), ("203.0.113.20", 30002), ("203.0.113.20", 30000), ("10.2.0.11", 41641)]


@pytest.mark.parametrize("local, peer, kind, many", [
    (EASY, EASY, AllCandidates, False),
    (RANDOM, EASY, AllCandidates, True),
    (EASY, SEQUENTIAL, PredictedFirst, False),
    (SEQUENTIAL, SEQUENTIAL, PredictedFirst, False),
    (EASY, RANDOM, PortSpread, False),
    (RANDOM, RANDOM, AllCandidates, False),
    (SEQUENTIAL, RANDOM, PredictedFirst, False),
    (SEQUENTIAL, EASY, PredictedFirst, False),
    (EIM_RANDOM, RANDOM, PortSpread, False),
    (RANDOM, EIM_RANDOM, AllCandidates, True),
])
def test_strategy_for(local, peer, kind, many) -> None:
    strategy = strategy_for(local, peer, lambda low, high: low, 0.2)
    assert type(strategy) is kind
    assert opens_many_mappings(local, peer) is many
