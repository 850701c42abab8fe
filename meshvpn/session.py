"""Transport sessions: counter-nonce AEAD for DATA/KEEPALIVE, and per-peer key rotation.

A :class:`Session` is what a completed handshake (:class:`meshvpn.noise.SessionKeys`)
becomes.  Each sealed message carries its 64-bit counter in clear; the nonce
is ``4 zero bytes | counter (LE)`` and the 16-byte header is the associated
data, so no header field can be altered.  Counters are never reused: sealing
refuses at REJECT_AFTER_MESSAGES.  A :class:`KeyRing` keeps WireGuard's three
slots per peer so packets sealed under the previous session still open during
a rekey, and a responder's new session is only used after the initiator has
proved it holds the keys (its first packet).

Per-packet code uses ``nacl.bindings`` directly and precomputed header bytes;
nothing here logs or allocates beyond the output message.
"""

from __future__ import annotations

import math
import struct

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
)
from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.noise import SessionKeys
from meshvpn.replay import ReplayWindow

_encrypt = bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = bindings.crypto_aead_chacha20poly1305_ietf_decrypt
_CryptoError = exceptions.CryptoError
_COUNTER = struct.Struct("<Q")
_NONCE_PAD = bytes(4)
_PREFIX = struct.Struct("<BBHI")
_DATA = wire.MessageType.DATA
_KEEPALIVE = wire.MessageType.KEEPALIVE
_HEADER_LEN = wire.TRANSPORT_HEADER_LEN
_KEEPALIVE_LEN = wire.KEEPALIVE_LEN
_unpack_header = wire.TRANSPORT_HEADER.unpack_from


class SessionExhausted(LocalProtocolError):
    """The session has sent REJECT_AFTER_MESSAGES messages; a new handshake is required."""


class Session:
    """One direction-pair of transport keys with its counters, replay window and deadlines."""

    __slots__ = (
        "local_index", "remote_index", "remote_public", "is_initiator", "created_at",
        "send_counter", "rekey_at", "expires_at",
        "_send_key", "_recv_key", "_window", "_data_prefix", "_keepalive_prefix",
    )

    def __init__(self, keys: SessionKeys, created_at: float) -> None:
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.remote_public = keys.remote_public
        self.is_initiator = keys.is_initiator
        self.created_at = created_at
        """Monotonic time the handshake completed."""
        self.send_counter = 0
        """Counter of the next message to seal (= messages sealed so far)."""
        self.rekey_at = created_at + REKEY_AFTER_TIME if keys.is_initiator else math.inf
        """Only the initiator rekeys on age, so both ends do not start handshakes at once."""
        self.expires_at = created_at + REJECT_AFTER_TIME
        self._send_key = keys.send_key
        self._recv_key = keys.recv_key
        self._window = ReplayWindow()
        self._data_prefix = _PREFIX.pack(wire.VERSION, _DATA, 0, keys.remote_index)
        self._keepalive_prefix = _PREFIX.pack(wire.VERSION, _KEEPALIVE, 0, keys.remote_index)

    def seal(self, payload: bytes) -> bytes:
        """A complete DATA message carrying ``payload`` (bytes, non-empty)."""
        if not payload:
            raise LocalProtocolError("DATA needs a payload; send keepalive() instead")
        return self._seal(self._data_prefix, payload)

    def keepalive(self) -> bytes:
        """A complete KEEPALIVE message (authenticated, empty)."""
        return self._seal(self._keepalive_prefix, b"")

    def _seal(self, prefix: bytes, payload: bytes) -> bytes:
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise SessionExhausted("session nonce space exhausted")
        self.send_counter = counter + 1
        header = prefix + _COUNTER.pack(counter)
        return header + _encrypt(payload, header, _NONCE_PAD + header[8:], self._send_key)

    def open(self, msg: bytes | bytearray | memoryview) -> bytes | None:
        """The plaintext of a DATA (non-empty) or KEEPALIVE (b"") message, or None to drop it.

        Forged, altered, replayed, too old, or addressed to another index: None.
        The replay window is consulted before decrypting and updated only after.
        """
        if len(msg) < _KEEPALIVE_LEN:
            return None
        if type(msg) is not bytes:
            msg = bytes(msg)
        version, kind, reserved, index, counter = _unpack_header(msg)
        if index != self.local_index or version != wire.VERSION or reserved:
            return None
        if kind == _DATA:
            if len(msg) == _KEEPALIVE_LEN:
                return None
        elif kind != _KEEPALIVE or len(msg) != _KEEPALIVE_LEN:
            return None
        window = self._window
        if not window.check(counter):
            return None
        try:
            plain = _decrypt(msg[_HEADER_LEN:], msg[:_HEADER_LEN], _NONCE_PAD + msg[8:16], self._recv_key)
        except _CryptoError:
            return None
        if not window.check_and_update(counter):
            return None
        return plain

    def needs_rekey(self, now: float) -> bool:
        """Should a new handshake start (checked when sending)?"""
        return self.send_counter >= REKEY_AFTER_MESSAGES or now >= self.rekey_at

    def expired(self, now: float) -> bool:
        """Past REJECT_AFTER_TIME: neither seal nor open with it any more."""
        return now >= self.expires_at

    def get_timer(self) -> float:
        """The deadline the owner must act on: expiry."""
        return self.expires_at


