"""Cookies that prove a source address, in the manner of WireGuard's mac2, for relay hellos.

A relay hello from a UDP address proves the node's key but not that the node is *at* that
address: its source may be spoofed. When the relay needs that proof (a registration moves to a
new address or takes one another node holds, or the relay is under load and a hello would cost
a Diffie-Hellman) it answers a hello without a valid mac2 with a RELAY_COOKIE instead::

    header | hello nonce (24) | nonce (24) | XChaCha20-Poly1305(cookie (16))   # 84 bytes, under a hello

    cookie = BLAKE2s-128(key = secret, source address)   # the secret changes every 2 minutes
    reply key = BLAKE2b-256("cookie--" | relay public key); associated data = the hello's nonce

Only whoever receives datagrams at that address learns the cookie; the next hello from there
carries ``mac2 = BLAKE2b-128(key = cookie, hello up to mac2)``. The reply is smaller than the
hello that caused it, so a spoofed hello cannot make the relay an amplifier.
`CookieChecker` is the relay's side, `CookieJar` the node's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable, NamedTuple

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.wire import BOX_NONCE_LEN, MAC2_LEN, Endpoint, MessageType, WireError

COOKIE_LEN = 16
SECRET_LIFETIME = 120.0
"""Seconds a cookie secret is used; a cookie stays valid one lifetime more (the previous secret)."""
COOKIE_LIFETIME = SECRET_LIFETIME - 5.0
"""Seconds a node uses a cookie (a little less than the relay honours it)."""
REPLY_LEN = wire.HEADER_LEN + 2 * BOX_NONCE_LEN + COOKIE_LEN + wire.TAG_LEN


class CookieReply(NamedTuple):
    hello_nonce: bytes
    nonce: bytes
    sealed: bytes


def reply_key(relay_public: bytes) -> bytes:
    return hashlib.blake2b(b"cookie--" + relay_public, digest_size=32).digest()


def mac2(cookie: bytes, message: bytes | memoryview) -> bytes:
    """The MAC a hello ends with, over everything before it."""
    return hashlib.blake2b(memoryview(message)[:-MAC2_LEN], key=cookie, digest_size=MAC2_LEN).digest()


def decode_reply(buf: bytes | bytearray | memoryview) -> CookieReply:
    """Split a RELAY_COOKIE; raises only `WireError`."""
    if wire.message_type(buf) != MessageType.RELAY_COOKIE or len(buf) != REPLY_LEN:
        raise WireError(f"not a {REPLY_LEN}-byte relay cookie")
    view = memoryview(buf)
    start = wire.HEADER_LEN
    return CookieReply(bytes(view[start : start + BOX_NONCE_LEN]),
                       bytes(view[start + BOX_NONCE_LEN : start + 2 * BOX_NONCE_LEN]),
                       bytes(view[start + 2 * BOX_NONCE_LEN :]))


class CookieChecker:
    """The relay's side: cookies per source address, checked in hellos, sent when missing."""

    def __init__(self, relay_public: bytes, random_bytes: Callable[[int], bytes], now: float) -> None:
        self._reply_key = reply_key(relay_public)
        self._random_bytes = random_bytes
        self._secret = random_bytes(32)
        self._previous = self._secret
        self._rotated = now

    def valid(self, hello: bytes | memoryview, source: Endpoint, now: float) -> bool:
        """Whether `hello` from `source` ends with a mac2 made with a cookie for `source`."""
        self._rotate(now)
        got = bytes(memoryview(hello)[-MAC2_LEN:])
        if got == bytes(MAC2_LEN):
            return False
        return any(hmac.compare_digest(mac2(self._cookie(secret, source), hello), got)
                   for secret in {self._secret, self._previous})

    def reply(self, hello_nonce: bytes, source: Endpoint, now: float) -> bytes:
        """The RELAY_COOKIE that gives `source` its cookie, bound to the hello that asked."""
        self._rotate(now)
        nonce = self._random_bytes(BOX_NONCE_LEN)
        sealed = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            self._cookie(self._secret, source), hello_nonce, nonce, self._reply_key)
        return wire.header(MessageType.RELAY_COOKIE) + hello_nonce + nonce + sealed

    def _rotate(self, now: float) -> None:
        if now >= self._rotated + SECRET_LIFETIME:
            self._previous, self._secret = self._secret, self._random_bytes(32)
            self._rotated = now

    @staticmethod
    def _cookie(secret: bytes, source: Endpoint) -> bytes:
        return hashlib.blake2s(wire.encode_endpoint(Endpoint(*source)), key=secret, digest_size=COOKIE_LEN).digest()


class CookieJar:
    """The node's side for one relay: keeps the latest cookie and stamps hellos with it."""

    def __init__(self, relay_public: bytes) -> None:
        self._reply_key = reply_key(relay_public)
        self._cookie: bytes | None = None
        self._received = 0.0

    def consume(self, buf: bytes, hello_nonces: set[bytes] | dict, now: float) -> bytes | None:
        """Take a RELAY_COOKIE answering one of our hellos: the nonce of the hello it answers, or None."""
        try:
            reply = decode_reply(buf)
        except WireError:
            return None
        if reply.hello_nonce not in hello_nonces:
            return None
        try:
            cookie = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                reply.sealed, reply.hello_nonce, reply.nonce, self._reply_key)
        except exceptions.CryptoError:
            return None
        self._cookie, self._received = cookie, now
        return reply.hello_nonce

    def current(self, now: float) -> bytes | None:
        """The cookie hellos are stamped with at `now`: ours while it is young, else None."""
        if self._cookie is None or now >= self._received + COOKIE_LIFETIME:
            return None
        return self._cookie

    def stamp(self, hello: bytes, now: float) -> bytes:
        """`hello` with its mac2 set, if we hold a cookie young enough; else as it is."""
        cookie = self.current(now)
        return hello if cookie is None else hello[:-MAC2_LEN] + mac2(cookie, hello)
