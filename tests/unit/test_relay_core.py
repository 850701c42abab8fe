"""The relay core, driven message by message with a plain float clock."""

import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn import keys, wire
from meshvpn.config import RelayLimits
from meshvpn.cookie import CookieJar
from meshvpn.relay.core import HELLO_MAX_SKEW, IDLE_TIMEOUT, STREAM_HELLO_TIMEOUT, RelayCore, Stream
from meshvpn.relaytoken import TOKEN_LIFETIME, TokenMinter
from meshvpn.wire import Endpoint, MessageType

from fuzzing import mutated

NOW = 1_700_000_000.0
COORD = bytes([1]) * 32
RELAY = bytes([2]) * 32
RELAY_PUBLIC = keys.public_key(RELAY)
ALICE, BOB, MALLORY = bytes([3]) * 32, bytes([4]) * 32, bytes([5]) * 32
A_EP, B_EP, M_EP = Endpoint("203.0.113.3", 4000), Endpoint("203.0.113.4", 4000), Endpoint("203.0.113.5", 4000)
LIMITS = RelayLimits(packets_per_second=100, burst=10, queue_bytes=1000)
DATA = wire.header(MessageType.DATA) + bytes(12) + b"ciphertext-and-tag"


def counting_random():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "little")


MINTER = TokenMinter(COORD, counting_random())
MALLORY_TOKEN = MINTER.mint(RELAY_PUBLIC, keys.public_key(MALLORY), NOW)[0]


def hello(private, now=NOW, token=None, relay_public=RELAY_PUBLIC, nonce=bytes(24)):
    public = keys.public_key(private)
    if token is None:
        token = MINTER.mint(relay_public, public, now)[0]
    payload = wire.RelayHello(int(now * 1000), token)
    return wire.seal(MessageType.RELAY_HELLO, public, nonce, wire.box_key(private, relay_public), payload)


def envelope(to_private, inner=DATA):
    return wire.encode_relay(keys.public_key(to_private), inner)


@pytest.fixture
def relay():
    return RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)


ASKED = "unproven hello: new or moved registration"
"""The drop of a UDP hello that must prove its address first: every registration starts with one."""


def register(relay, private, link, now=NOW, token=None):
    """Register as a node does: a hello, and when the relay answers with a cookie, the hello
    again stamped with it; what the relay sent last."""
    relay.receive(hello(private, now, token), link, now)
    out = relay.datagrams_to_send()
    if len(out) == 1 and wire.message_type(out[0][1]) == MessageType.RELAY_COOKIE:
        jar = CookieJar(RELAY_PUBLIC)
        assert jar.consume(out[0][1], {bytes(24)}, now)
        relay.receive(jar.stamp(hello(private, now, token), now), link, now)
        out = relay.datagrams_to_send()
    return out


def refusals(relay):
    """The relay's drops, but the cookies it asked registering nodes for (`register` answers them)."""
    return {reason: n for reason, n in relay.drops.items() if reason != ASKED}


def cookie_jar(relay, link, now=NOW):
    """A cookie for `link`, as whoever receives there gets one (by a hello of Mallory's)."""
    jar = CookieJar(RELAY_PUBLIC)
    relay.receive(hello(MALLORY, now, token=MALLORY_TOKEN, nonce=bytes([9]) * 24), link, now)
    [(_, reply)] = relay.datagrams_to_send()
    assert jar.consume(reply, {bytes([9]) * 24}, now)
    relay.drops.clear()
    return jar


def test_hello_registers_the_node_and_is_acknowledged(relay):
    first = hello(ALICE)
    relay.receive(first, A_EP, NOW)
    [(dst, reply)] = relay.datagrams_to_send()
    assert wire.message_type(reply) == MessageType.RELAY_COOKIE and len(reply) < len(first)
    assert relay.registered_link(keys.public_key(ALICE)) is None, "a new registration proves its address first"
    [(dst, ack)] = register(relay, ALICE, A_EP)
    assert dst == A_EP
    sealed = wire.decode_sealed(ack)
    assert sealed.kind == MessageType.RELAY_HELLO_ACK and sealed.sender_public == RELAY_PUBLIC
    opened = wire.open_sealed(sealed, wire.box_key(ALICE, RELAY_PUBLIC))
    assert opened == wire.RelayHelloAck(int(NOW * 1000))
    assert relay.registered_link(keys.public_key(ALICE)) == A_EP


def test_envelopes_are_forwarded_with_the_source_key(relay):
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    relay.receive(envelope(BOB), A_EP, NOW)
    [(dst, out)] = relay.datagrams_to_send()
    assert dst == B_EP
    relayed = wire.decode_relay(out)
    assert relayed.node_key == keys.public_key(ALICE) and bytes(relayed.inner) == DATA
    assert relay.stats.forwarded == 1 and relay.stats.forwarded_bytes == len(envelope(BOB))


