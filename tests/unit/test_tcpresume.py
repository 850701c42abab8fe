"""The check of a TCP connection after the host's network came back, on a fake clock (`meshvpn.node.tcpresume`)."""

import pytest

from meshvpn.node.tcpresume import HOLDOFF, MIN_WAIT, TcpResume, Ping, Reconnect


def fire(resume: TcpResume, now: float) -> list:
    """Run the timer if it is due at `now`; the actions."""
    deadline = resume.get_timer()
    if deadline is not None and deadline <= now:
        resume.handle_timer(now)
    return resume.next_actions()


def test_a_connection_waiting_for_a_backed_off_retransmission_reconnects_at_once():
    resume = TcpResume()
    resume.resumed(10.0, retransmitting=True)
    [action] = resume.next_actions()
    assert isinstance(action, Reconnect) and "retransmission" in action.reason
    assert resume.get_timer() is None


@pytest.mark.parametrize("retransmitting", [False, None])
def test_otherwise_a_ping_goes_at_once_and_its_answer_keeps_the_connection(retransmitting):
    resume = TcpResume()
    resume.resumed(10.0, retransmitting)
    assert resume.next_actions() == [Ping()]
    assert resume.get_timer() == 10.0 + MIN_WAIT
    resume.answered(10.05, sent_at=10.0)
    assert resume.get_timer() is None and fire(resume, 20.0) == []


def test_an_unanswered_ping_reconnects_after_the_wait():
    resume = TcpResume()
    resume.resumed(10.0, False)
    resume.next_actions()
    assert fire(resume, 10.0 + MIN_WAIT - 0.01) == []
    [action] = fire(resume, 10.0 + MIN_WAIT)
    assert isinstance(action, Reconnect) and "no answer" in action.reason
    assert resume.get_timer() is None


def test_a_slow_far_end_is_given_four_of_its_round_trips():
    resume = TcpResume()
    for sent in (0.0, 15.0, 30.0):
        resume.answered(sent + 0.3, sent_at=sent)
    resume.answered(45.1, sent_at=45.0)
    assert resume.answer_wait == pytest.approx(1.2), "the slowest of the recent answers counts"
    resume.resumed(50.0, False)
    resume.next_actions()
    assert fire(resume, 51.0) == []
    resume.answered(51.1, sent_at=50.0)
    assert fire(resume, 60.0) == []


def test_only_the_answer_to_the_checks_own_ping_passes_it():
    """An answer to a ping that went before the network came back may have waited on the coord's
    side of the outage: it says nothing about what we sent since."""
    resume = TcpResume()
    resume.resumed(10.0, False)
    resume.next_actions()
    resume.answered(10.2, sent_at=4.0)
    assert resume.get_timer() == 10.0 + MIN_WAIT
    assert isinstance(fire(resume, 10.0 + MIN_WAIT)[0], Reconnect)


def test_a_flapping_link_reconnects_at_most_once_per_holdoff():
    resume = TcpResume()
    resume.resumed(10.0, True)
    assert len(resume.next_actions()) == 1
    resume.resumed(12.0, True)
    resume.resumed(10.0 + HOLDOFF - 0.1, False)
    assert resume.next_actions() == [] and resume.get_timer() is None
    resume.resumed(10.0 + HOLDOFF, True)
    assert isinstance(resume.next_actions()[0], Reconnect)


def test_an_unanswered_check_counts_for_the_holdoff_too():
    resume = TcpResume()
    resume.resumed(10.0, False)
    resume.next_actions()
    fire(resume, 11.0)
    resume.resumed(12.0, True)
    assert resume.next_actions() == []


def test_anything_heard_after_the_checks_ping_passes_it_and_counts_as_a_round_trip():
    resume = TcpResume()
    resume.heard(9.0)
    assert resume.answer_wait == MIN_WAIT, "heard outside a check: no round trip"
    resume.resumed(10.0, False)
    assert resume.next_actions() == [Ping()] and resume.checking
    resume.heard(10.25)
    assert not resume.checking and fire(resume, 20.0) == []
    assert resume.answer_wait == pytest.approx(1.0)


def test_the_connections_end_ends_the_check():
    resume = TcpResume()
    resume.resumed(10.0, False)
    resume.next_actions()
    resume.forget()
    assert resume.get_timer() is None and fire(resume, 20.0) == []
