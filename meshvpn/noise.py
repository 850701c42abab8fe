"""Noise_IK_25519_ChaChaPoly_BLAKE2b: meshvpn's authenticated key exchange.

The shape is WireGuard's handshake without the pre-shared key::

    <- s                                 (initiator knows the responder's static key)
    -> e, es, s, ss, {TAI64N timestamp}  HANDSHAKE_INIT
    <- e, ee, se, {}                     HANDSHAKE_RESP

The initiator's static key travels encrypted, both sides contribute an
ephemeral key (forward secrecy), the timestamp lets a responder refuse a
replayed initiation, and mac1 (keyed with the receiver's public key) is checked
before any Diffie-Hellman so random junk costs one BLAKE2b.

Sans-IO API; randomness (ephemeral private keys) and the wall clock (``now_wall``,
seconds since the Unix epoch) are arguments::

    initiator = Initiator(local, responder_public, sender_index, ephemeral_private, now_wall)
    send(initiator.initiation)
    pending = consume_initiation(local, msg, last_timestamp_for=timestamps.last)
    if pending and authorized(pending.remote_public):
        timestamps.record(pending.remote_public, pending.timestamp)
        response, responder_keys = pending.respond(local_index, ephemeral_private)
    initiator_keys = initiator.consume_response(response)

``local`` is a :class:`StaticIdentity` (or a raw private key, converted on each
call).  Consumers return ``None`` for anything they reject: a handshake that
does not verify is dropped, never raised.  The same message bytes are used by
UDP and by :mod:`meshvpn.channel` frames.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"meshvpn v1"
HASH_LEN = 64
KEY_LEN = 32
TIMESTAMP_LEN = 12
_ZERO_NONCE = bytes(12)
_TAI64_BASE = 2**62 + 10
_WHITENER_MASK = 0xFFFFFF
"""Timestamps are rounded down to ~16.8 ms so they do not leak a fine-grained clock."""

_encrypt = bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = bindings.crypto_aead_chacha20poly1305_ietf_decrypt


class HandshakeRejected(RemoteProtocolError):
    """Internal signal that a handshake message failed a check; consumers turn it into None."""


def tai64n(now_wall: float) -> bytes:
    """12-byte TAI64N label for ``now_wall``; byte order makes bytes comparison chronological."""
    seconds = int(now_wall // 1)
    nanos = int((now_wall - seconds) * 1e9) & ~_WHITENER_MASK
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes | bytearray, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _dh(private: bytes, public: bytes) -> bytes:
    """X25519; an all-zero result (low-order point) rejects the handshake."""
    try:
        return bindings.crypto_scalarmult(bytes(private), public)
    except exceptions.RuntimeError as exc:
        raise HandshakeRejected("degenerate Diffie-Hellman result") from exc


class _SymmetricState:
    """Noise SymmetricState; every cipher key is used once with nonce 0, so no CipherState."""

    __slots__ = ("chaining_key", "handshake_hash")

    def __init__(self, chaining_key: bytes, handshake_hash: bytes) -> None:
        self.chaining_key = bytearray(chaining_key)
        self.handshake_hash = bytearray(handshake_hash)

    def copy(self) -> _SymmetricState:
        return _SymmetricState(self.chaining_key, self.handshake_hash)

    def mix_hash(self, data: bytes) -> None:
        self.handshake_hash[:] = _hash(bytes(self.handshake_hash) + data)

    def mix_key(self, input_key_material: bytes) -> bytes:
        """HKDF(ck, ikm) -> (ck, k); returns the 32-byte cipher key."""
        temp_key = _hmac(self.chaining_key, input_key_material)
        self.chaining_key[:] = _hmac(temp_key, b"\x01")
        return _hmac(temp_key, bytes(self.chaining_key) + b"\x02")[:KEY_LEN]

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = _encrypt(plaintext, bytes(self.handshake_hash), _ZERO_NONCE, key)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes:
        try:
            plaintext = _decrypt(ciphertext, bytes(self.handshake_hash), _ZERO_NONCE, key)
        except exceptions.CryptoError as exc:
            raise HandshakeRejected("handshake payload failed authentication") from exc
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator→responder key, responder→initiator key)."""
        temp_key = _hmac(self.chaining_key, b"")
        first = _hmac(temp_key, b"\x01")
        second = _hmac(temp_key, first + b"\x02")
        return first[:KEY_LEN], second[:KEY_LEN]

    def wipe(self) -> None:
        self.chaining_key[:] = bytes(HASH_LEN)
        self.handshake_hash[:] = bytes(HASH_LEN)


