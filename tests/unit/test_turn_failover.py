"""The way to a TURN server (meshvpn.node.turn.server through TurnLinks): a stream raced beside UDP
after `STREAM_AFTER`, back to UDP when UDP answers, and the other addresses raced at once when the
settled one goes dark (a check, or a request, unanswered), with backoff.

The server is scripted as in test_turnlink.py; the clock is a plain float.
"""

import itertools

from meshvpn.control import messages as m
from meshvpn.node.events import TurnStream
from meshvpn.node.eyeballs import STAGGER
from meshvpn.node.streamdial import StreamTarget
from meshvpn.node.turn.core import TurnLinks
from meshvpn.node.turn.server import CHECK_TIMEOUT, SILENT_BACKOFF, STREAM_AFTER
from meshvpn.sim.turnserver import turn_answer
from meshvpn.stun_codec import StunMethod, decode
from meshvpn.turn import AllocationLost, AllocationReady

from test_turnlink import OURS, SERVER, answer, linked, on_stream, registered, server_replies, settle, turn_server

SERVER6 = SERVER._replace(host="2001:db8:3::30")


def methods(datagrams) -> list:
    return [decode(data).method for _, data in datagrams]


def answer_over_udp(link: TurnLinks, datagrams, src, now: float) -> None:
    for _, data in datagrams:
        assert link.receive(turn_answer(data, OURS)[1], src, now)


# ---- the race: UDP first, a stream beside it, back to UDP


def test_udp_answering_before_the_stream_connects_keeps_the_allocation_on_udp():
    counter = itertools.count(1)
    link = TurnLinks(lambda n: next(counter).to_bytes(n, "big"))
    link.coord_message(registered(turn_server()), 0.0)
    link.datagrams_to_send()
    link.handle_timer(STREAM_AFTER)
    assert link.stream_wishes(STREAM_AFTER) == [TurnStream("turn-1", (StreamTarget(SERVER),))]
    answer_over_udp(link, link.datagrams_to_send(), SERVER, 0.6)  # the retransmission got through
    assert link.stream_wishes(0.6) == [TurnStream("turn-1")], "the stream is closed"
    assert link.status()[0]["transport"] == "udp"
    link.stream_up("turn-1", 0.7)  # a late connection is ignored
    assert link.stream_frames() == []
    assert answer(link, 0.7) == [StunMethod.ALLOCATE] and link.relayed == (m.Endpoint(*OURS),)
    assert link.status()[0]["transport"] == "udp"


def test_a_stream_allocation_moves_back_to_udp_when_udp_answers():
    link = on_stream()
    assert link.relayed == (m.Endpoint(*OURS),) and link.status()[0]["transport"] == "tcp"
    probes = settle(link, 60.0)  # the UDP client goes on: its retransmissions, then a new Allocate
    assert methods(probes) and set(methods(probes)) == {StunMethod.ALLOCATE}
    assert link.stream_wishes(60.0) == []
    link.events()
    answer_over_udp(link, probes[-1:], SERVER, 60.0)  # UDP works again
    assert link.stream_wishes(60.0) == [TurnStream("turn-1")] and link.status()[0]["transport"] == "udp"
    assert answer(link, 60.0) == [StunMethod.ALLOCATE]
    assert link.status()[0]["ready"] and [type(e) for _, e in link.events()] == [AllocationReady]


# ---- silence at the settled address


def two_families_ready() -> TurnLinks:
    """Settled on the IPv6 address over UDP, ready."""
    counter = itertools.count(1)
    link = TurnLinks(lambda n: next(counter).to_bytes(n, "big"), addresses_of={SERVER.host: (SERVER.host, SERVER6.host)})
    link.coord_message(registered(turn_server()), 0.0)
    answer_over_udp(link, link.datagrams_to_send(), SERVER6, 0.0)
    answer_over_udp(link, link.datagrams_to_send(), SERVER6, 0.0)
    assert link.status()[0]["ready"] and link.status()[0]["address"] == f"[{SERVER6.host}]:3478"
    link.events()
    return link


