"""Transport sessions: counter-nonce AEAD for DATA/KEEPALIVE, and per-peer key rotation.

A :class:`Session` is what a completed handshake (:class:`meshvpn.noise.SessionKeys`)
becomes.  Each sealed message carries its 64-bit counter in clear; the nonce
is ``4 zero bytes | counter (LE)`` and the 16-byte header is the associated
data, so no header field can be altered.  Counters are never reused: sealing
refuses at REJECT_AFTER_MESSAGES.  A :class:`KeyRing` keeps WireGuard's three
slots per peer so packets sealed under the previous session still open during
a rekey, and a responder's new session is only used after the initiator has
proved it holds the keys (its first packet).

Per packet, the data path calls :meth:`Session.seal_into` and :meth:`KeyRing.open_into`:
they write header and ciphertext straight into the caller's long-lived buffers (a GSO
send buffer, the UDP receive buffer) and open in place, so nothing is allocated per
packet.  The AEAD is libsodium's ChaCha20-Poly1305 called through PyNaCl's cffi module
with pointers cached per buffer, about twice as fast as ``nacl.bindings`` (which copies
in and allocates out); ``nacl.bindings`` remains the fallback where the private module
is missing.  ``seal``/``open`` are the bytes-in, bytes-out forms of the same calls.
"""

from __future__ import annotations

import math
import struct
from typing import Callable

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
)
from meshvpn.errors import LocalProtocolError
from meshvpn.noise import SessionKeys
from meshvpn.replay import ReplayWindow

try:
    from nacl._sodium import ffi as _ffi, lib as _lib
except ImportError:  # a PyNaCl without its cffi module: the public bindings still work
    _ffi = _lib = None

_DATA = int(wire.MessageType.DATA)
_KEEPALIVE = int(wire.MessageType.KEEPALIVE)
_VERSION = wire.VERSION
_HEADER_LEN = wire.TRANSPORT_HEADER_LEN
_TAG_LEN = wire.TAG_LEN
OVERHEAD = _HEADER_LEN + _TAG_LEN
"""Bytes a transport message adds to its payload (header and tag)."""
_pack_header = wire.TRANSPORT_HEADER.pack_into
_unpack_header = wire.TRANSPORT_HEADER.unpack_from
_unpack_index = struct.Struct("<I").unpack_from
_pack_nonce_counter = struct.Struct("<Q").pack_into

BACKENDS: tuple[str, ...] = ("cffi", "bindings") if _lib is not None else ("bindings",)
"""AEAD back ends available here, fastest first."""
DEFAULT_BACKEND = BACKENDS[0]

SealAt = Callable[[bytearray, int, object, int, int, int], None]
"""seal_at(out, at, src, start, end, counter): header at out[at:] → ciphertext and tag after it."""
OpenAt = Callable[[bytearray, int, int, int], bool]
"""open_at(buf, at, end, counter): authenticate buf[at:end] and decrypt its body in place."""


def _cffi_aead(send_key: bytes, recv_key: bytes) -> tuple[SealAt, OpenAt]:
    """libsodium through cffi: pointers into the caller's buffers, cached while the buffer stays the same.

    Bounds are checked here because libsodium writes through raw pointers.
    """
    encrypt = _lib.crypto_aead_chacha20poly1305_ietf_encrypt
    decrypt = _lib.crypto_aead_chacha20poly1305_ietf_decrypt
    from_buffer = _ffi.from_buffer
    null = _ffi.NULL
    seal_nonce, open_nonce = bytearray(12), bytearray(12)
    seal_nonce_ptr, open_nonce_ptr = from_buffer(seal_nonce), from_buffer(open_nonce)
    send_key_ptr, recv_key_ptr = from_buffer(send_key), from_buffer(recv_key)
    out_buf = src_buf = in_buf = out_ptr = src_ptr = in_ptr = None

    def seal_at(out: bytearray, at: int, src, start: int, end: int, counter: int) -> None:
        nonlocal out_buf, out_ptr, src_buf, src_ptr
        if at < 0 or start < 0 or end > len(src) or at + OVERHEAD + end - start > len(out):
            raise LocalProtocolError("seal_into: range outside its buffer")
        if out is not out_buf:
            out_buf, out_ptr = out, from_buffer(out, require_writable=True)
        if src is not src_buf:
            src_buf, src_ptr = src, from_buffer(src)
        _pack_nonce_counter(seal_nonce, 4, counter)
        encrypt(out_ptr + (at + _HEADER_LEN), null, src_ptr + start, end - start,
                out_ptr + at, _HEADER_LEN, null, seal_nonce_ptr, send_key_ptr)

    def open_at(buf: bytearray, at: int, end: int, counter: int) -> bool:
        nonlocal in_buf, in_ptr
        if at < 0 or end > len(buf):
            return False
        if buf is not in_buf:
            in_buf, in_ptr = buf, from_buffer(buf, require_writable=True)
        _pack_nonce_counter(open_nonce, 4, counter)
        body = in_ptr + (at + _HEADER_LEN)
        return not decrypt(body, null, null, body, end - at - _HEADER_LEN, in_ptr + at, _HEADER_LEN,
                           open_nonce_ptr, recv_key_ptr)

    return seal_at, open_at


