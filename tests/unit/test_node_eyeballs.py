"""Happy Eyeballs for the coord link on a fake clock: the families alternate IPv6 first, an
attempt starts every 250 ms while none has finished, at once when one failed, and none after one
won (RFC 8305 sections 4 and 5)."""

from hypothesis import given, strategies as st

from meshvpn.node.eyeballs import STAGGER, Race, interleave
from meshvpn.wire import Endpoint

V4 = [Endpoint(f"203.0.113.{n}", 7400) for n in range(1, 4)]
V6 = [Endpoint(f"2001:db8::{n}", 7400) for n in range(1, 4)]


def test_the_families_alternate_ipv6_first_each_in_its_own_order():
    assert interleave([V4[0], V4[1], V6[0], V6[1], V6[2]]) == [V6[0], V4[0], V6[1], V4[1], V6[2]]
    assert interleave(V4) == V4 and interleave(V6) == V6 and interleave([]) == []


@given(st.lists(st.sampled_from(V4 + V6), unique=True))
def test_interleaving_keeps_every_address_once_and_each_familys_order(order):
    mixed = interleave(order)
    assert sorted(mixed) == sorted(order)
    assert [e for e in mixed if ":" in e.host] == [e for e in order if ":" in e.host]
    assert [e for e in mixed if ":" not in e.host] == [e for e in order if ":" not in e.host]
    if any(":" in e.host for e in order):
        assert ":" in mixed[0].host


def test_attempts_start_a_stagger_apart_while_none_finished():
    race = Race()
    assert STAGGER == 0.25 and race.start_now(10.0) and race.get_timer() is None
    race.started(10.0)
    assert not race.start_now(10.2) and race.get_timer() == 10.25
    assert race.start_now(10.25)
    race.started(10.25)
    assert race.get_timer() == 10.5 and race.running == 2


def test_a_failed_attempt_has_the_next_one_start_at_once():
    race = Race()
    race.started(0.0)
    race.started(0.25)
    race.failed(0.3)
    assert race.start_now(0.3) and race.running == 1
    race.failed(0.4)
    assert race.start_now(0.4) and race.get_timer() is None, "none running: only a new start changes anything"


def test_nothing_starts_after_a_win():
    race = Race()
    race.started(0.0)
    race.won()
    assert not race.start_now(5.0) and race.get_timer() is None
