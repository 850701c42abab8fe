"""Transport sessions and per-peer key rotation, with a fake monotonic clock."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
)
from meshvpn.errors import LocalProtocolError
from meshvpn.noise import SessionKeys
from meshvpn.replay import WINDOW_SIZE
from meshvpn.session import KeyRing, Session, SessionExhausted

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
PEER = b"P" * 32
T0 = 1000.0
PACKET = bytes(range(256)) * 5 + b"tail"


def session_pair(index_a=1, index_b=2, created_at=T0, a_initiated=True):
    """Both ends of one handshake: (side with local index_a, side with local index_b)."""
    a = Session(SessionKeys(KEY_A, KEY_B, index_a, index_b, PEER, a_initiated), created_at)
    b = Session(SessionKeys(KEY_B, KEY_A, index_b, index_a, PEER, not a_initiated), created_at)
    return a, b


def test_seal_produces_the_documented_layout():
    sender, receiver = session_pair()
    message = sender.seal(b"ping")
    assert message[:16] == b"\x01\x03\x00\x00" + (2).to_bytes(4, "little") + bytes(8)
    assert len(message) == 16 + 4 + 16
    assert sender.seal(b"ping")[8:16] == (1).to_bytes(8, "little")
    assert receiver.open(message) == b"ping"


def test_both_directions_and_keepalive():
    a, b = session_pair()
    assert b.open(a.seal(PACKET)) == PACKET
    assert a.open(b.seal(PACKET)) == PACKET
    keepalive = a.keepalive()
    assert len(keepalive) == wire.KEEPALIVE_LEN and keepalive[1] == wire.MessageType.KEEPALIVE
    assert b.open(keepalive) == b""


def test_open_accepts_memoryview_and_bytearray():
    a, b = session_pair()
    assert b.open(memoryview(a.seal(b"x"))) == b"x"
    assert b.open(bytearray(a.seal(b"y"))) == b"y"


def test_empty_data_is_refused_locally():
    a, _ = session_pair()
    with pytest.raises(LocalProtocolError):
        a.seal(b"")


def test_any_bit_flip_is_rejected():
    a, b = session_pair()
    message = a.seal(b"sixteen byte msg")
    for bit in range(len(message) * 8):
        flipped = bytearray(message)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert b.open(bytes(flipped)) is None, bit
    assert b.open(message) == b"sixteen byte msg"


def test_type_cannot_be_switched_between_data_and_keepalive():
    a, b = session_pair()
    keepalive = bytearray(a.keepalive())
    keepalive[1] = wire.MessageType.DATA
    assert b.open(bytes(keepalive)) is None
    data = bytearray(a.seal(b"abc"))
    data[1] = wire.MessageType.KEEPALIVE
    assert b.open(bytes(data)) is None


def test_message_for_another_index_is_rejected():
    a, _ = session_pair()
    _, other = session_pair(index_b=3)
    assert other.open(a.seal(b"x")) is None


def test_replay_rejected_reordering_accepted_once():
    a, b = session_pair()
    messages = [a.seal(bytes([n + 1])) for n in range(5)]
    for n in (4, 0, 2, 1, 3):
        assert b.open(messages[n]) == bytes([n + 1])
    assert all(b.open(m) is None for m in messages)


def test_far_old_rejected():
    a, b = session_pair()
    first = a.seal(b"old")
    a.send_counter = WINDOW_SIZE + 5
    assert b.open(a.seal(b"new")) == b"new"
    assert b.open(first) is None


def test_forged_packet_does_not_advance_the_window():
    a, b = session_pair()
    first = a.seal(b"first")
    forged = bytearray(a.seal(b"x"))
    forged[8:16] = (10**6).to_bytes(8, "little")
    assert b.open(bytes(forged)) is None
    assert b.open(first) == b"first"


def test_nonce_exhaustion_is_refused():
    a, b = session_pair()
    a.send_counter = REJECT_AFTER_MESSAGES - 1
    last = a.seal(b"last")
    assert b.open(last) == b"last"
    with pytest.raises(SessionExhausted):
        a.seal(b"one too many")
    with pytest.raises(SessionExhausted):
        a.keepalive()


def test_rekey_after_time_at_exact_deadline_initiator_only():
    initiator, responder = session_pair()
    assert not initiator.needs_rekey(T0 + REKEY_AFTER_TIME - 0.001)
    assert initiator.needs_rekey(T0 + REKEY_AFTER_TIME)
    assert not responder.needs_rekey(T0 + REKEY_AFTER_TIME)


def test_rekey_after_messages():
    _, responder = session_pair()
    responder.send_counter = REKEY_AFTER_MESSAGES - 1
    assert not responder.needs_rekey(T0)
    responder.seal(b"x")
    assert responder.needs_rekey(T0)


def test_expiry_at_exact_deadline():
    a, _ = session_pair()
    assert not a.expired(T0 + REJECT_AFTER_TIME - 0.001)
    assert a.expired(T0 + REJECT_AFTER_TIME)
    assert a.get_timer() == T0 + REJECT_AFTER_TIME


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_open_returns_none_on_garbage(data):
    _, b = session_pair()
    assert b.open(data) is None
    assert b.open(b"\x01\x03\x00\x00\x02\x00\x00\x00" + data) is None


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=1500))
def test_seal_open_round_trip(payload):
    a, b = session_pair()
    assert b.open(a.seal(payload)) == payload


# --- KeyRing ------------------------------------------------------------------


def sessions(local_index, is_initiator, created_at=T0):
    """Our side and the peer's side of one handshake, our side with ``local_index``."""
    return session_pair(local_index, 100 + local_index, created_at, is_initiator)


