"""The relay core's batch path: GRO receives and TCP reads in, runs of datagrams out.

Every message of a batch gets the checks a single message gets; the property test at the end
holds a batch to the same outputs, drops and counters as the same messages one by one.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import keys, wire
from meshvpn.config import RelayLimits
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relaytoken import TokenMinter, network_tag
from meshvpn.wire import Endpoint, MessageType
from test_relay_core import (
    A_EP, ALICE, B_EP, BOB, COORD, DATA, LIMITS, M_EP, MALLORY, NOW, RELAY, RELAY_PUBLIC, counting_random, envelope,
    cookie_jar, hello, register,
)

CAROL = bytes([6]) * 32
C_EP = Endpoint("203.0.113.6", 4000)
ROOMY = RelayLimits(packets_per_second=1000, burst=1000, queue_bytes=100_000)


def relay_with(nodes, limits=ROOMY):
    """A relay core with (private key, endpoint or stream) pairs registered, their acks taken and
    the cookies their UDP registrations needed not counted."""
    relay = RelayCore(RELAY, keys.public_key(COORD), limits, counting_random(), NOW)
    for private, link in nodes:
        if isinstance(link, Stream):
            relay.stream_opened(link, keys.public_key(private), NOW)
        register(relay, private, link)
        relay.pull_stream(link) if isinstance(link, Stream) else None
    relay.drops.clear()
    return relay


def sized(to_private, size, fill=0):
    """An envelope for `to_private` of exactly `size` bytes (its inner message a DATA)."""
    inner = DATA + bytes([fill]) * (size - wire.RELAY_PREFIX_LEN - len(DATA))
    return envelope(to_private, inner)


def readdressed(message, from_private):
    return wire.readdress_relay(message, keys.public_key(from_private))


def runs(relay):
    return [(run.dst, run.size, run.datagrams()) for run in relay.runs_to_send()]


def test_a_gro_receive_to_one_destination_leaves_as_one_run():
    relay = relay_with([(ALICE, A_EP), (BOB, B_EP)])
    batch = [sized(BOB, 200, n) for n in range(5)] + [sized(BOB, 120, 9)]
    relay.receive_gro(b"".join(batch), 200, A_EP, NOW)
    assert runs(relay) == [(B_EP, 200, [readdressed(m, ALICE) for m in batch])]
    assert relay.stats.forwarded == 6 and relay.stats.forwarded_bytes == 5 * 200 + 120
    assert relay.drops == {}


def test_runs_split_where_the_destination_or_the_size_changes():
    relay = relay_with([(ALICE, A_EP), (BOB, B_EP), (CAROL, C_EP)])
    to_b, to_c, to_b_big = sized(BOB, 100), sized(CAROL, 100), sized(BOB, 300)
    relay.receive_many([to_b, to_b, to_c, to_c, to_b, to_b_big, to_b_big, to_b], A_EP, NOW)
    b, c, big = readdressed(to_b, ALICE), readdressed(to_c, ALICE), readdressed(to_b_big, ALICE)
    assert runs(relay) == [
        (B_EP, 100, [b, b]),
        (C_EP, 100, [c, c]),
        (B_EP, 100, [b]),
        (B_EP, 300, [big, big, b]),
    ], "a shorter datagram may end a run (GSO allows it); a longer one starts a new run"


def test_runs_split_where_the_source_changes():
    relay = relay_with([(ALICE, A_EP), (BOB, B_EP), (CAROL, C_EP)])
    message = sized(BOB, 100)
    relay.receive_gro(message * 2, 100, A_EP, NOW)
    relay.receive_gro(message * 2, 100, A_EP, NOW)
    relay.receive_gro(message * 3, 100, C_EP, NOW)
    from_a, from_c = readdressed(message, ALICE), readdressed(message, CAROL)
    assert runs(relay) == [(B_EP, 100, [from_a] * 4), (B_EP, 100, [from_c] * 3)]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"\x01\x07\x00\x00" + keys.public_key(BOB) + b"\x01\x07\x00\x00" + bytes(60), "malformed"),
        (b"\x02" + sized(BOB, 100)[1:], "malformed"),
        (sized(CAROL, 100), "destination not registered"),
        (sized(MALLORY, 100), "destination in another network"),
        (wire.header(MessageType.DATA) + bytes(96), "not for a relay"),
    ],
    ids=["relay inside relay", "bad version", "unregistered", "other network", "not a relay message"],
)
def test_a_bad_datagram_in_a_run_is_dropped_and_counted_and_the_rest_forwarded(bad, reason):
    relay = relay_with([(ALICE, A_EP), (BOB, B_EP)])
    minter = TokenMinter(COORD, counting_random())
    token = minter.mint(RELAY_PUBLIC, keys.public_key(MALLORY), NOW, network=network_tag("elsewhere"))[0]
    register(relay, MALLORY, M_EP, token=token)
    relay.drops.clear()
    good = [sized(BOB, 100, n) for n in range(4)]
    relay.receive_gro(b"".join(good[:2] + [bad] + good[2:]), 100, A_EP, NOW)
    assert runs(relay) == [(B_EP, 100, [readdressed(m, ALICE) for m in good])]
    assert relay.drops == {reason: 1} and relay.stats.forwarded == 4


def test_the_bucket_is_spent_per_datagram_within_a_run():
    relay = relay_with([(ALICE, A_EP), (BOB, B_EP)], RelayLimits(packets_per_second=10, burst=5, queue_bytes=1000))
    message = sized(BOB, 100)
    relay.receive_gro(message * 8, 100, A_EP, NOW)
    assert runs(relay) == [(B_EP, 100, [readdressed(message, ALICE)] * 5)]
    assert relay.drops == {"rate limited": 3}
    relay.receive_gro(message * 2, 100, A_EP, NOW + 0.15)
    assert [len(datagrams) for _, _, datagrams in runs(relay)] == [1]
    assert relay.drops == {"rate limited": 4}


def test_an_unregistered_source_forwards_nothing_until_its_hello_in_the_same_batch():
    relay = relay_with([(BOB, B_EP)])
    message = sized(BOB, 100)
    stamped = cookie_jar(relay, A_EP).stamp(hello(ALICE), NOW)  # a new registration proves its address
    relay.receive_many([message, stamped, message, message], A_EP, NOW)
    [ack, *forwarded] = relay.datagrams_to_send()
    assert ack[0] == A_EP and wire.message_type(ack[1]) == MessageType.RELAY_HELLO_ACK
    assert forwarded == [(B_EP, readdressed(message, ALICE))] * 2
    assert relay.drops == {"sender not registered": 1}


def test_a_tcp_node_gets_a_batch_as_frames_within_its_queue_bound():
    stream = Stream("b")
    relay = relay_with([(ALICE, A_EP), (BOB, stream)], RelayLimits(packets_per_second=100, burst=100, queue_bytes=1000))
    message = sized(BOB, 300)
    relay.receive_gro(message * 5, 300, A_EP, NOW)
    assert relay.streams_to_flush() == [stream]
    assert relay.pull_stream(stream) == [readdressed(message, ALICE)] * 3
    assert relay.drops == {"stream queue full": 2} and relay.stats.forwarded == 5


def test_the_frames_of_one_tcp_read_leave_as_one_run():
    stream = Stream("a")
    relay = relay_with([(ALICE, stream), (BOB, B_EP)])
    frames = [sized(BOB, 200, n) for n in range(4)]
    relay.receive_many(frames, stream, NOW)
    assert runs(relay) == [(B_EP, 200, [readdressed(m, ALICE) for m in frames])]


def test_an_empty_datagram_is_malformed():
    relay = relay_with([(ALICE, A_EP)])
    relay.receive_gro(b"", 1, A_EP, NOW)
    assert relay.drops == {"malformed": 1}


MESSAGES = {
    "to bob": sized(BOB, 100),
    "to bob, other inner type": envelope(BOB, wire.header(MessageType.HANDSHAKE_INIT) + bytes(60)),
    "to bob, longer": sized(BOB, 180),
    "to carol": sized(CAROL, 100),
    "to nobody": sized(MALLORY, 100),
    "bad inner": b"\x01\x07\x00\x00" + keys.public_key(BOB) + b"\x01\x07\x00\x00" + bytes(60),
    "short": b"\x01\x07\x00\x00" + bytes(10),
    "hello": hello(ALICE),
    "junk": b"\xff" * 40,
}


def outcome(relay):
    return (relay.datagrams_to_send(), dict(relay.drops), relay.stats, relay.pull_stream(Stream("c")),
            relay.streams_to_close())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(MESSAGES)), max_size=40), st.booleans(), st.integers(1, 30),
       st.sampled_from([A_EP, Stream("a")]))
def test_a_batch_has_the_outcome_of_its_messages_one_by_one(names, alice_registered, burst, alice_link):
    limits = RelayLimits(packets_per_second=10, burst=burst, queue_bytes=700)
    nodes = [(BOB, B_EP), (CAROL, Stream("c"))] + ([(ALICE, alice_link)] if alice_registered else [])
    one_by_one, batched = relay_with(nodes, limits), relay_with(nodes, limits)
    for name in names:
        one_by_one.receive(MESSAGES[name], alice_link, NOW + 1)
    batched.receive_many([MESSAGES[name] for name in names], alice_link, NOW + 1)
    assert outcome(batched) == outcome(one_by_one)