def test_unregistered_senders_and_destinations_are_dropped(relay):
    register(relay, ALICE, A_EP)
    relay.receive(envelope(ALICE), M_EP, NOW)
    relay.receive(envelope(BOB), A_EP, NOW)
    assert relay.datagrams_to_send() == []
    assert refusals(relay) == {"sender not registered": 1, "destination not registered": 1}


@pytest.mark.parametrize(
    "message, reason",
    [
        (hello(MALLORY, token=b""), "token is not 80 bytes"),
        (hello(MALLORY, token=MINTER.mint(RELAY_PUBLIC, keys.public_key(ALICE), NOW)[0]), "token names another node"),
        (hello(MALLORY, token=MINTER.mint(RELAY_PUBLIC, keys.public_key(MALLORY), NOW - TOKEN_LIFETIME)[0]),
         "token expired"),
        (hello(MALLORY, token=MALLORY_TOKEN, relay_public=keys.public_key(COORD)), "bad hello"),
        (hello(MALLORY, token=MALLORY_TOKEN, now=NOW - HELLO_MAX_SKEW - 1), "hello timestamp out of range"),
        (hello(MALLORY, token=MALLORY_TOKEN, now=NOW + HELLO_MAX_SKEW + 1), "hello timestamp out of range"),
        (wire.header(MessageType.DATA) + bytes(40), "not for a relay"),
        (b"\x09\x07\x00\x00", "malformed"),
    ],
)
def test_bad_hellos_register_nothing(relay, message, reason):
    jar = cookie_jar(relay, M_EP)
    relay.receive(jar.stamp(message, NOW) if message[1] == MessageType.RELAY_HELLO else message, M_EP, NOW)
    assert relay.datagrams_to_send() == []
    assert relay.registered_link(keys.public_key(MALLORY)) is None
    assert relay.drops == {reason: 1}


def test_a_replayed_hello_cannot_move_the_registration(relay):
    register(relay, ALICE, A_EP)
    captured = CookieJar(RELAY_PUBLIC).stamp(hello(ALICE), NOW)
    relay.receive(captured, M_EP, NOW + 1)
    assert refusals(relay) == {} and relay.drops[ASKED] == 2, "from elsewhere: only a cookie"
    [(dst, reply)] = relay.datagrams_to_send()
    assert dst == M_EP and wire.message_type(reply) == MessageType.RELAY_COOKIE
    relay.receive(cookie_jar(relay, M_EP, NOW + 1).stamp(captured, NOW + 1), M_EP, NOW + 1)
    assert relay.registered_link(keys.public_key(ALICE)) == A_EP
    assert relay.drops == {"replayed hello": 1}, "the mac2 is outside the box: restamped, it is still a replay"


def proven_hello(relay, private, link, now):
    """A hello from `link` that fetches its cookie first, as a node at `link` can."""
    jar = CookieJar(RELAY_PUBLIC)
    first = hello(private, now, nonce=bytes([7]) * 24)
    relay.receive(first, link, now)
    [(dst, reply)] = relay.datagrams_to_send()
    assert dst == link and len(reply) < len(first), "a cookie reply is smaller than the hello"
    assert jar.consume(reply, {bytes([7]) * 24}, now)
    relay.receive(jar.stamp(hello(private, now + 0.001), now), link, now + 0.001)
    return relay.datagrams_to_send()


def test_a_newer_hello_moves_the_node(relay):
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    roamed = Endpoint("203.0.113.3", 5000)
    register(relay, ALICE, roamed, NOW + 1)
    relay.receive(envelope(ALICE), B_EP, NOW + 1)
    assert [dst for dst, _ in relay.datagrams_to_send()] == [roamed]
    relay.receive(envelope(BOB), A_EP, NOW + 1)
    assert relay.drops["sender not registered"] == 1


def test_a_link_is_taken_over_by_another_node_only_with_proof_it_is_there(relay):
    register(relay, ALICE, A_EP)
    relay.receive(hello(BOB, NOW + 1), A_EP, NOW + 1)
    [(dst, reply)] = relay.datagrams_to_send()
    assert wire.message_type(reply) == MessageType.RELAY_COOKIE, "a spoofed source gets only a cookie"
    assert relay.registered_link(keys.public_key(ALICE)) == A_EP
    assert relay.registered_link(keys.public_key(BOB)) is None
    proven_hello(relay, BOB, A_EP, NOW + 2)
    assert relay.registered_link(keys.public_key(ALICE)) is None
    assert relay.registered_link(keys.public_key(BOB)) == A_EP


