"""Cookies that prove a source address, in the manner of WireGuard's mac2: relay hellos and initiations.

A relay hello or a handshake initiation from a UDP address proves (after a Diffie-Hellman) the
sender's key but not that the sender is *at* that address: its source may be spoofed. When the
receiver needs that proof before it spends anything (a relay registration moves to a new address
or the relay is under load; a node is under load from initiations) it answers a message without
a valid mac2 with a cookie reply instead, which gives the cookie only to whoever receives
datagrams at that address::

    RELAY_COOKIE     header | hello nonce (24)     | nonce (24) | XChaCha20-Poly1305(cookie (16))   # 84 bytes
    HANDSHAKE_COOKIE header | receiver index (4)   | nonce (24) | XChaCha20-Poly1305(cookie (16))   # 64 bytes

    cookie = BLAKE2s-128(key = secret, source)   # the secret changes every 2 minutes
    reply key = BLAKE2b-256("cookie--" | the receiver's public key)
    associated data = the hello's nonce, or the initiation's mac1

The source is the encoded UDP endpoint, or the sender's key as a relay named it (a relayed
initiation's proof is that the relay carried it from that key). The next message from there
carries ``mac2 = BLAKE2b-128(key = cookie, message up to mac2)``. Each reply is smaller than the
message that caused it, so a spoofed one cannot make the receiver an amplifier.
`CookieChecker` is the receiver's side, `CookieJar` the sender's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable, NamedTuple, Union

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.wire import BOX_NONCE_LEN, MAC2_LEN, Endpoint, MessageType, WireError

COOKIE_LEN = 16
SECRET_LIFETIME = 120.0
"""Seconds a cookie secret is used; a cookie stays valid one lifetime more (the previous secret)."""
COOKIE_LIFETIME = SECRET_LIFETIME - 5.0
"""Seconds a node uses a cookie (a little less than the relay honours it)."""
_SEALED_LEN = BOX_NONCE_LEN + COOKIE_LEN + wire.TAG_LEN
REPLY_LEN = wire.HEADER_LEN + BOX_NONCE_LEN + _SEALED_LEN
HANDSHAKE_REPLY_LEN = wire.HEADER_LEN + 4 + _SEALED_LEN
Source = Union[Endpoint, bytes]
"""Whom a cookie proves: a UDP endpoint, or the key a relay carried a message from."""


class CookieReply(NamedTuple):
    bound: bytes
    """What the reply answers: the hello's nonce (RELAY_COOKIE) or our receiver index (HANDSHAKE_COOKIE)."""
    nonce: bytes
    sealed: bytes


def reply_key(relay_public: bytes) -> bytes:
    return hashlib.blake2b(b"cookie--" + relay_public, digest_size=32).digest()


def mac2(cookie: bytes, message: bytes | memoryview) -> bytes:
    """The MAC a hello ends with, over everything before it."""
    return hashlib.blake2b(memoryview(message)[:-MAC2_LEN], key=cookie, digest_size=MAC2_LEN).digest()


_REPLIES = {MessageType.RELAY_COOKIE: REPLY_LEN, MessageType.HANDSHAKE_COOKIE: HANDSHAKE_REPLY_LEN}


def decode_reply(buf: bytes | bytearray | memoryview) -> CookieReply:
    """Split a RELAY_COOKIE or a HANDSHAKE_COOKIE; raises only `WireError`."""
    kind = wire.message_type(buf)
    if _REPLIES.get(kind) != len(buf):
        raise WireError("not a relay cookie (84 bytes) or handshake cookie (64 bytes)")
    view = memoryview(buf)
    nonce = len(buf) - _SEALED_LEN
    return CookieReply(bytes(view[wire.HEADER_LEN : nonce]), bytes(view[nonce : nonce + BOX_NONCE_LEN]),
                       bytes(view[nonce + BOX_NONCE_LEN :]))


