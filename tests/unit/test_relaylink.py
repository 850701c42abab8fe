"""The node's relay link against the real relay core, with a plain float clock and no sockets."""

import itertools
import random

import pytest

from meshvpn import keys, wire
from meshvpn.cookie import COOKIE_LIFETIME, CookieChecker
from meshvpn.lab.flood import costly_hello
from meshvpn.config import RelayLimits
from meshvpn.control.messages import RelayInfo
from meshvpn.node.relay.link import ReadyChanged, RelayLink, RelayLinkConfig, SendTcp, SendUdp, Transport
from meshvpn.node.streamdial import StreamTarget
from meshvpn.relay.core import DH_BURST, RelayCore, Stream
from meshvpn.relaytoken import TOKEN_LIFETIME, TokenMinter
from meshvpn.wire import Endpoint, MessageType
from test_relay_core import register

WALL = 1_700_000_000.0
COORD, RELAY, NODE = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
NODE_EP = Endpoint("203.0.113.3", 4000)


def counting_random():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "little")


class Harness:
    """A link and a relay; `step` moves the link's messages to the relay and the acks back."""

    def __init__(self, udp_works=True, tls_port=None, peer=None):
        self.relay = RelayCore(RELAY, keys.public_key(COORD), RelayLimits(), counting_random(), WALL)
        info = RelayInfo("r1", "203.0.113.2", 7500, keys.public_key(RELAY), tls_port, peer)
        self.link = RelayLink(info, NODE, keys.public_key(NODE), counting_random(), WALL, RelayLinkConfig())
        self.link.stream.draw = lambda: 0.5  # the backoff's waits unspread (`test_streamdial` spreads them)
        self.udp_works = udp_works
        self.events = []
        self.sent = []
        self.answers = []

    def token(self, now):
        token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL + now)
        self.link.set_token(token, expires, now)

    def step(self, now):
        """Timers, then the link's messages to the relay and its answers (acks, cookies) back, until
        quiet; each UDP answer arrives 10 ms after the message it answers (a hello sent on a cookie
        leaves when the cookie came)."""
        self.link.handle_timer(now)
        sent_at = now
        while actions := self.link.next_actions():
            for action in actions:
                self.sent.append(type(action))
                if isinstance(action, ReadyChanged):
                    self.events.append((now, action.ready))
                elif isinstance(action, SendUdp) and self.udp_works:
                    self.relay.receive(action.data, NODE_EP, WALL + sent_at)
                    sent_at += 0.01
                    for _, answer in self.relay.datagrams_to_send():
                        self.answers.append(wire.message_type(answer))
                        assert self.link.receive(answer, Transport.UDP, sent_at)
                elif isinstance(action, SendTcp):
                    self.relay.receive(action.data, Stream(1), WALL + now)
                    for ack in self.relay.pull_stream(Stream(1)):
                        assert self.link.receive(ack, Transport.TCP, now + 0.01)

    def run(self, start, end, step=0.25):
        t = start
        while t <= end:
            self.step(t)
            t += step


def test_a_link_is_ready_after_the_first_ack_and_keeps_saying_hello():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    assert h.link.ready and h.link.transport is Transport.UDP
    assert abs(h.link.rtt - 0.01) < 1e-9
    assert h.link.get_timer() == 0.01 + 1.0, "hello_interval after the stamped hello, sent when the cookie came"
    h.run(0.25, 10.0)
    assert h.sent.count(SendUdp) == 2 + 9, "two at once (the first fetches the cookie a new registration needs), then every 1 s"
    assert h.events == [(0.0, True)]


def test_no_token_no_hello():
    h = Harness()
    h.run(0.0, 5.0)
    assert h.sent == [] and not h.link.ready


def stream_up(h, now, target=None):
    """The shell's race won (its channel handshake with the relay done) at `now`."""
    h.link.stream.attempt()
    h.relay.stream_opened(Stream(1), keys.public_key(NODE), WALL + now)
    h.link.tcp_up(now, target)
    h.step(now)