def _initial_state(responder_public: bytes) -> _SymmetricState:
    """InitializeSymmetric(name), MixHash(prologue), MixHash(responder static): the IK pre-message."""
    name = PROTOCOL_NAME.ljust(HASH_LEN, b"\0")
    state = _SymmetricState(name, name)
    state.mix_hash(PROLOGUE)
    state.mix_hash(responder_public)
    return state


@dataclass(frozen=True, slots=True)
class StaticIdentity:
    """A static key pair with what every handshake derives from it, computed once."""

    private: bytes = field(repr=False)
    public: bytes
    mac1_key: bytes = field(repr=False)

    @classmethod
    def from_private(cls, private: bytes) -> StaticIdentity:
        if len(private) != KEY_LEN:
            raise LocalProtocolError("a static private key is 32 bytes")
        public = bindings.crypto_scalarmult_base(bytes(private))
        return cls(bytes(private), public, wire.mac1_key(public))


def _identity(local: StaticIdentity | bytes) -> StaticIdentity:
    return local if isinstance(local, StaticIdentity) else StaticIdentity.from_private(local)


def _ephemeral_public(ephemeral_private: bytes) -> bytes:
    if len(ephemeral_private) != KEY_LEN:
        raise LocalProtocolError("an ephemeral private key is 32 random bytes")
    return bindings.crypto_scalarmult_base(bytes(ephemeral_private))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The outcome of a handshake: everything a transport session needs."""

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    local_index: int
    """Index the peer puts in messages to us (we chose it)."""
    remote_index: int
    """Index we put in messages to the peer (it chose it)."""
    remote_public: bytes
    is_initiator: bool


class Initiator:
    """One outgoing handshake attempt: builds message 1, consumes message 2 once."""

    def __init__(
        self,
        local: StaticIdentity | bytes,
        remote_public: bytes,
        sender_index: int,
        ephemeral_private: bytes,
        now_wall: float,
    ) -> None:
        identity = _identity(local)
        self.remote_public = bytes(remote_public)
        self.sender_index = sender_index
        self.timestamp = tai64n(now_wall)
        self._identity = identity
        self._ephemeral = bytearray(ephemeral_private)
        state = _initial_state(self.remote_public)
        ephemeral_public = _ephemeral_public(ephemeral_private)
        state.mix_hash(ephemeral_public)
        try:
            key = state.mix_key(_dh(ephemeral_private, self.remote_public))
            encrypted_static = state.encrypt_and_hash(key, identity.public)
            key = state.mix_key(_dh(identity.private, self.remote_public))
        except HandshakeRejected as exc:
            raise LocalProtocolError("the responder's static key is degenerate") from exc
        encrypted_timestamp = state.encrypt_and_hash(key, self.timestamp)
        self._state: Optional[_SymmetricState] = state
        self.initiation = wire.HandshakeInitiation(
            sender_index, ephemeral_public, encrypted_static, encrypted_timestamp
        ).encode(wire.mac1_key(self.remote_public))

    def consume_response(self, msg: bytes | bytearray | memoryview) -> SessionKeys | None:
        """Session keys if ``msg`` is the genuine answer to our initiation, else None."""
        if self._state is None:
            return None
        try:
            response = wire.HandshakeResponse.decode(msg, self._identity.mac1_key)
            if response.receiver_index != self.sender_index:
                return None
            state = self._state.copy()
            state.mix_hash(response.ephemeral)
            state.mix_key(_dh(self._ephemeral, response.ephemeral))
            key = state.mix_key(_dh(self._identity.private, response.ephemeral))
            state.decrypt_and_hash(key, response.encrypted_nothing)
        except RemoteProtocolError:
            return None
        send_key, recv_key = state.split()
        state.wipe()
        self.wipe()
        return SessionKeys(
            send_key, recv_key, self.sender_index, response.sender_index, self.remote_public, True
        )

    def wipe(self) -> None:
        """Forget the ephemeral key and handshake state; later responses are ignored."""
        self._ephemeral[:] = bytes(len(self._ephemeral))
        if self._state is not None:
            self._state.wipe()
            self._state = None


class PendingInitiation:
    """A verified initiation awaiting the caller's decision (authorize, record timestamp, respond)."""

    def __init__(
        self,
        identity: StaticIdentity,
        state: _SymmetricState,
        remote_public: bytes,
        remote_ephemeral: bytes,
        sender_index: int,
        timestamp: bytes,
    ) -> None:
        self.remote_public = remote_public
        self.sender_index = sender_index
        """The initiator's index, used as remote_index of the resulting session."""
        self.timestamp = timestamp
        """TAI64N from the initiation; record it as the greatest seen for remote_public."""
        self._identity = identity
        self._state: Optional[_SymmetricState] = state
        self._remote_ephemeral = remote_ephemeral

    def respond(self, sender_index: int, ephemeral_private: bytes) -> tuple[bytes, SessionKeys]:
        """Build message 2 and derive the session; callable once."""
        state = self._state
        if state is None:
            raise LocalProtocolError("this initiation was already answered")
        self._state = None
        ephemeral = bytearray(ephemeral_private)
        ephemeral_public = _ephemeral_public(ephemeral_private)
        state.mix_hash(ephemeral_public)
        try:
            state.mix_key(_dh(ephemeral, self._remote_ephemeral))
            key = state.mix_key(_dh(ephemeral, self.remote_public))
        except HandshakeRejected as exc:
            raise LocalProtocolError("cannot answer a degenerate initiation") from exc
        finally:
            ephemeral[:] = bytes(len(ephemeral))
        encrypted_nothing = state.encrypt_and_hash(key, b"")
        message = wire.HandshakeResponse(
            sender_index, self.sender_index, ephemeral_public, encrypted_nothing
        ).encode(wire.mac1_key(self.remote_public))
        recv_key, send_key = state.split()
        state.wipe()
        keys = SessionKeys(
            send_key, recv_key, sender_index, self.sender_index, self.remote_public, False
        )
        return message, keys


