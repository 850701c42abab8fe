"""Noise IK handshake with fixed keys and a fake wall clock."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import noise, wire
from meshvpn.errors import LocalProtocolError
from meshvpn.noise import InitiationTimestamps, Initiator, StaticIdentity, consume_initiation

ALICE = StaticIdentity.from_private(bytes(range(32)))
BOB = StaticIdentity.from_private(bytes(range(1, 33)))
CAROL = StaticIdentity.from_private(bytes(range(2, 34)))
EPHEMERAL_1 = b"\x05" * 32
EPHEMERAL_2 = b"\x06" * 32
NOW = 1_700_000_000.25


def handshake(initiator_id, responder_id, now=NOW, timestamps=None):
    initiator = Initiator(initiator_id, responder_id.public, 11, EPHEMERAL_1, now)
    lookup = timestamps.last if timestamps else (lambda key: None)
    pending = consume_initiation(responder_id, initiator.initiation, last_timestamp_for=lookup)
    assert pending is not None
    response, responder_keys = pending.respond(22, EPHEMERAL_2)
    return initiator, pending, response, responder_keys


@pytest.mark.parametrize("initiator_id, responder_id", [(ALICE, BOB), (BOB, ALICE)])
def test_handshake_derives_mirrored_keys_both_ways(initiator_id, responder_id):
    initiator, pending, response, responder_keys = handshake(initiator_id, responder_id)
    assert pending.remote_public == initiator_id.public
    assert pending.sender_index == 11
    initiator_keys = initiator.consume_response(response)
    assert initiator_keys.send_key == responder_keys.recv_key
    assert initiator_keys.recv_key == responder_keys.send_key
    assert initiator_keys.send_key != initiator_keys.recv_key
    assert (initiator_keys.local_index, initiator_keys.remote_index) == (11, 22)
    assert (responder_keys.local_index, responder_keys.remote_index) == (22, 11)
    assert initiator_keys.is_initiator and not responder_keys.is_initiator
    assert initiator_keys.remote_public == responder_id.public


# Noise message bytes inside these were checked against the independent
# `noiseprotocol` package (same keys, ephemerals, prologue and payload).
INITIATION_SHA256 = "9b3a876bb34b0efb5557dc98ca7d2d5ab2f4e83fe1b8e076ee3757548892c58a"
RESPONSE_SHA256 = "7207162767e29de201ad79448e6ecb7047f2de89f20bef27b2e6c4159f1a9126"


def test_handshake_bytes_match_the_reference_vector():
    """Any change here breaks interoperability with deployed nodes."""
    initiator, _, response, _ = handshake(ALICE, BOB)
    assert hashlib.sha256(initiator.initiation).hexdigest() == INITIATION_SHA256
    assert hashlib.sha256(response).hexdigest() == RESPONSE_SHA256


def test_raw_private_key_works_like_an_identity():
    initiator = Initiator(ALICE.private, BOB.public, 1, EPHEMERAL_1, NOW)
    assert consume_initiation(BOB.private, initiator.initiation).remote_public == ALICE.public


def test_initiation_for_another_responder_is_dropped():
    initiator = Initiator(ALICE, CAROL.public, 11, EPHEMERAL_1, NOW)
    assert consume_initiation(BOB, initiator.initiation) is None


def test_response_from_a_different_key_is_dropped():
    initiator = Initiator(ALICE, BOB.public, 11, EPHEMERAL_1, NOW)
    impostor = Initiator(ALICE, CAROL.public, 11, EPHEMERAL_1, NOW)
    response, _ = consume_initiation(CAROL, impostor.initiation).respond(22, EPHEMERAL_2)
    assert initiator.consume_response(response) is None
    _, _, genuine, _ = handshake(ALICE, BOB)
    assert initiator.consume_response(genuine) is not None


def test_replayed_initiation_is_rejected():
    timestamps = InitiationTimestamps()
    initiator, pending, _, _ = handshake(ALICE, BOB, timestamps=timestamps)
    timestamps.record(pending.remote_public, pending.timestamp)
    assert consume_initiation(BOB, initiator.initiation, timestamps.last) is None


def test_older_initiation_is_rejected_and_newer_accepted():
    timestamps = InitiationTimestamps()
    _, pending, _, _ = handshake(ALICE, BOB, now=NOW, timestamps=timestamps)
    timestamps.record(ALICE.public, pending.timestamp)
    older = Initiator(ALICE, BOB.public, 1, EPHEMERAL_1, NOW - 1)
    newer = Initiator(ALICE, BOB.public, 1, EPHEMERAL_1, NOW + 1)
    assert consume_initiation(BOB, older.initiation, timestamps.last) is None
    assert consume_initiation(BOB, newer.initiation, timestamps.last) is not None
    timestamps.record(ALICE.public, older.timestamp)
    assert timestamps.last(ALICE.public) == pending.timestamp


def test_timestamps_are_monotonic_and_whitened():
    assert noise.tai64n(NOW) < noise.tai64n(NOW + 0.02) < noise.tai64n(NOW + 1)
    assert noise.tai64n(99.999) < noise.tai64n(100.0)
    assert noise.tai64n(100.001) == noise.tai64n(100.0)
    assert noise.tai64n(0.0) == (2**62 + 10).to_bytes(8, "big") + bytes(4)


def test_response_is_consumed_once():
    initiator, _, response, _ = handshake(ALICE, BOB)
    assert initiator.consume_response(response) is not None
    assert initiator.consume_response(response) is None


def test_response_for_another_index_is_dropped():
    initiator = Initiator(ALICE, BOB.public, 12, EPHEMERAL_1, NOW)
    pending = consume_initiation(BOB, initiator.initiation)
    response, _ = pending.respond(22, EPHEMERAL_2)
    forged = wire.HandshakeResponse.decode(response, ALICE.mac1_key)
    readdressed = wire.HandshakeResponse(22, 13, forged.ephemeral, forged.encrypted_nothing)
    assert initiator.consume_response(readdressed.encode(ALICE.mac1_key)) is None
    assert initiator.consume_response(response) is not None


def test_every_bit_flip_of_an_initiation_is_dropped():
    message = Initiator(ALICE, BOB.public, 11, EPHEMERAL_1, NOW).initiation
    for bit in range(len(message) * 8):
        flipped = bytearray(message)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert consume_initiation(BOB, flipped) is None, bit


def test_every_bit_flip_of_a_response_is_dropped():
    initiator, _, response, _ = handshake(ALICE, BOB)
    for bit in range(len(response) * 8):
        flipped = bytearray(response)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert initiator.consume_response(flipped) is None, bit
    assert initiator.consume_response(response) is not None


def test_forged_body_with_valid_mac1_is_dropped():
    """mac1 only filters junk (anyone knowing BOB's public key can compute it)."""
    message = Initiator(ALICE, BOB.public, 11, EPHEMERAL_1, NOW).initiation
    parsed = wire.HandshakeInitiation.decode(message, BOB.mac1_key)
    altered = wire.HandshakeInitiation(
        parsed.sender_index, parsed.ephemeral, parsed.encrypted_static, b"\0" * 28
    )
    assert consume_initiation(BOB, altered.encode(BOB.mac1_key)) is None


def test_low_order_ephemeral_is_dropped():
    forged = wire.HandshakeInitiation(1, bytes(32), bytes(48), bytes(28)).encode(BOB.mac1_key)
    assert consume_initiation(BOB, forged) is None


def test_degenerate_responder_key_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        Initiator(ALICE, bytes(32), 1, EPHEMERAL_1, NOW)


def test_pending_initiation_answers_once():
    _, pending, _, _ = handshake(ALICE, BOB)
    with pytest.raises(LocalProtocolError):
        pending.respond(23, EPHEMERAL_2)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=160), st.binary(min_size=124, max_size=124).map(
    lambda body: (wire.header(wire.MessageType.HANDSHAKE_INIT) + body)
)))
def test_consume_initiation_returns_none_on_garbage(data):
    assert consume_initiation(BOB, data) is None


@settings(max_examples=300)
@given(st.binary(min_size=56, max_size=56))
def test_consume_response_returns_none_on_garbage_with_valid_mac1(body):
    """Mac1 is computed so the garbage reaches the Diffie-Hellman and AEAD stages."""
    initiator = Initiator(ALICE, BOB.public, int.from_bytes(body[4:8], "little"), EPHEMERAL_1, NOW)
    message = wire.header(wire.MessageType.HANDSHAKE_RESP) + body
    message += hashlib.blake2b(message, key=ALICE.mac1_key, digest_size=16).digest()
    assert initiator.consume_response(message) is None
