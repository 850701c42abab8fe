"""The coord link's dialing rules on a fake clock: the order of addresses, stickiness, and waits
short enough that a node is back within seconds of a coord answering, jittered all the same."""

import pytest

from meshvpn.node.coorddial import (ANSWER_TIMEOUT, BACKOFF_INITIAL, BACKOFF_MAX, REFUSED_MAX, RESET_REDIAL_AFTER, Dialer,
                                    backoff_delay, remapped, silence_limit)
from meshvpn.wire import Endpoint

A1, A2 = Endpoint("203.0.113.10", 7400), Endpoint("203.0.113.11", 7400)
B = Endpoint("198.51.100.7", 7400)
A6, B6 = Endpoint("2001:db8::a", 7400), Endpoint("2001:db8:0:1::7", 7400)


def test_backoff_doubles_to_a_cap_of_a_few_seconds_with_jitter():
    assert [backoff_delay(n, 0.5) for n in (1, 2, 3, 4, 50)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff_delay(1, 0.0) == 0.25 and backoff_delay(1, 0.999) == pytest.approx(0.7495)
    assert max(backoff_delay(n, 0.999) for n in range(1, 100)) < 1.5 * BACKOFF_MAX <= 3.0
    assert backoff_delay(50, 0.5, REFUSED_MAX) == REFUSED_MAX


def test_the_link_is_dead_after_one_keepalive_and_an_answer_timeout_not_three_intervals():
    assert silence_limit(15.0) == 15.0 + ANSWER_TIMEOUT < 3 * 15.0


def test_a_round_tries_every_address_at_once_and_waits_only_after_the_last():
    dialer = Dialer()
    assert dialer.plan([[A1], [B]]) == [A1, B]
    assert dialer.next_endpoint() == A1
    assert dialer.unreachable(0.5) is None, "the next address is tried at once"
    assert dialer.next_endpoint() == B
    assert dialer.unreachable(0.5) == BACKOFF_INITIAL
    assert dialer.next_endpoint() is None
    dialer.plan([[A1], [B]])
    for _ in range(2):
        dialer.next_endpoint()
        wait = dialer.unreachable(0.5)
    assert wait == 2 * BACKOFF_INITIAL and dialer.failures == 2


def test_nodes_waiting_for_a_dead_coord_come_back_within_the_cap_and_spread_out():
    """Each node's own jitter: after a long outage the next attempt is at most 3 s away, and the
    attempts of many nodes are spread over that time rather than all at one instant."""
    waits = []
    for jitter in [i / 100 for i in range(100)]:
        dialer = Dialer()
        for _ in range(20):
            dialer.plan([[A1]])
            dialer.next_endpoint()
            wait = dialer.unreachable(jitter)
        waits.append(wait)
    assert max(waits) < 3.0 and min(waits) == 1.0
    assert len({round(w, 1) for w in waits}) > 15


def test_it_sticks_to_the_address_that_registered_it_and_resets_the_backoff():
    dialer = Dialer()
    dialer.plan([[A1, A2], [B]])
    dialer.next_endpoint()
    dialer.unreachable(0.5)
    assert dialer.next_endpoint() == A2
    dialer.registered(A2)
    assert dialer.failures == 0 and dialer.preferred == A2
    assert dialer.dropped(0.5) == BACKOFF_INITIAL, "a dropped link waits only the first step"
    assert dialer.plan([[A1, A2], [B]]) == [A2, A1, B]
    assert dialer.plan([[A1], [B]]) == [A1, B], "a preferred address no longer resolved is not tried"


def test_a_connection_the_coord_reset_is_redialled_at_once_and_a_refusal_then_backs_off():
    dialer = Dialer()
    dialer.plan([[A1]])
    dialer.registered(dialer.next_endpoint())
    assert dialer.dropped(0.5, reset=True) == 0.0, "the coord no longer knows the connection: our NAT re-mapped us"
    dialer.plan([[A1]])
    dialer.next_endpoint()
    assert dialer.unreachable(0.5) == BACKOFF_INITIAL, "a coord that is gone refuses it: the backoff starts"


def test_a_reset_right_after_the_registration_backs_off_rather_than_looping():
    dialer = Dialer()
    dialer.plan([[A1]])
    dialer.registered(dialer.next_endpoint())
    assert dialer.dropped(0.5, reset=True, lasted=0.2) == BACKOFF_INITIAL, "a coord that resets every registration"
    dialer.plan([[A1]])
    dialer.registered(dialer.next_endpoint())
    assert dialer.dropped(0.5, reset=True, lasted=RESET_REDIAL_AFTER) == 0.0


def test_the_stun_mapping_moving_under_an_older_connection_means_it_is_dead():
    old, new = Endpoint("192.0.2.1", 41641), Endpoint("192.0.2.1", 30001)
    assert remapped(old, new, registered_at=5.0, asked_at=6.0)
    assert not remapped(old, old, registered_at=5.0, asked_at=6.0), "the mapping held"
    assert not remapped(old, new, registered_at=6.5, asked_at=6.0), "connected after we asked: through the new mapping"
    assert not remapped(old, new, registered_at=None, asked_at=6.0), "no connection to lose"
    assert not remapped(None, new, registered_at=5.0, asked_at=6.0) and not remapped(old, None, 5.0, 6.0)


def test_a_sign_of_the_coord_resets_the_count():
    dialer = Dialer()
    for _ in range(5):
        dialer.plan([[A1]])
        dialer.next_endpoint()
        dialer.unreachable(0.5)
    assert dialer.failures == 5
    dialer.reached()
    assert dialer.failures == 0
    dialer.plan([[A1]])
    dialer.next_endpoint()
    assert dialer.unreachable(0.5) == BACKOFF_INITIAL


def test_refusals_back_off_on_their_own_longer_ladder_and_end_the_round():
    dialer = Dialer()
    dialer.plan([[A1], [B]])
    dialer.next_endpoint()
    assert [dialer.refused(0.5) for _ in range(8)][-1] == REFUSED_MAX
    assert dialer.next_endpoint() is None, "the coord answered: no other instance is tried"
    dialer.registered(A1)
    assert dialer.refusals == 0


def test_a_names_addresses_are_rotated_per_node_so_nodes_spread_over_instances():
    first = {Dialer(spread=spread / 10).plan([[A1, A2]])[0] for spread in range(10)}
    assert first == {A1, A2}
    assert Dialer(spread=0.7).plan([[A1, A2], [A2, B]]) == [A2, A1, B], "each address once"


def test_no_address_resolved_is_a_failed_round():
    dialer = Dialer()
    assert dialer.plan([[], []]) == []
    assert dialer.next_endpoint() is None
    assert dialer.unreachable(0.5) == BACKOFF_INITIAL


def test_a_coord_that_takes_connections_but_not_handshakes_is_pressed_on_the_longer_ladder():
    """Overloaded (or not ours): the other addresses are still tried at once, but thousands of
    nodes must not come back every few seconds."""
    dialer = Dialer()
    waits = []
    for _ in range(8):
        dialer.plan([[A1], [B]])
        dialer.next_endpoint()
        dialer.unanswered()
        assert dialer.unreachable(0.5) is None, "B is tried at once"
        dialer.next_endpoint()
        waits.append(dialer.unreachable(0.5))
    assert waits[:3] == [0.5, 1.0, 2.0] and waits[-1] == REFUSED_MAX
    assert dialer.failures == 0 and dialer.refusals == 8
    dialer.plan([[A1]])
    dialer.next_endpoint()
    assert dialer.unreachable(0.5) == BACKOFF_INITIAL, "a plain failure round is on the short ladder again"


def test_a_round_alternates_the_families_ipv6_first_but_keeps_the_address_that_registered_it_first():
    dialer = Dialer()
    assert dialer.plan([[A1, A6], [B], [B6]]) == [A6, A1, B6, B], "RFC 8305 section 4"
    dialer.registered(B)
    assert dialer.plan([[A1, A6], [B], [B6]]) == [B, A6, A1, B6]