TimestampLookup = Callable[[bytes], Optional[bytes]]


def consume_initiation(
    local: StaticIdentity | bytes,
    msg: bytes | bytearray | memoryview,
    last_timestamp_for: TimestampLookup = lambda remote_public: None,
) -> PendingInitiation | None:
    """Verify message 1; None if it is junk, forged, or not newer than ``last_timestamp_for``.

    ``last_timestamp_for(remote_public)`` returns the greatest timestamp already
    accepted from that key (or None); see :class:`InitiationTimestamps`.
    """
    identity = _identity(local)
    try:
        initiation = wire.HandshakeInitiation.decode(msg, identity.mac1_key)
        state = _initial_state(identity.public)
        state.mix_hash(initiation.ephemeral)
        key = state.mix_key(_dh(identity.private, initiation.ephemeral))
        remote_public = state.decrypt_and_hash(key, initiation.encrypted_static)
        key = state.mix_key(_dh(identity.private, remote_public))
        timestamp = state.decrypt_and_hash(key, initiation.encrypted_timestamp)
    except RemoteProtocolError:
        return None
    last = last_timestamp_for(remote_public)
    if last is not None and timestamp <= last:
        state.wipe()
        return None
    return PendingInitiation(
        identity, state, remote_public, initiation.ephemeral, initiation.sender_index, timestamp
    )


@dataclass(slots=True)
class InitiationTimestamps:
    """Greatest initiation timestamp accepted per initiator key (persist it to survive restarts)."""

    greatest: dict[bytes, bytes] = field(default_factory=dict)

    def last(self, remote_public: bytes) -> bytes | None:
        return self.greatest.get(remote_public)

    def record(self, remote_public: bytes, timestamp: bytes) -> None:
        if timestamp > self.greatest.get(remote_public, b""):
            self.greatest[remote_public] = timestamp
