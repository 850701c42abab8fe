"""Path probes: only peers can make them, and garbage raises only RemoteProtocolError."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import public_key
from meshvpn.node.probes import ProbeCodec
from meshvpn.wire import Endpoint, MessageType

A_PRIVATE = bytes(range(1, 33))
B_PRIVATE = bytes(range(101, 133))
C_PRIVATE = bytes(range(201, 233))
A_PUBLIC, B_PUBLIC, C_PUBLIC = (public_key(k) for k in (A_PRIVATE, B_PRIVATE, C_PRIVATE))
NONCE = bytes(24)
TX = b"12345678"
DST = Endpoint("203.0.113.7", 41641)


def codec(private, public, *peers):
    c = ProbeCodec(private, public)
    for peer in peers:
        c.add_peer(peer)
    return c


def test_probe_and_reply_round_trip():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    opened = b.open(a.probe(B_PUBLIC, TX, DST, NONCE))
    assert (opened.kind, opened.sender, opened.tx_id, opened.endpoint) == (MessageType.PROBE, A_PUBLIC, TX, DST)
    seen = Endpoint("198.51.100.9", 6000)
    reply = a.open(b.reply(A_PUBLIC, opened.tx_id, seen, NONCE))
    assert (reply.kind, reply.sender, reply.tx_id, reply.endpoint) == (MessageType.PROBE_REPLY, B_PUBLIC, TX, seen)


def test_probe_from_a_stranger_is_rejected_before_any_key_agreement():
    c = codec(C_PRIVATE, C_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    with pytest.raises(RemoteProtocolError, match="not a peer"):
        b.open(c.probe(B_PUBLIC, TX, DST, NONCE))


def test_forged_sender_key_fails_authentication():
    c = codec(C_PRIVATE, C_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    forged = bytearray(c.probe(B_PUBLIC, TX, DST, NONCE))
    forged[4:36] = A_PUBLIC
    with pytest.raises(RemoteProtocolError, match="authentication"):
        b.open(bytes(forged))


def test_removed_peer_is_no_longer_accepted():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    probe = a.probe(B_PUBLIC, TX, DST, NONCE)
    b.remove_peer(A_PUBLIC)
    with pytest.raises(RemoteProtocolError):
        b.open(probe)


def test_relay_hello_is_not_a_probe():
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    hello = wire.seal(MessageType.RELAY_HELLO, A_PUBLIC, NONCE, wire.box_key(A_PRIVATE, B_PUBLIC), wire.RelayHello(1))
    with pytest.raises(RemoteProtocolError, match="not a path probe"):
        b.open(hello)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 199), st.integers(1, 255))
def test_open_raises_only_remote_errors_on_garbage_and_bit_flips(junk, position, flip):
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    genuine = bytearray(a.probe(B_PUBLIC, TX, DST, NONCE))
    genuine[position % len(genuine)] ^= flip
    for candidate in (junk, bytes(genuine), bytes(genuine[: position % len(genuine)])):
        with pytest.raises(RemoteProtocolError):
            b.open(candidate)


def test_probe_relabelled_as_reply_is_rejected():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    relabelled = bytearray(a.probe(B_PUBLIC, TX, DST, NONCE))
    relabelled[1] = MessageType.PROBE_REPLY
    with pytest.raises(RemoteProtocolError, match="sealed as another type"):
        b.open(bytes(relabelled))