def _bindings_aead(send_key: bytes, recv_key: bytes) -> tuple[SealAt, OpenAt]:
    """``nacl.bindings``: bytes copied in, a new bytes object out, copied into place."""
    encrypt = bindings.crypto_aead_chacha20poly1305_ietf_encrypt
    decrypt = bindings.crypto_aead_chacha20poly1305_ietf_decrypt
    crypto_error = exceptions.CryptoError
    seal_nonce, open_nonce = bytearray(12), bytearray(12)

    def seal_at(out: bytearray, at: int, src, start: int, end: int, counter: int) -> None:
        if at < 0 or start < 0 or end > len(src) or at + OVERHEAD + end - start > len(out):
            raise LocalProtocolError("seal_into: range outside its buffer")
        _pack_nonce_counter(seal_nonce, 4, counter)
        body = at + _HEADER_LEN
        out[body : body + end - start + _TAG_LEN] = encrypt(
            bytes(src[start:end]), bytes(out[at:body]), bytes(seal_nonce), send_key)

    def open_at(buf: bytearray, at: int, end: int, counter: int) -> bool:
        _pack_nonce_counter(open_nonce, 4, counter)
        body = at + _HEADER_LEN
        try:
            plain = decrypt(bytes(buf[body:end]), bytes(buf[at:body]), bytes(open_nonce), recv_key)
        except crypto_error:
            return False
        buf[body : body + len(plain)] = plain
        return True

    return seal_at, open_at


_AEADS = {"cffi": _cffi_aead, "bindings": _bindings_aead}


def _open_copy(open_into: Callable[[bytearray, int, int], int], msg) -> bytes | None:
    """The bytes-in, bytes-out form of an ``open_into``: one copy in, one copy of the plaintext out."""
    buf = bytearray(msg)
    length = open_into(buf, 0, len(buf))
    return None if length < 0 else bytes(buf[_HEADER_LEN : _HEADER_LEN + length])


class SessionExhausted(LocalProtocolError):
    """The session has sent REJECT_AFTER_MESSAGES messages; a new handshake is required."""