def test_the_token_bucket_limits_each_sender(relay):
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    for _ in range(LIMITS.burst + 5):
        relay.receive(envelope(BOB), A_EP, NOW)
    assert len(relay.datagrams_to_send()) == LIMITS.burst
    assert relay.drops["rate limited"] == 5
    later = NOW + 3.5 / LIMITS.packets_per_second
    for _ in range(5):
        relay.receive(envelope(BOB), A_EP, later)
    assert len(relay.datagrams_to_send()) == 3
    relay.receive(envelope(ALICE), B_EP, later)
    assert len(relay.datagrams_to_send()) == 1


def test_new_limits_apply_at_once(relay):
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    relay.set_limits(RelayLimits(packets_per_second=1, burst=2, queue_bytes=1000))
    for _ in range(4):
        relay.receive(envelope(BOB), A_EP, NOW)
    assert len(relay.datagrams_to_send()) == 2


def test_registrations_end_when_the_token_expires_or_the_node_goes_quiet(relay):
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    assert relay.get_timer() == NOW + 1
    quiet = NOW + IDLE_TIMEOUT
    relay.receive(envelope(ALICE), B_EP, quiet - 1)
    relay.handle_timer(quiet)
    assert relay.registered_link(keys.public_key(ALICE)) is None
    assert relay.registered_link(keys.public_key(BOB)) == B_EP
    for t in range(int(quiet), int(NOW + TOKEN_LIFETIME) + 2, 10):
        relay.receive(envelope(ALICE), B_EP, t)
        relay.handle_timer(t)
    assert relay.registered_link(keys.public_key(BOB)) is None
    assert relay.drops["registration expired"] == 2


def test_streams_carry_hellos_and_envelopes_within_their_queue_bound(relay):
    stream = Stream(1)
    relay.stream_opened(stream, keys.public_key(ALICE), NOW)
    relay.receive(hello(ALICE), stream, NOW)
    assert relay.datagrams_to_send() == []
    assert relay.streams_to_flush() == [stream]
    [ack] = relay.pull_stream(stream)
    assert wire.decode_sealed(ack).kind == MessageType.RELAY_HELLO_ACK
    register(relay, BOB, B_EP)
    big = envelope(ALICE, DATA + bytes(300))
    for _ in range(5):
        relay.receive(big, B_EP, NOW)
    assert relay.streams_to_flush() == [stream]
    assert relay.streams_to_flush() == []
    frames = relay.pull_stream(stream)
    assert len(frames) == LIMITS.queue_bytes // len(big) == 2
    assert relay.drops["stream queue full"] == 3
    relay.receive(envelope(BOB), stream, NOW)
    assert [dst for dst, _ in relay.datagrams_to_send()] == [B_EP]
    relay.stream_closed(stream)
    assert relay.registered_link(keys.public_key(ALICE)) is None


def test_a_stream_hello_must_come_from_the_channel_key(relay):
    stream = Stream(2)
    relay.stream_opened(stream, keys.public_key(BOB), NOW)
    relay.receive(hello(ALICE), stream, NOW)
    assert relay.streams_to_close() == [stream]
    assert relay.registered_link(keys.public_key(ALICE)) is None
    assert relay.streams_to_close() == []


def test_a_silent_stream_is_closed(relay):
    stream = Stream(3)
    relay.stream_opened(stream, keys.public_key(ALICE), NOW)
    relay.handle_timer(NOW + STREAM_HELLO_TIMEOUT - 0.5)
    assert relay.streams_to_close() == []
    relay.handle_timer(NOW + STREAM_HELLO_TIMEOUT + 1)
    assert relay.streams_to_close() == [stream]


messages = st.builds(lambda kind, body: wire.header(kind) + body, st.sampled_from(MessageType), st.binary(max_size=80))
envelopes = st.builds(envelope, st.sampled_from([ALICE, BOB, MALLORY]), messages)
"""Relay envelopes to a registered node, to the sender itself or to a stranger, around any message type."""


@settings(max_examples=300)
@given(st.binary(max_size=300) | mutated(envelopes), st.sampled_from([A_EP, M_EP]))
def test_garbage_never_raises_and_is_never_forwarded(data, src):
    relay = RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)
    register(relay, ALICE, A_EP)
    register(relay, BOB, B_EP)
    relay.receive(data, src, NOW)
    assert relay.registered_link(keys.public_key(ALICE)) == A_EP
    out = relay.datagrams_to_send()
    event("forwarded" if out else "dropped")
    assert src == A_EP or out == [], "nothing from an unregistered sender goes out"
    for _, datagram in out:
        assert wire.decode_relay(datagram).node_key == keys.public_key(ALICE)
