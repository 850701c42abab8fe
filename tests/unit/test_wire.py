"""Wire format: header dispatch, every message's layout, and garbage handling."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings

from meshvpn import wire
from meshvpn.errors import LocalProtocolError
from meshvpn.wire import Endpoint, MessageType, WireError

ALICE_PRIVATE = bytes(range(32))
BOB_PRIVATE = bytes(range(1, 33))
ALICE_PUBLIC = bindings.crypto_scalarmult_base(ALICE_PRIVATE)
BOB_PUBLIC = bindings.crypto_scalarmult_base(BOB_PRIVATE)
NONCE = bytes(range(24))

endpoints = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)
).flatmap(lambda host: st.integers(0, 0xFFFF).map(lambda port: Endpoint(host, port)))


def test_message_type_reads_a_valid_header():
    assert wire.message_type(b"\x01\x03\x00\x00rest") == MessageType.DATA


@pytest.mark.parametrize(
    "buf, reason",
    [
        (b"\x01\x03\x00", "too short"),
        (b"\x02\x03\x00\x00", "version"),
        (b"\x01\x03\x01\x00", "reserved"),
        (b"\x01\x03\x00\x01", "reserved"),
        (b"\x01\x00\x00\x00", "unknown message type 0"),
        (b"\x01\x0c\x00\x00", "unknown message type 12"),
    ],
)
def test_message_type_rejects_bad_headers(buf, reason):
    with pytest.raises(WireError, match=reason):
        wire.message_type(buf)


def test_endpoint_encoding_is_compact_and_exact():
    assert wire.encode_endpoint(Endpoint("192.0.2.7", 41641)) == b"\x04\xc0\x00\x02\x07\xa2\xa9"
    encoded = wire.encode_endpoint(Endpoint("2001:db8::1", 1))
    assert len(encoded) == 19 and encoded[0] == 6 and encoded[-2:] == b"\x00\x01"


@settings(max_examples=200)
@given(endpoints)
def test_endpoint_round_trip(endpoint):
    encoded = wire.encode_endpoint(endpoint)
    assert wire.decode_endpoint(b"xx" + encoded, 2) == (endpoint, 2 + len(encoded))


@pytest.mark.parametrize("endpoint", [Endpoint("example.org", 1), Endpoint("192.0.2.1", 70000)])
def test_encoding_a_bad_endpoint_is_a_local_error(endpoint):
    with pytest.raises(LocalProtocolError):
        wire.encode_endpoint(endpoint)


def test_initiation_layout_and_round_trip():
    key = wire.mac1_key(BOB_PUBLIC)
    message = wire.HandshakeInitiation(0x01020304, b"e" * 32, b"s" * 48, b"t" * 28)
    encoded = message.encode(key)
    assert len(encoded) == wire.INITIATION_LEN == 132
    assert encoded[:8] == b"\x01\x01\x00\x00\x04\x03\x02\x01"
    assert wire.HandshakeInitiation.decode(encoded, key) == message


def test_response_layout_and_round_trip():
    key = wire.mac1_key(ALICE_PUBLIC)
    message = wire.HandshakeResponse(5, 6, b"e" * 32, b"n" * 16)
    encoded = message.encode(key)
    assert len(encoded) == wire.RESPONSE_LEN == 76
    assert encoded[:12] == b"\x01\x02\x00\x00\x05\x00\x00\x00\x06\x00\x00\x00"
    assert wire.HandshakeResponse.decode(encoded, key) == message


def test_mac1_keyed_for_another_receiver_is_rejected():
    encoded = wire.HandshakeResponse(5, 6, b"e" * 32, b"n" * 16).encode(wire.mac1_key(ALICE_PUBLIC))
    with pytest.raises(WireError, match="bad mac1"):
        wire.HandshakeResponse.decode(encoded, wire.mac1_key(BOB_PUBLIC))


def test_any_bit_flip_in_an_initiation_body_breaks_mac1():
    key = wire.mac1_key(BOB_PUBLIC)
    encoded = wire.HandshakeInitiation(1, b"e" * 32, b"s" * 48, b"t" * 28).encode(key)
    for bit in range(32, (len(encoded) - 16) * 8):
        flipped = bytearray(encoded)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireError):
            wire.HandshakeInitiation.decode(flipped, key)


def test_transport_receiver_index():
    message = wire.TRANSPORT_HEADER.pack(1, MessageType.KEEPALIVE, 0, 77, 5) + bytes(16)
    assert wire.transport_receiver_index(message) == 77
    with pytest.raises(WireError, match="too short"):
        wire.transport_receiver_index(message[:-1])
    with pytest.raises(WireError, match="not a transport"):
        wire.transport_receiver_index(b"\x01\x01\x00\x00" + message[4:])


def test_relay_envelope_round_trip_without_copying_the_inner_message():
    inner = wire.TRANSPORT_HEADER.pack(1, MessageType.DATA, 0, 1, 2) + b"c" * 40
    envelope = wire.encode_relay(BOB_PUBLIC, inner)
    relayed = wire.decode_relay(envelope)
    assert relayed.node_key == BOB_PUBLIC and isinstance(relayed.inner, memoryview)
    assert relayed.inner == inner
    forwarded = wire.readdress_relay(envelope, ALICE_PUBLIC)
    assert wire.decode_relay(forwarded) == (ALICE_PUBLIC, inner)


@pytest.mark.parametrize("kind", [MessageType.RELAY, MessageType.RELAY_HELLO, MessageType.RELAY_HELLO_ACK])
def test_relay_refuses_control_messages_inside(kind):
    envelope = wire.encode_relay(BOB_PUBLIC, wire.header(kind) + bytes(60))
    with pytest.raises(WireError, match="cannot travel"):
        wire.decode_relay(envelope)


SEALED_CASES = [
    (MessageType.PROBE, wire.PathProbe(b"12345678", Endpoint("198.51.100.4", 4500), 1_700_000_000_123_456)),
    (MessageType.PROBE_REPLY, wire.PathProbe(b"abcdefgh", Endpoint("2001:db8::5", 65535), 2**64 - 1)),
    (MessageType.RELAY_HELLO, wire.RelayHello(1_700_000_000_123, b"token")),
    (MessageType.RELAY_HELLO, wire.RelayHello(1)),
    (MessageType.RELAY_HELLO_ACK, wire.RelayHelloAck(1_700_000_000_123)),
]


@pytest.mark.parametrize("kind, payload", SEALED_CASES)
def test_sealed_round_trip_between_two_static_keys(kind, payload):
    sender_key = wire.box_key(ALICE_PRIVATE, BOB_PUBLIC)
    receiver_key = wire.box_key(BOB_PRIVATE, ALICE_PUBLIC)
    encoded = wire.seal(kind, ALICE_PUBLIC, NONCE, sender_key, payload)
    sealed = wire.decode_sealed(encoded)
    assert (sealed.kind, sealed.sender_public, sealed.nonce) == (kind, ALICE_PUBLIC, NONCE)
    assert wire.open_sealed(sealed, receiver_key) == payload


@pytest.mark.parametrize("kind, payload", SEALED_CASES)
def test_sealed_envelope_detects_tampering_and_wrong_keys(kind, payload):
    key = wire.box_key(ALICE_PRIVATE, BOB_PUBLIC)
    encoded = bytearray(wire.seal(kind, ALICE_PUBLIC, NONCE, key, payload))
    last = -1 - (wire.MAC2_LEN if kind == MessageType.RELAY_HELLO else 0)  # a hello ends with its cookie MAC
    encoded[last] ^= 0x80
    with pytest.raises(WireError, match="authentication"):
        wire.open_sealed(wire.decode_sealed(encoded), key)
    encoded[last] ^= 0x80
    other_key = wire.box_key(ALICE_PRIVATE, ALICE_PUBLIC)
    with pytest.raises(WireError, match="authentication"):
        wire.open_sealed(wire.decode_sealed(encoded), other_key)


def test_seal_refuses_a_payload_of_the_wrong_kind():
    with pytest.raises(LocalProtocolError):
        wire.seal(MessageType.PROBE, ALICE_PUBLIC, NONCE, bytes(32), wire.RelayHelloAck(1))


def test_low_order_public_key_is_the_remote_fault():
    with pytest.raises(WireError, match="unusable"):
        wire.box_key(ALICE_PRIVATE, bytes(32))


def _decoders():
    mac_key = wire.mac1_key(BOB_PUBLIC)
    box = wire.box_key(BOB_PRIVATE, ALICE_PUBLIC)
    return [
        wire.message_type,
        lambda buf: wire.decode_endpoint(buf, 0),
        lambda buf: wire.HandshakeInitiation.decode(buf, mac_key),
        lambda buf: wire.HandshakeResponse.decode(buf, mac_key),
        wire.transport_receiver_index,
        wire.decode_relay,
        lambda buf: wire.open_sealed(wire.decode_sealed(buf), box),
    ]


def _plausible_messages():
    """Bytes with a valid header of every type, so decoders are reached past the header check."""
    return st.builds(
        lambda kind, body: wire.header(kind) + body,
        st.sampled_from(list(MessageType)),
        st.binary(max_size=200),
    )


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), _plausible_messages()))
def test_decoders_raise_only_wire_errors_on_arbitrary_bytes(data):
    for decode in _decoders():
        try:
            decode(data)
        except WireError:
            pass


@settings(max_examples=100)
@given(st.sampled_from(SEALED_CASES[:2]), st.binary(min_size=8, max_size=8), endpoints, st.integers(0, 2**64 - 1))
def test_sealed_probe_round_trip_property(case, tx_id, endpoint, stamp):
    kind, _ = case
    key = wire.box_key(ALICE_PRIVATE, BOB_PUBLIC)
    probe = wire.PathProbe(tx_id, endpoint, stamp)
    assert wire.open_sealed(wire.decode_sealed(wire.seal(kind, ALICE_PUBLIC, NONCE, key, probe)), key) == probe


@settings(max_examples=300)
@given(st.sampled_from([int(k) for k, _ in SEALED_CASES]), st.binary(max_size=40))
def test_authentic_envelopes_with_garbage_plaintext_raise_only_wire_errors(kind, plaintext):
    key = wire.box_key(ALICE_PRIVATE, BOB_PUBLIC)
    encoded = wire.header(kind) + ALICE_PUBLIC + NONCE + bindings.crypto_box_afternm(plaintext, NONCE, key)
    try:
        wire.open_sealed(wire.decode_sealed(encoded), key)
    except WireError:
        pass
