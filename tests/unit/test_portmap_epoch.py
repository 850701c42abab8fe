"""The gateway-restart rules of RFC 6886 §3.6 (NAT-PMP) and RFC 6887 §8.5 (PCP), at their edges."""

from __future__ import annotations

from hypothesis import given, strategies as st

from meshvpn.node.portmap.epoch import EpochWatch


def after(symmetric: bool, epoch: int, now: float) -> bool:
    """A watch that saw epoch 1000 at time 0: does `epoch` at `now` say restarted?"""
    watch = EpochWatch(symmetric)
    assert not watch.restarted(1000, 0.0)  # the first answer has nothing to compare with
    return watch.restarted(epoch, now)


def test_an_epoch_that_went_back_is_a_restart_under_both_rules() -> None:
    assert after(False, 3, 5.0) and after(True, 3, 5.0)


def test_a_second_back_at_once_is_rounding_not_a_restart() -> None:
    assert not after(False, 999, 0.0) and not after(True, 999, 0.0)


def test_natpmp_wants_seven_eighths_of_our_time_less_two_seconds() -> None:
    assert after(False, 1085, 100.0)  # 85 < 87.5 - 2
    assert not after(False, 1086, 100.0)
    assert not after(False, 5000, 100.0)  # NAT-PMP does not mind an epoch running ahead


def test_pcp_allows_a_sixteenth_and_two_seconds_either_way() -> None:
    assert after(True, 1091, 100.0)  # 91 + 2 < 100 - 6.25
    assert not after(True, 1092, 100.0)
    assert not after(True, 1108, 100.0)
    assert after(True, 1109, 100.0)  # 100 + 2 < 109 - 6.8: the server's clock cannot be trusted


def test_each_answer_is_compared_with_the_one_before() -> None:
    watch = EpochWatch(symmetric=True)
    for second in range(0, 4000, 300):
        assert not watch.restarted(7 + second, float(second))
    assert watch.restarted(2, 4000.0)
    assert not watch.restarted(302, 4300.0)  # the restarted gateway is the new baseline


@given(st.lists(st.floats(0.0, 100_000.0), min_size=1, max_size=20), st.integers(0, 1 << 31),
       st.booleans())
def test_an_epoch_that_keeps_our_time_is_never_a_restart(times: list[float], start: int, symmetric: bool) -> None:
    watch = EpochWatch(symmetric)
    for now in sorted(times):
        assert not watch.restarted(start + int(now), now)