def test_without_udp_a_stream_is_raced_beside_the_hellos_after_stream_after():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.25)
    assert not h.link.stream.wanted and h.link.get_timer() == 0.5
    h.run(0.5, 0.5)
    assert h.link.stream.wanted and h.link.transport is Transport.UDP, "UDP goes on beside the stream"
    assert h.sent.count(SendUdp) == 2
    stream_up(h, 0.6)
    assert h.link.ready and h.events == [(0.6, True)] and h.link.transport is Transport.TCP
    assert h.sent[-2:] == [SendTcp, ReadyChanged], "the first hello on the stream goes out at once"


def test_udp_hellos_go_on_beside_the_stream_then_only_every_udp_retry():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    stream_up(h, 0.6)
    h.run(0.75, 40.0)
    udp = [t for t, kind in zip(itertools.count(), h.sent) if kind is SendUdp]
    assert len(udp) == 3 + 1, "the udp_attempts at the retry interval, then one at udp_retry"


def test_a_udp_ack_after_the_stream_won_moves_the_link_back_to_udp():
    """UDP that works later (the stream won at start): its next UDP hello, `udp_retry` after, moves the link."""
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    stream_up(h, 0.6)
    h.udp_works = True
    h.run(0.75, 30.5)
    assert h.link.transport is Transport.TCP
    h.run(30.75, 31.0)
    assert h.link.transport is Transport.UDP and not h.link.stream.wanted and h.link.ready
    assert h.relay.registered_link(keys.public_key(NODE)) == NODE_EP


def test_a_udp_ack_before_the_stream_is_up_closes_it_and_keeps_udp():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    assert h.link.stream.wanted
    h.link.stream.attempt()
    h.udp_works = True
    h.run(0.75, 1.0)
    assert h.link.ready and h.link.transport is Transport.UDP and not h.link.stream.wanted
    h.link.tcp_up(1.1)  # the race finished after all: the node's relay set closes the unwanted stream
    h.step(1.1)
    assert h.link.transport is Transport.UDP and SendTcp not in h.sent


def test_after_a_network_change_a_link_on_tcp_tries_udp_at_once():
    """No UDP for a while (a link outage): the link moved to a stream, which then went down too.
    The network is back and changed: `hello_now` sends a UDP hello now, not at the next UDP retry."""
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    stream_up(h, 0.6)
    h.run(0.75, 5.0)
    h.link.tcp_down(5.0)
    assert h.link.transport is Transport.TCP and not h.link.ready
    h.udp_works = True
    h.link.hello_now(5.1)
    h.step(5.1)
    assert h.link.ready and h.link.transport is Transport.UDP and h.events[-1] == (5.1, True)


def test_a_network_change_onto_a_network_without_udp_races_a_stream_within_a_second():
    h = Harness()
    h.token(0.0)
    h.run(0.0, 3.0)
    h.udp_works = False
    h.link.hello_now(3.1)
    h.step(3.1)
    assert h.link.ready and not h.link.stream.wanted
    h.run(3.6, 3.6)
    assert not h.link.ready and h.link.stream.wanted, "the check timed out: the stream races at once"


def test_a_lost_tcp_connection_is_retried_with_backoff():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    h.link.tcp_down(2.0)
    assert h.link.stream.retry_at == 2.5
    h.link.tcp_down(2.5)
    assert h.link.stream.retry_at == 3.5
    assert h.link.get_timer() <= 3.5


def test_a_stream_the_relay_resets_after_it_lasted_is_redialled_at_once():
    """The relay no longer knows the stream (it restarted, or our NAT re-mapped us): a new one at
    once, not after the backoff's first step; a relay that resets every fresh stream meets the
    backoff, and a stream that ends without a reset (the relay process exited) waits it."""
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    stream_up(h, 0.6)
    assert h.link.ready and h.link.transport is Transport.TCP
    h.link.tcp_down(5.0, reset=True)
    assert not h.link.ready and h.link.stream.due(5.0) and h.link.get_timer() <= 5.0, "redialled at once"
    stream_up(h, 5.1)
    h.link.tcp_down(5.4, reset=True)
    assert h.link.stream.retry_at == 5.9, "reset 0.3 s after it came up: the backoff"
    stream_up(h, 6.0)
    h.link.tcp_down(6.3, reset=True)
    assert h.link.stream.retry_at == 6.8, "a relay that resets every fresh stream gets no loop"
    h.link.stream.attempt()
    h.link.tcp_down(6.8)
    assert h.link.stream.retry_at == 7.8, "the redial failed: the backoff doubles"
    stream_up(h, 8.0)
    h.link.tcp_down(20.0)
    assert h.link.stream.retry_at == 20.5, "closed, not reset: the relay's restart spreads its nodes' redials"


