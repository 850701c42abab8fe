"""RFC 6479 replay window: accept once, tolerate reordering, reject the stale."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from meshvpn.constants import REJECT_AFTER_MESSAGES
from meshvpn.node.datapath import fastpath
from meshvpn.replay import WINDOW_SIZE, ReplayWindow


def test_window_is_at_least_2048():
    assert WINDOW_SIZE >= 2048


def test_in_order_accepted_once():
    window = ReplayWindow()
    assert all(window.check_and_update(n) for n in range(300))
    assert not any(window.check_and_update(n) for n in range(300))


def test_reordered_within_window_accepted_once():
    window = ReplayWindow()
    assert window.check_and_update(10_000)
    assert window.check_and_update(10_000 - WINDOW_SIZE + 1)
    assert window.check_and_update(4000)
    assert not window.check_and_update(4000)
    assert not window.check_and_update(10_000 - WINDOW_SIZE + 1)


def test_far_old_rejected():
    window = ReplayWindow()
    assert window.check_and_update(WINDOW_SIZE + 10)
    assert not window.check(10)
    assert not window.check_and_update(10)
    assert window.check_and_update(11)


def test_big_jump_forgets_the_past():
    window = ReplayWindow()
    assert window.check_and_update(3)
    assert window.check_and_update(10**9)
    assert window.check_and_update(10**9 - 3)
    assert not window.check_and_update(3)


def test_jump_clears_stale_bits_from_reused_ring_blocks():
    window = ReplayWindow()
    assert window.check_and_update(64)
    # 64 + 8192 lands in the same ring block as 64; the block must be cleared.
    assert window.check_and_update(64 + 8192 + 1)
    assert window.check_and_update(64 + 8192)


def test_check_does_not_record():
    window = ReplayWindow()
    assert window.check(7) and window.check(7)
    assert window.check_and_update(7)
    assert not window.check(7)


def test_counters_outside_the_nonce_space_are_rejected():
    window = ReplayWindow()
    assert not window.check_and_update(REJECT_AFTER_MESSAGES)
    assert not window.check(-1)
    assert window.check_and_update(REJECT_AFTER_MESSAGES - 1)


class ModelWindow:
    """Obvious reference: a set of everything accepted, and the window rule."""

    def __init__(self):
        self.seen = set()
        self.greatest = -1

    def check_and_update(self, counter):
        if counter in self.seen or self.greatest - counter >= WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.greatest = max(self.greatest, counter)
        return True


@settings(max_examples=300)
@given(st.lists(st.integers(0, 40_000), max_size=200))
def test_matches_the_reference_model(counters):
    window, model = ReplayWindow(), ModelWindow()
    for counter in counters:
        assert window.check(counter) == (counter not in model.seen and model.greatest - counter < WINDOW_SIZE)
        assert window.check_and_update(counter) == model.check_and_update(counter)


def test_matches_the_model_on_a_long_reordered_stream():
    rng = random.Random(6479)
    counters = list(range(30_000))
    for start in range(0, len(counters), 3000):
        chunk = counters[start : start + 3000]
        rng.shuffle(chunk)
        counters[start : start + 3000] = chunk
    counters += rng.sample(range(30_000), 2000)
    window, model = ReplayWindow(), ModelWindow()
    assert [window.check_and_update(c) for c in counters] == [model.check_and_update(c) for c in counters]


@pytest.mark.needs(fastpath._built is None, "meshvpn._fastpath was not built (make setup builds it)")
@settings(max_examples=300, deadline=None)
@given(start=st.sampled_from([-1, 0, 70, 9000, REJECT_AFTER_MESSAGES - 3]),
       steps=st.lists(st.tuples(st.booleans(), st.integers(-9000, 9000)), max_size=60))
def test_native_window_answers_as_the_replay_window(start, steps):
    """The NativeWindow the native loop shares is a copy that then decides exactly as ReplayWindow does."""
    window = ReplayWindow()
    if start >= 0:
        window.check_and_update(start)
    native = fastpath._built.NativeWindow(window)
    base = max(start, 0)
    for update, delta in steps:
        counter = base + delta
        if update:
            assert native.check_and_update(counter) == window.check_and_update(counter)
        else:
            assert native.check(counter) == window.check(counter)
        assert native.greatest == window.greatest
    assert native._blocks == window._blocks
    assert not native.check(-1) and not native.check(-2**70) and not native.check(2**64)
    assert not native.check_and_update(2**70) and not native.check_and_update(-2**70)
