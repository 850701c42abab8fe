"""The node's relay link against the real relay core, with a plain float clock and no sockets."""

import itertools

from meshvpn import keys
from meshvpn.config import RelayLimits
from meshvpn.control.messages import RelayInfo
from meshvpn.node.relay.link import ReadyChanged, RelayLink, RelayLinkConfig, SendTcp, SendUdp, Transport
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relaytoken import TOKEN_LIFETIME, TokenMinter
from meshvpn.wire import Endpoint

WALL = 1_700_000_000.0
COORD, RELAY, NODE = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
NODE_EP = Endpoint("203.0.113.3", 4000)


def counting_random():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "little")


class Harness:
    """A link and a relay; `step` moves the link's messages to the relay and the acks back."""

    def __init__(self, udp_works=True):
        self.relay = RelayCore(RELAY, keys.public_key(COORD), RelayLimits(), counting_random(), WALL)
        info = RelayInfo("r1", "203.0.113.2", 7500, keys.public_key(RELAY))
        self.link = RelayLink(info, NODE, keys.public_key(NODE), counting_random(), WALL, RelayLinkConfig())
        self.udp_works = udp_works
        self.events = []
        self.sent = []

    def token(self, now):
        token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL + now)
        self.link.set_token(token, expires, now)

    def step(self, now):
        self.link.handle_timer(now)
        for action in self.link.next_actions():
            self.sent.append(type(action))
            if isinstance(action, ReadyChanged):
                self.events.append((now, action.ready))
            elif isinstance(action, SendUdp) and self.udp_works:
                self.relay.receive(action.data, NODE_EP, WALL + now)
                for _, ack in self.relay.datagrams_to_send():
                    assert self.link.receive(ack, Transport.UDP, now + 0.01)
            elif isinstance(action, SendTcp):
                self.relay.receive(action.data, Stream(1), WALL + now)
                for ack in self.relay.pull_stream(Stream(1)):
                    assert self.link.receive(ack, Transport.TCP, now + 0.01)
        for action in self.link.next_actions():
            if isinstance(action, ReadyChanged):
                self.events.append((now, action.ready))

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
    assert h.link.get_timer() == 2.0
    h.run(0.25, 10.0)
    assert h.sent.count(SendUdp) == 6
    assert h.events == [(0.0, True)]


def test_no_token_no_hello():
    h = Harness()
    h.run(0.0, 5.0)
    assert h.sent == [] and not h.link.ready


def test_without_udp_the_link_falls_back_to_tcp_quickly():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 1.5)
    assert h.link.want_tcp and h.link.transport is Transport.TCP and not h.link.ready
    h.relay.stream_opened(Stream(1), keys.public_key(NODE), WALL + 1.6)
    h.link.tcp_up(1.6)
    h.step(1.6)
    assert h.link.ready and h.events == [(1.6, True)]


def test_a_working_udp_path_takes_over_from_tcp():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 1.5)
    h.relay.stream_opened(Stream(1), keys.public_key(NODE), WALL + 1.6)
    h.link.tcp_up(1.6)
    h.udp_works = True
    h.run(1.75, 40.0)
    assert h.link.transport is Transport.UDP and not h.link.want_tcp
    assert h.relay.registered_link(keys.public_key(NODE)) == NODE_EP


def test_a_lost_tcp_connection_is_retried_with_backoff():
    h = Harness(udp_works=False)
    h.token(0.0)
    h.run(0.0, 1.5)
    h.link.tcp_down(2.0)
    assert h.link.tcp_retry_at == 2.5
    h.link.tcp_down(2.5)
    assert h.link.tcp_retry_at == 3.5
    assert h.link.get_timer() <= 3.5


def test_a_silent_relay_makes_the_link_not_ready_and_try_tcp():
    h = Harness()
    h.token(0.0)
    h.step(0.0)
    h.udp_works = False
    h.run(0.25, 7.5)
    assert h.events == [(0.0, True), (7.25, False)]
    assert h.sent.count(SendUdp) == 4 and not h.link.want_tcp
    h.run(7.75, 8.5)
    assert h.link.want_tcp and h.link.get_timer() <= 8.5


def test_an_expired_token_stops_the_hellos():
    h = Harness()
    h.token(0.0)
    h.run(0.0, TOKEN_LIFETIME + 10, step=1.0)
    when, ready = h.events[-1]
    assert not ready and TOKEN_LIFETIME < when <= TOKEN_LIFETIME + 8
