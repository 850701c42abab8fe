"""A relay stream once the host's network is back, on a fake clock.

The link checks its stream as the coord link checks its connection (`meshvpn.node.tcpresume`):
replaced at once when it waits behind TCP's backed-off retransmission timer, else a hello over it
whose ack must come within the check's wait.
"""

import pytest

from meshvpn import keys
from meshvpn.control import messages as m
from meshvpn.node import events as ev
from meshvpn.node.relay.core import RelaySet
from meshvpn.node.relay.link import SendTcp, Transport
from meshvpn.node.tcpresume import MIN_WAIT
from meshvpn.relaytoken import TokenMinter
from test_relaylink import COORD, NODE, RELAY, WALL, Harness, counting_random, stream_up


def on_stream() -> Harness:
    """A link whose UDP gets no answer, ready over its stream from 0.6 s to 9.75 s."""
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    stream_up(h, 0.6)
    h.run(0.75, 9.75)
    assert h.link.ready and h.link.transport is Transport.TCP
    return h


def test_a_stream_waiting_behind_a_backed_off_retransmission_is_replaced_at_once():
    h = on_stream()
    h.link.network_back(10.0, retransmitting=True)
    stream = h.link.stream
    assert stream.replacing and not stream.connected and stream.due(10.0), "a new race now, no backoff"
    assert h.link.ready, "the link stays home while the new stream races (its acks decide)"
    stream_up(h, 10.1)
    assert h.link.ready and h.link.stream.connected


@pytest.mark.parametrize("retransmitting", [False, None])
def test_otherwise_a_hello_goes_over_the_stream_and_its_ack_keeps_it(retransmitting):
    h = on_stream()
    h.sent.clear()
    h.link.network_back(10.0, retransmitting)
    assert h.link.get_timer() <= 10.0 + MIN_WAIT
    h.step(10.0)  # the check's hello goes over the stream, and the relay acks it
    assert h.sent == [SendTcp], "the check's hello, at once"
    h.step(10.0 + MIN_WAIT)
    assert h.link.stream.connected and not h.link.stream.replacing


def test_a_hello_unanswered_within_the_wait_replaces_the_stream():
    """The relay's side waits behind its own backed-off timer: its ack comes too late."""
    h = on_stream()
    h.link.network_back(10.0, False)
    h.link.next_actions()  # the hello is lost
    h.link.handle_timer(10.0 + MIN_WAIT - 0.01)
    assert h.link.stream.connected
    h.link.handle_timer(10.0 + MIN_WAIT)
    assert h.link.stream.replacing and h.link.stream.due(10.0 + MIN_WAIT)


def test_a_link_on_udp_or_without_a_stream_checks_nothing():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    h.link.network_back(10.0, True)
    assert not h.link.stream.replacing and h.link.stream.resume.get_timer() is None


def racing_relay_set() -> tuple[RelaySet, float]:
    """A relay set whose one relay gets no answer over UDP, and the time its stream was raced."""
    relays = RelaySet(NODE, keys.public_key(NODE), counting_random(), WALL)
    token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL)
    relays.configure([m.RelayInfo("r1", "203.0.113.2", 7500, keys.public_key(RELAY))],
                     [m.RelayToken("r1", token, expires)], 0.0)
    now = 0.0
    while not relays.stream_wishes(now):
        now = round(now + 0.05, 6)
        relays.handle_timer(now)
    return relays, now


def test_the_relay_set_closes_the_replaced_stream_and_races_a_new_one_in_the_same_breath():
    relays, now = racing_relay_set()
    relays.tcp_up("r1", now)
    relays.network_back({"r1": True, "gone": True}, 10.0)
    wishes = relays.stream_wishes(10.0)
    assert [type(w) for w in wishes] == [ev.CloseRelayStream, ev.OpenRelayStream]
    assert relays.stream_wishes(10.0) == []


def test_a_race_still_connecting_when_the_network_is_back_is_raced_again_at_once():
    """Its SYNs wait for TCP's backed-off SYN retransmission; the new race's go at once."""
    relays, _ = racing_relay_set()
    relays.network_back({}, 3.0)
    assert [type(w) for w in relays.stream_wishes(3.0)] == [ev.CloseRelayStream, ev.OpenRelayStream]