class KeyRing:
    """A peer's sessions: ``current`` seals, ``previous`` still opens, ``next`` awaits confirmation.

    Installing an initiator's session makes it current at once (it has seen the
    response).  A responder's session waits in ``next`` until a packet opens
    with it, which proves the initiator derived the same keys; then it rotates
    in.  Local indexes of dropped sessions are collected for
    :meth:`pop_retired` so the owner can free them in its index table.
    """

    __slots__ = ("current", "previous", "next", "_retired")

    def __init__(self) -> None:
        self.current: Session | None = None
        self.previous: Session | None = None
        self.next: Session | None = None
        self._retired: list[int] = []

    def _retire(self, session: Session | None) -> None:
        if session is not None:
            self._retired.append(session.local_index)

    def install(self, session: Session) -> None:
        """Add a freshly handshaken session, rotating the slots as WireGuard does."""
        if session.is_initiator:
            if self.next is not None:
                self._retire(self.previous)
                self._retire(self.current)
                self.previous, self.next = self.next, None
            else:
                self._retire(self.previous)
                self.previous = self.current
            self.current = session
        else:
            self._retire(self.next)
            self._retire(self.previous)
            self.next, self.previous = session, None

    def session_for(self, local_index: int) -> Session | None:
        """The held session a message addressed to ``local_index`` belongs to."""
        for session in (self.current, self.next, self.previous):
            if session is not None and session.local_index == local_index:
                return session
        return None

    def open(self, msg: bytes | bytearray | memoryview) -> bytes | None:
        """Open a transport message with whichever held session it is addressed to."""
        try:
            session = self.session_for(wire.transport_receiver_index(msg))
        except RemoteProtocolError:
            return None
        if session is None:
            return None
        plain = session.open(msg)
        if plain is not None and session is self.next:
            self._retire(self.previous)
            self.previous, self.current, self.next = self.current, session, None
        return plain

    def expire(self, now: float) -> None:
        """Drop every session past REJECT_AFTER_TIME."""
        for slot in ("current", "previous", "next"):
            session = getattr(self, slot)
            if session is not None and session.expired(now):
                self._retire(session)
                setattr(self, slot, None)

    def get_timer(self) -> float | None:
        """Earliest expiry among held sessions, or None when empty."""
        held = [s.expires_at for s in (self.current, self.previous, self.next) if s is not None]
        return min(held, default=None)

    def pop_retired(self) -> list[int]:
        """Local indexes of sessions dropped since the last call."""
        retired, self._retired = self._retired, []
        return retired