def ring_with(*installs):
    """A KeyRing after installing our side of each (local_index, is_initiator) handshake."""
    ring = KeyRing()
    ours = [sessions(index, is_initiator)[0] for index, is_initiator in installs]
    for session in ours:
        ring.install(session)
    return ring, ours


def test_initiator_session_becomes_current_at_once():
    ring, (first, second) = ring_with((1, True), (2, True))
    assert (ring.current, ring.previous, ring.next) == (second, first, None)
    third, _ = sessions(3, True)
    ring.install(third)
    assert (ring.current, ring.previous) == (third, second)
    assert ring.pop_retired() == [1]
    assert ring.pop_retired() == []


def test_responder_session_waits_for_the_first_packet():
    ring = KeyRing()
    old, old_peer = sessions(1, True)
    ring.install(old)
    new, new_peer = sessions(2, False)
    ring.install(new)
    assert (ring.current, ring.next) == (old, new)
    assert ring.open(old_peer.seal(b"in flight")) == b"in flight"
    assert ring.current is old
    assert ring.open(new_peer.seal(b"confirmed")) == b"confirmed"
    assert (ring.current, ring.previous, ring.next) == (new, old, None)
    assert ring.open(old_peer.seal(b"late")) == b"late"


def test_forged_packet_does_not_promote_next():
    ring = KeyRing()
    new, _ = sessions(2, False)
    ring.install(new)
    forged = wire.TRANSPORT_HEADER.pack(1, wire.MessageType.DATA, 0, 2, 0) + bytes(20)
    assert ring.open(forged) is None
    assert ring.next is new and ring.current is None


def test_initiator_install_over_unconfirmed_next():
    ring, (_, pending, fresh) = ring_with((1, True), (2, False), (3, True))
    assert (ring.current, ring.previous, ring.next) == (fresh, pending, None)
    assert ring.pop_retired() == [1]


def test_unknown_index_and_garbage_are_dropped():
    ring = KeyRing()
    ours, theirs = sessions(1, True)
    ring.install(ours)
    _, stranger = sessions(9, True)
    assert ring.open(stranger.seal(b"x")) is None
    assert ring.open(b"junk") is None
    assert ring.session_for(1) is ours


def test_expire_drops_old_sessions_and_reports_the_timer():
    ring = KeyRing()
    assert ring.get_timer() is None
    old, _ = sessions(1, True, created_at=T0)
    new, _ = sessions(2, True, created_at=T0 + 100)
    ring.install(old)
    ring.install(new)
    assert ring.get_timer() == T0 + REJECT_AFTER_TIME
    ring.expire(T0 + REJECT_AFTER_TIME)
    assert (ring.current, ring.previous) == (new, None)
    assert ring.pop_retired() == [1]
    assert ring.get_timer() == T0 + 100 + REJECT_AFTER_TIME