def test_the_stream_races_plain_tcp_then_tls_and_the_winner_goes_first_next_time():
    h = Harness(udp_works=False, tls_port=443)
    h.token(0.0)
    h.run(0.0, 0.5)
    relay = Endpoint("203.0.113.2", 7500)
    tcp, tls = StreamTarget(relay), StreamTarget(relay._replace(port=443), True)
    assert h.link.stream.targets([relay], 7500) == (tcp, tls)
    stream_up(h, 0.8, tls)  # plain TCP got no answer: the port is blocked
    assert h.link.ready and h.link.transport_name == "tls"
    h.link.tcp_down(9.0)
    assert h.link.stream.retry_at == 9.5 and h.link.stream.targets([relay], 7500) == (tls, tcp)


def test_a_relay_without_a_tls_port_is_only_tried_over_plain_tcp():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 0.5)
    relay = Endpoint("203.0.113.2", 7500)
    assert h.link.stream.targets([relay], 7500) == (StreamTarget(relay),)
    stream_up(h, 0.6, StreamTarget(relay, True))
    assert h.link.transport_name == "tcp"


def test_a_silent_relay_makes_the_link_not_ready_and_race_a_stream_at_once():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    h.udp_works = False
    h.run(0.25, 2.0)
    assert h.events == [(0.0, True)] and not h.link.stream.wanted, "a lost hello on a ready link opens no stream"
    h.run(2.25, 2.25)
    assert h.events == [(0.0, True), (2.25, False)], "down_after (2 s) after the last ack"
    assert h.sent.count(SendUdp) == 2 + 5, "the first fetched a cookie; 1.25 s unanswered, retried every late_after"
    assert h.link.stream.wanted, "its hellos were unanswered for longer than stream_after"


def by_timer(h, until):
    """Step a ready link at each deadline it asks for, up to `until` or until it is not ready (this
    harness opens no stream); the times it was stepped."""
    times = []
    while h.link.ready and (t := h.link.get_timer()) is not None and t <= until:
        h.step(t)
        times.append(t)
    return times


def test_an_idle_link_to_a_dead_relay_is_not_ready_down_after_its_last_ack():
    """Issue 12: relay health per relay, whether or not it carries traffic, left within 2 s."""
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    by_timer(h, 3.0)
    assert h.link.ready and h.link.get_timer() == pytest.approx(3.01), "every second since the stamped hello at 0.01"
    last_ack = 2.01 + 0.01
    h.udp_works = False  # the relay dies
    times = by_timer(h, last_ack + 2.0)
    assert h.events == [(0.0, True), (pytest.approx(last_ack + 2.0), False)]
    hellos = [t for t in times if t < last_ack + 2.0]
    assert hellos == pytest.approx([3.01, 3.26, 3.51, 3.76, 4.01]), "a late hello is retried every late_after"
    assert RelayLinkConfig().down_after <= 2.0


def test_a_lost_hello_on_a_ready_link_costs_one_more_hello_not_the_link():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    by_timer(h, 3.0)
    h.udp_works = False
    h.step(h.link.get_timer())  # this hello is lost
    h.udp_works = True
    retry = h.link.get_timer()
    assert retry == pytest.approx(3.01 + 0.25)
    h.step(retry)
    assert h.link.ready and h.events == [(0.0, True)]
    assert h.link.get_timer() == pytest.approx(retry + 1.0), "answered: back to hello_interval"