def test_an_unanswered_check_races_the_other_address_at_once_then_the_stream():
    link = two_families_ready()
    link.check(10.0)
    assert methods(link.datagrams_to_send()) == [StunMethod.REFRESH]
    assert link.get_timer() <= 10.0 + CHECK_TIMEOUT
    settle(link, 10.0 + CHECK_TIMEOUT)
    link.handle_timer(10.0 + CHECK_TIMEOUT)
    [(_, lost)] = link.events()
    assert isinstance(lost, AllocationLost) and "stopped answering" in lost.reason
    assert not link.status()[0]["ready"] and link.relayed == ()
    sent = link.datagrams_to_send()
    assert sent[0][0] == SERVER and methods(sent) == [StunMethod.ALLOCATE], "the other family first, at once"
    now = 10.0 + CHECK_TIMEOUT
    link.handle_timer(now + STAGGER)
    assert [dst for dst, _ in link.datagrams_to_send()] == [SERVER6], "then the address that went dark"
    link.handle_timer(now + STREAM_AFTER)
    assert link.stream_wishes(now + STREAM_AFTER) == [
        TurnStream("turn-1", (StreamTarget(SERVER), StreamTarget(SERVER6)))], "and a stream, as at start"


def test_a_check_answered_in_time_keeps_the_allocation():
    link = linked()
    link.events()
    link.check(10.0)
    answer(link, 10.2)
    settle(link, 12.0)
    link.handle_timer(12.0)
    assert link.events() == [] and link.status()[0]["ready"]


def test_a_request_unanswered_on_the_ready_allocation_makes_it_anew_at_once():
    link = linked()
    link.events()
    now = link.get_timer()
    assert now == 241.0, "the permission refresh"
    while link.status()[0]["ready"]:  # it goes unanswered through its retransmissions
        link.handle_timer(now)
        sent = link.datagrams_to_send()
        now = link.get_timer()
    [(_, lost)] = link.events()
    assert isinstance(lost, AllocationLost) and "a request went unanswered" in lost.reason
    assert methods(sent)[-1] == StunMethod.ALLOCATE, "allocating anew at once"
    assert now == link.get_timer() and now < 241.0 + 60 and link.stream_wishes(now) == []
    answer_over_udp(link, sent[-1:], SERVER, now)
    assert answer(link, now) == [StunMethod.ALLOCATE]
    assert link.status()[0]["ready"], "the server answers again: allocated anew"


def test_a_server_that_flaps_is_raced_again_after_a_doubling_backoff():
    link = two_families_ready()
    now = 10.0
    for wait in (0.0, SILENT_BACKOFF[0], 2 * SILENT_BACKOFF[0]):
        link.check(now)
        link.datagrams_to_send()
        now += CHECK_TIMEOUT
        link.handle_timer(now)
        assert [type(e) for _, e in link.events()] == [AllocationLost]
        if wait:
            assert link.datagrams_to_send() == [] and link.get_timer() == now + wait
            now += wait
            link.handle_timer(now)
        sent = link.datagrams_to_send()
        assert methods(sent) == [StunMethod.ALLOCATE], f"allocating again {wait} s after the silence"
        answer_over_udp(link, sent, sent[0][0], now)
        answer_over_udp(link, link.datagrams_to_send(), sent[0][0], now)
        assert link.status()[0]["ready"]
        link.events()
        now += 1.0
    link.check(now + SILENT_BACKOFF[1])  # an allocation that lasted: the next silence is met at once
    link.datagrams_to_send()
    link.handle_timer(now + SILENT_BACKOFF[1] + CHECK_TIMEOUT)
    assert methods(link.datagrams_to_send()) == [StunMethod.ALLOCATE]


def test_a_stream_that_goes_dark_is_closed_and_udp_tried_first_again():
    link = on_stream()
    link.events()
    link.check(5.0)
    assert [decode(data).method for _, data in link.stream_frames()] == [StunMethod.REFRESH], "on the stream"
    now = 5.0 + CHECK_TIMEOUT
    settle(link, now)
    link.handle_timer(now)
    assert link.stream_wishes(now) == [TurnStream("turn-1")], "the dark stream is closed"
    assert [type(e) for _, e in link.events()] == [AllocationLost]
    assert methods(link.datagrams_to_send()) == [StunMethod.ALLOCATE], "UDP first, at once"
    link.handle_timer(now + STREAM_AFTER)
    assert link.stream_wishes(now + STREAM_AFTER) == [TurnStream("turn-1", (StreamTarget(SERVER),))]
    link.stream_up("turn-1", now + 0.6)
    for _ in range(2):
        link.receive_stream("turn-1", server_replies([data for _, data in link.stream_frames()]), now + 0.7)
    assert link.status()[0]["ready"] and link.status()[0]["transport"] == "tcp"