class Session:
    """One direction-pair of transport keys with its counters, replay window and deadlines."""

    __slots__ = (
        "local_index", "remote_index", "remote_public", "is_initiator", "created_at",
        "send_counter", "rekey_at", "expires_at", "backend",
        "send_key", "recv_key", "window", "shared_counter", "_seal_at", "_open_at",
    )

    def __init__(self, keys: SessionKeys, created_at: float, backend: str = DEFAULT_BACKEND) -> None:
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
        self.backend = backend
        """Which AEAD implementation seals and opens (one of BACKENDS)."""
        self.send_key = keys.send_key
        self.recv_key = keys.recv_key
        """The transport keys, for meshvpn.node.datapath.fastpath's native loops (they seal and open with them)."""
        self.window = ReplayWindow()
        """Counters seen; the native loops read and update the same window."""
        self.shared_counter = None
        """Once the native loop's thread also seals with this session: the counter both threads take
        from atomically (a ``meshvpn._fastpath.NativeCounter``), in place of ``send_counter``."""
        self._seal_at, self._open_at = _AEADS[backend](keys.send_key, keys.recv_key)

    def seal_into(self, out: bytearray, at: int, src, start: int, end: int, kind: int = _DATA) -> int:
        """Write the message carrying ``src[start:end]`` at ``out[at:]``; the offset where it ends.

        ``src`` is any buffer (the TUN's read buffer, bytes); ``out`` a writable one with room
        for ``OVERHEAD`` more bytes than the packet.  DATA needs a payload, KEEPALIVE has none.
        Raises LocalProtocolError otherwise and SessionExhausted when the counters run out.
        """
        if (end <= start) is (kind == _DATA):
            raise LocalProtocolError("DATA needs a payload and KEEPALIVE has none")
        shared = self.shared_counter
        counter = self.send_counter if shared is None else shared.take(1)
        if counter >= REJECT_AFTER_MESSAGES:
            raise SessionExhausted("session nonce space exhausted")
        _pack_header(out, at, _VERSION, kind, 0, self.remote_index, counter)
        self._seal_at(out, at, src, start, end, counter)
        if shared is None:
            self.send_counter = counter + 1
        return at + OVERHEAD + end - start

    def seal(self, payload: bytes) -> bytes:
        """A complete DATA message carrying ``payload`` (bytes, non-empty)."""
        out = bytearray(OVERHEAD + len(payload))
        self.seal_into(out, 0, payload, 0, len(payload))
        return bytes(out)

    def keepalive(self) -> bytes:
        """A complete KEEPALIVE message (authenticated, empty)."""
        out = bytearray(OVERHEAD)
        self.seal_into(out, 0, b"", 0, 0, _KEEPALIVE)
        return bytes(out)

    def open_into(self, buf: bytearray, at: int, end: int) -> int:
        """Open the transport message ``buf[at:end]`` in place: the plaintext length, or -1 to drop it.

        The plaintext lands at ``buf[at + 16 : at + 16 + length]``; a KEEPALIVE opens to length 0.
        Forged, altered, replayed, too old, or addressed to another index: -1, and the buffer's
        bytes are then unspecified.  The replay window is consulted before decrypting and
        updated only after.
        """
        size = end - at
        if size < OVERHEAD or at < 0:
            return -1
        version, kind, reserved, index, counter = _unpack_header(buf, at)
        if index != self.local_index or version != _VERSION or reserved:
            return -1
        if kind == _DATA:
            if size == OVERHEAD:
                return -1
        elif kind != _KEEPALIVE or size != OVERHEAD:
            return -1
        window = self.window
        if counter <= window.greatest and not window.check(counter):
            return -1
        if not self._open_at(buf, at, end, counter) or not window.check_and_update(counter):
            return -1
        return size - OVERHEAD

    def open(self, msg: bytes | bytearray | memoryview) -> bytes | None:
        """The plaintext of a DATA (non-empty) or KEEPALIVE (b"") message, or None to drop it."""
        return _open_copy(self.open_into, msg)

    def messages_sent(self) -> int:
        """Counters taken so far, by either thread."""
        return self.send_counter if self.shared_counter is None else self.shared_counter.value

    def needs_rekey(self, now: float) -> bool:
        """Should a new handshake start (checked when sending)?"""
        return self.messages_sent() >= REKEY_AFTER_MESSAGES or now >= self.rekey_at

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

    def open_into(self, buf: bytearray, at: int, end: int) -> int:
        """Open ``buf[at:end]`` in place with the held session it is addressed to (see Session.open_into)."""
        if end - at < OVERHEAD or at < 0:
            return -1
        index = _unpack_index(buf, at + 4)[0]
        session = self.current
        if session is None or session.local_index != index:
            session = self.session_for(index)
            if session is None:
                return -1
        length = session.open_into(buf, at, end)
        if length >= 0 and session is self.next:
            self._retire(self.previous)
            self.previous, self.current, self.next = self.current, session, None
        return length

    def open(self, msg: bytes | bytearray | memoryview) -> bytes | None:
        """Open a transport message with whichever held session it is addressed to."""
        return _open_copy(self.open_into, msg)

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