def test_an_expired_token_stops_the_hellos():
    h = Harness()
    h.token(0.0)
    h.run(0.0, TOKEN_LIFETIME + 10, step=1.0)
    when, ready = h.events[-1]
    assert not ready and TOKEN_LIFETIME < when <= TOKEN_LIFETIME + 8


# ---- cookies (issue 13): a relay that asks for proof of address gets it at once ---------------

def load(relay, now):
    """Spend the relay's Diffie-Hellman allowance with hellos of fresh keys from spoofed sources."""
    minter = TokenMinter(COORD, counting_random())
    rng = random.Random(13)
    for n in range(int(DH_BURST)):
        relay.receive(costly_hello(minter, keys.public_key(RELAY), rng.randbytes, WALL + now),
                      Endpoint("198.51.100.66", 1024 + n), WALL + now)
    relay.datagrams_to_send()


def mac2_of(data):
    return wire.decode_sealed(data).mac2


def test_under_load_the_cookie_is_taken_and_the_stamped_hello_goes_out_at_once():
    h = Harness()
    load(h.relay, 0.0)
    h.token(0.0)
    h.step(0.0)
    assert h.answers == [MessageType.RELAY_COOKIE, MessageType.RELAY_HELLO_ACK]
    assert h.sent == [SendUdp, SendUdp, ReadyChanged] and h.events == [(0.0, True)]
    assert h.relay.drops["unproven hello: new or moved registration"] == DH_BURST + 1
    assert h.relay.registered_link(keys.public_key(NODE)) == NODE_EP and h.link.transport is Transport.UDP
    assert h.link.cookies == 1


def test_taking_over_an_address_another_node_held_is_proven_with_the_cookie():
    h = Harness()
    other = bytes([9]) * 32
    other_token = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(other), WALL)[0]
    register(h.relay, other, NODE_EP, now=WALL, token=other_token)
    assert h.relay.registered_link(keys.public_key(other)) == NODE_EP
    h.token(0.0)
    h.step(0.0)
    assert h.answers == [MessageType.RELAY_COOKIE, MessageType.RELAY_HELLO_ACK] and h.link.ready
    assert h.relay.registered_link(keys.public_key(NODE)) == NODE_EP


def sent_udp(link):
    return [a.data for a in link.next_actions() if isinstance(a, SendUdp)]


def cookie_for(link, hello, checker, now):
    """The relay's cookie for `hello` given to the link: the hellos the link sent at once."""
    assert link.receive(checker.reply(wire.decode_sealed(hello).nonce, NODE_EP, WALL + now), Transport.UDP, now)
    return sent_udp(link)


@pytest.fixture
def checker():
    """The relay's side of the cookies, as a relay under load holds it."""
    return CookieChecker(keys.public_key(RELAY), counting_random(), WALL)


def test_only_a_cookie_for_a_udp_hello_we_sent_is_taken(checker):
    h = Harness()
    h.token(0.0)
    [first] = sent_udp(h.link)
    nonce = wire.decode_sealed(first).nonce
    assert not h.link.receive(checker.reply(bytes(24), NODE_EP, WALL), Transport.UDP, 0.1), "not our hello"
    assert not h.link.receive(checker.reply(nonce, NODE_EP, WALL), Transport.TCP, 0.1), "cookies come over UDP"
    forged = CookieChecker(keys.public_key(NODE), counting_random(), WALL).reply(nonce, NODE_EP, WALL)
    assert not h.link.receive(forged, Transport.UDP, 0.1), "sealed for another relay's key"
    assert h.link.next_actions() == []
    assert h.link.receive(checker.reply(nonce, NODE_EP, WALL), Transport.UDP, 0.1)
    [again] = sent_udp(h.link)
    assert checker.valid(again, NODE_EP, WALL + 0.1) and mac2_of(first) == bytes(wire.MAC2_LEN)
    assert not h.link.receive(checker.reply(nonce, NODE_EP, WALL), Transport.UDP, 0.2), "each hello is answered once"


