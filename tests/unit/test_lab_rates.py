"""The lab's rate comparisons: a flow's progress split into stressed and calm stretches."""

from __future__ import annotations

import pytest

from meshvpn.lab.rates import Alternation, alternated, bytes_at


def steady(rates: list[tuple[float, float]], end: float, step: float = 0.01) -> list[tuple[float, int]]:
    """Progress samples of a flow that runs at `rates` (`(from time, bytes a second)`) until `end`."""
    samples, total, now = [(0.0, 0)], 0.0, 0.0
    while now < end - 1e-9:
        rate = [r for since, r in rates if since <= now + 1e-9][-1]
        total += rate * step
        now += step
        samples.append((round(now, 6), round(total)))
    return samples


def test_bytes_at_reads_between_two_samples_and_holds_at_the_ends() -> None:
    progress = [(1.0, 100), (2.0, 300), (4.0, 300)]
    assert bytes_at(progress, 1.5) == pytest.approx(200)
    assert bytes_at(progress, 3.0) == pytest.approx(300)
    assert bytes_at(progress, 0.0) == 100 and bytes_at(progress, 9.0) == 300


def test_a_stress_that_halves_the_flow_reads_as_half() -> None:
    bursts = [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
    rates = [(0.0, 1000.0), (1.0, 500.0), (2.0, 1000.0), (3.0, 500.0), (4.0, 1000.0), (5.0, 500.0), (6.0, 1000.0)]
    split = alternated(steady(rates, 7.0), bursts, settle=0.1)
    assert len(split.stressed) == 3 and len(split.calm) == 2
    assert [seconds for _, seconds in split.stressed] == pytest.approx([0.9] * 3)
    assert split.mbit_per_s(split.calm) == pytest.approx(1000 * 8 / 1e6, rel=0.02)
    assert split.ratio == pytest.approx(0.5, rel=0.03)


def test_the_settle_time_keeps_a_slow_change_out_of_both_kinds_of_stretch() -> None:
    # The flow follows each change of the storm 0.05 s late: within the settle time, so unseen.
    bursts = [(1.0, 2.0), (3.0, 4.0)]
    rates = [(0.0, 1000.0), (1.05, 250.0), (2.05, 1000.0), (3.05, 250.0), (4.05, 1000.0)]
    assert alternated(steady(rates, 5.0), bursts, settle=0.1).ratio == pytest.approx(0.25, rel=0.03)
    assert alternated(steady(rates, 5.0), bursts, settle=0.0).ratio > 0.28


def test_stretches_the_flow_did_not_cover_do_not_count() -> None:
    progress = steady([(0.0, 1000.0)], 3.5)
    split = alternated(progress, [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)], settle=0.1)
    assert len(split.stressed) == 1 and len(split.calm) == 1
    assert split.ratio == pytest.approx(1.0, rel=0.02)
    assert alternated([], [(1.0, 2.0)], settle=0.1).ratio == 0.0


def test_the_comparison_prints_both_rates_and_how_many_stretches() -> None:
    split = Alternation(calm=[(1_000_000, 1.0)], stressed=[(450_000, 0.5), (450_000, 0.5)])
    assert split.ratio == pytest.approx(0.9)
    assert str(split) == "90% (7 Mbit/s in 2 stressed stretches over 8 in 1 calm ones)"