def stamp(cookie: bytes | None, message: bytes) -> bytes:
    """`message` (which ends with room for mac2) with its mac2 set, or as it is without a cookie."""
    return message if cookie is None else message[:-MAC2_LEN] + mac2(cookie, message)


class CookieChecker:
    """The receiver's side: cookies per source, checked in messages, sent when missing."""

    def __init__(self, own_public: bytes, random_bytes: Callable[[int], bytes], now: float) -> None:
        self._reply_key = reply_key(own_public)
        self._random_bytes = random_bytes
        self._secret = random_bytes(32)
        self._previous = self._secret
        self._rotated = now

    def valid(self, message: bytes | memoryview, source: Source, now: float) -> bool:
        """Whether `message` from `source` ends with a mac2 made with a cookie for `source`."""
        self._rotate(now)
        got = bytes(memoryview(message)[-MAC2_LEN:])
        if got == bytes(MAC2_LEN):
            return False
        return any(hmac.compare_digest(mac2(self._cookie(secret, source), message), got)
                   for secret in {self._secret, self._previous})

    def reply(self, hello_nonce: bytes, source: Source, now: float) -> bytes:
        """The RELAY_COOKIE that gives `source` its cookie, bound to the hello that asked."""
        return wire.header(MessageType.RELAY_COOKIE) + hello_nonce + self._sealed(hello_nonce, source, now)

    def handshake_reply(self, receiver_index: bytes, mac1: bytes, source: Source, now: float) -> bytes:
        """The HANDSHAKE_COOKIE that gives `source` its cookie, bound to the initiation (its mac1) that asked."""
        return wire.header(MessageType.HANDSHAKE_COOKIE) + receiver_index + self._sealed(mac1, source, now)

    def _sealed(self, associated: bytes, source: Source, now: float) -> bytes:
        self._rotate(now)
        nonce = self._random_bytes(BOX_NONCE_LEN)
        return nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            self._cookie(self._secret, source), associated, nonce, self._reply_key)

    def _rotate(self, now: float) -> None:
        if now >= self._rotated + SECRET_LIFETIME:
            self._previous, self._secret = self._secret, self._random_bytes(32)
            self._rotated = now

    @staticmethod
    def _cookie(secret: bytes, source: Source) -> bytes:
        named = source if isinstance(source, bytes) else wire.encode_endpoint(Endpoint(*source))
        return hashlib.blake2s(named, key=secret, digest_size=COOKIE_LEN).digest()


class CookieJar:
    """The sender's side for one receiver (a relay, a peer): keeps the latest cookie and stamps with it."""

    def __init__(self, receiver_public: bytes) -> None:
        self._reply_key = reply_key(receiver_public)
        self._cookie: bytes | None = None
        self._received = 0.0

    def consume(self, buf: bytes, hello_nonces: set[bytes] | dict, now: float) -> bytes | None:
        """Take a RELAY_COOKIE answering one of our hellos: the nonce of the hello it answers, or None."""
        try:
            reply = decode_reply(buf)
        except WireError:
            return None
        if len(buf) != REPLY_LEN or reply.bound not in hello_nonces:
            return None
        return reply.bound if self.take(reply, reply.bound, now) else None

    def take(self, reply: CookieReply, associated: bytes, now: float) -> bool:
        """Keep the cookie of `reply` if it opens with `associated` (what the message it answers bound it to)."""
        try:
            cookie = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                reply.sealed, associated, reply.nonce, self._reply_key)
        except exceptions.CryptoError:
            return False
        self._cookie, self._received = cookie, now
        return True

    def current(self, now: float) -> bytes | None:
        """The cookie hellos are stamped with at `now`: ours while it is young, else None."""
        if self._cookie is None or now >= self._received + COOKIE_LIFETIME:
            return None
        return self._cookie

    def stamp(self, hello: bytes, now: float) -> bytes:
        """`hello` with its mac2 set, if we hold a cookie young enough; else as it is."""
        return stamp(self.current(now), hello)
