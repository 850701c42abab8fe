"""The one backoff rule: doubling from `initial`, capped at `maximum`, safe for any count."""

from meshvpn.backoff import doubling


def test_doubles_from_initial_then_stays_at_maximum():
    assert [doubling(0.5, 10.0, n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_huge_counts_do_not_overflow():
    assert doubling(1.0, 30.0, 10**9) == 30.0