def test_a_relay_that_keeps_refusing_the_same_cookie_gets_no_hello_at_once(checker):
    h = Harness()
    h.token(0.0)
    [first] = sent_udp(h.link)
    [stamped] = cookie_for(h.link, first, checker, 0.1)
    assert cookie_for(h.link, stamped, checker, 0.2) == [], "the same cookie again: wait for the next retry"
    h.link.handle_timer(0.6)
    [retry] = sent_udp(h.link)
    assert checker.valid(retry, NODE_EP, WALL + 0.6)


def test_a_cookie_is_used_for_its_lifetime_only(checker):
    h = Harness()
    h.token(0.0)
    [first] = sent_udp(h.link)
    cookie_for(h.link, first, checker, 0.0)
    h.link.handle_timer(COOKIE_LIFETIME - 0.5)
    [young] = sent_udp(h.link)
    assert mac2_of(young) != bytes(wire.MAC2_LEN)
    h.link.handle_timer(COOKIE_LIFETIME)
    [old] = sent_udp(h.link)
    assert mac2_of(old) == bytes(wire.MAC2_LEN)


def test_a_check_of_a_dead_relay_makes_the_link_not_ready_within_the_check_timeout():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    h.udp_works = False
    hellos = h.sent.count(SendUdp)
    h.link.check(1.0)
    h.step(1.0)
    assert h.sent.count(SendUdp) == hellos + 1, "the check says hello at once"
    assert h.link.get_timer() == 1.25, "and again after late_after"
    h.step(1.25)
    assert h.sent.count(SendUdp) == hellos + 2 and h.link.get_timer() == 1.5
    h.step(1.5)
    assert h.events == [(0.0, True), (1.5, False)]


def test_a_peer_relay_is_left_at_once_when_our_mapping_may_have_moved_and_is_back_with_its_first_answer():
    """Behind its NAT a peer relay lets our moved mapping in only after a punch: its pairs go to a
    server relay at once, not after `check_timeout`, and come back as soon as it answers."""
    h = Harness(peer=True)
    h.token(0.0)
    h.step(0.0)
    h.udp_works = False
    hellos = h.sent.count(SendUdp)
    h.link.check(1.0, moved=True)
    h.step(1.0)
    assert h.events == [(0.0, True), (1.0, False)] and not h.link.ready
    assert h.sent.count(SendUdp) == hellos + 1, "the check says hello at once"
    assert h.link.get_timer() == 1.5, "then every retry_interval while not ready"
    h.step(1.5)
    assert h.sent.count(SendUdp) == hellos + 2 and not h.link.stream.wanted, "a peer relay has no stream"
    h.udp_works = True
    h.step(2.0)
    assert h.events == [(0.0, True), (1.0, False), (2.0, True)] and h.link.ready


def test_a_peer_relay_that_answers_at_once_is_left_only_for_its_round_trip():
    h = Harness(peer=True)
    h.token(0.0)
    h.step(0.0)
    h.link.check(1.0, moved=True)
    h.step(1.0)
    assert h.events == [(0.0, True), (1.0, False), (1.0, True)] and h.link.ready
    h.link.hello_now(3.0)
    h.step(3.0)
    assert h.events[-2:] == [(3.0, False), (3.0, True)], "a network change checks it the same way"


def test_a_peer_relay_checked_for_the_peer_moving_relays_waits_for_the_check_timeout():
    """Only the peer's traffic came through another relay: our mapping is where it was, and leaving
    at once would have both ends chase each other between relays."""
    h = Harness(peer=True)
    h.token(0.0)
    h.step(0.0)
    h.udp_works = False
    h.link.check(1.0)
    h.step(1.0)
    h.step(1.25)
    assert h.link.ready and h.link.get_timer() == 1.5
    h.step(1.5)
    assert h.events == [(0.0, True), (1.5, False)]


def test_a_check_answered_in_time_keeps_the_link_and_waits_three_round_trips():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    h.link.rtt = 0.3
    h.link.check(1.0)
    assert h.link.get_timer() == 1.0 + 0.6, "a retry after two round trips"
    h.step(1.0)
    assert h.link.get_timer() == 1.0 + 1.0, "answered: the next hello at hello_interval"
    h.step(2.0)
    assert h.events == [(0.0, True)] and h.link.ready
