"""Handshakes in flight: when to (re)send an initiation, when to give up, and replay refusal.

Rules, in WireGuard's spirit (``meshvpn.constants`` holds the protocol values):

* An initiation is retried with backoff (1 s, 2 s, 4 s, then every REKEY_TIMEOUT), each
  gap plus up to a third of a second of jitter so two peers do not keep colliding. Every
  retry is a new initiation (new ephemeral key, new index): the old one may be lost.
* After REKEY_ATTEMPT_TIME without a response the attempt is abandoned; the next packet
  for the peer starts a new one.
* A responder accepts an initiation only from a known peer and only if its timestamp is
  newer than every one accepted from that peer before, so a captured initiation replayed
  later is ignored (``meshvpn.noise.InitiationTimestamps``).
* Under a flood of initiations a responder asks for cookies (`gate`), and an initiator stamps
  its initiations with the peer's cookie and answers a new one at once
  (``meshvpn.node.handshake_cookies`` has the rules).

Sans-IO: randomness is a ``random_bytes(n)`` callable, time is ``now`` (monotonic) plus
``wall_offset`` (wall clock minus monotonic, for the TAI64N timestamp).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Callable, Optional

from meshvpn.constants import REKEY_ATTEMPT_TIME, REKEY_TIMEOUT
from meshvpn.cookie import CookieJar, decode_reply, stamp
from meshvpn.node.handshake_cookies import InitiationGate
from meshvpn.wire import MAC1_LEN, MAC2_LEN
from meshvpn.noise import (
    Initiator,
    InitiationTimestamps,
    PendingInitiation,
    SessionKeys,
    StaticIdentity,
    consume_initiation,
)

FIRST_RETRY = 1.0
"""Seconds before the first retry; later gaps double up to REKEY_TIMEOUT."""

MAX_JITTER = 1 / 3
"""Largest random extra delay added to each retry gap."""


@dataclass
class Attempt:
    """One peer's outgoing handshake: the live initiation and its retry schedule."""

    initiator: Initiator
    """The initiation currently awaiting its response."""
    started_at: float
    """When the first initiation of this attempt was made."""
    next_retry: float
    """When a new initiation replaces this one if no response came."""
    tries: int = 1
    """Initiations made so far in this attempt."""
    sent: bool = False
    """Whether the current initiation went out (not while the peer has no route)."""
    stamped_with: Optional[bytes] = None
    """The peer's cookie the current initiation last went out with, if any."""

    @property
    def index(self) -> int:
        """Our index in this initiation; the response is addressed to it."""
        return self.initiator.sender_index


class HandshakeManager:
    """Outgoing attempts per peer key and the responder's replay protection.

    `attempts` and `cookies` are per-peer state: the node core passes mappings that keep them on
    its peers (``meshvpn.node.peers.PeerSlot``). The replay timestamps outlive a peer on purpose:
    a peer removed and added again must not be open to its own old initiations.
    """

    def __init__(self, identity: StaticIdentity, random_bytes: Callable[[int], bytes], wall_offset: float,
                 attempts: MutableMapping[bytes, Attempt] | None = None,
                 cookies: MutableMapping[bytes, CookieJar] | None = None) -> None:
        self.identity = identity
        self.random_bytes = random_bytes
        self.wall_offset = wall_offset
        self.timestamps = InitiationTimestamps()
        self.attempts: MutableMapping[bytes, Attempt] = {} if attempts is None else attempts
        self.gate = InitiationGate(identity.public, random_bytes)
        """Which initiations get a Diffie-Hellman: all, until the node is under load."""
        self.cookies: MutableMapping[bytes, CookieJar] = {} if cookies is None else cookies
        """Per peer key, the latest cookie that peer gave us (kept across attempts)."""

    def start(self, peer_key: bytes, index: int, now: float) -> Attempt:
        """Begin an attempt (or make the next initiation of the running one) using ``index``."""
        attempt = self.attempts.get(peer_key)
        initiator = Initiator(self.identity, peer_key, index, self.random_bytes(32), now + self.wall_offset)
        if attempt is None:
            attempt = Attempt(initiator, now, now + self._gap(1))
            self.attempts[peer_key] = attempt
        else:
            attempt.initiator.wipe()
            attempt.initiator = initiator
            attempt.tries += 1
            attempt.sent = False
            attempt.stamped_with = None
            attempt.next_retry = now + self._gap(attempt.tries)
        return attempt

    def _gap(self, tries: int) -> float:
        base = min(FIRST_RETRY * 2 ** (tries - 1), REKEY_TIMEOUT)
        jitter = int.from_bytes(self.random_bytes(2), "little") / 0xFFFF * MAX_JITTER
        return base + jitter

    def due(self, now: float) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """Peers whose attempt needs a new initiation now, and (peer, our index) of the attempts that
        expired: the index names nothing any more."""
        retry, abandoned = [], []
        for key, attempt in self.attempts.items():
            if now >= attempt.started_at + REKEY_ATTEMPT_TIME:
                abandoned.append((key, attempt.index))
            elif now >= attempt.next_retry:
                retry.append(key)
        for key, _ in abandoned:
            self.cancel(key)
        return retry, abandoned

    def cancel(self, peer_key: bytes) -> Optional[Attempt]:
        attempt = self.attempts.pop(peer_key, None)
        if attempt is not None:
            attempt.initiator.wipe()
        return attempt

    def peer_keys(self) -> set[bytes]:
        """Peers with an attempt in flight or a cookie kept."""
        return set(self.attempts) | set(self.cookies)

    def initiation(self, peer_key: bytes, now: float) -> bytes:
        """The peer's live initiation as it goes out: stamped with the peer's cookie while that is young."""
        attempt = self.attempts[peer_key]
        jar = self.cookies.get(peer_key)
        cookie = None if jar is None else jar.current(now)
        attempt.sent, attempt.stamped_with = True, cookie
        message = attempt.initiator.initiation
        return message if cookie is None else stamp(cookie, message + bytes(MAC2_LEN))

    def take_cookie(self, peer_key: bytes, msg: bytes, now: float) -> tuple[bool, Optional[bytes]]:
        """Keep a HANDSHAKE_COOKIE if it answers the peer's live initiation; whether it did, and
        that initiation to send again at once (stamped) if the cookie is news. Raises `WireError`."""
        reply = decode_reply(msg)
        attempt = self.attempts.get(peer_key)
        if attempt is None or not attempt.sent or reply.bound != attempt.index.to_bytes(4, "little"):
            return False, None
        jar = self.cookies.setdefault(peer_key, CookieJar(peer_key))
        if not jar.take(reply, attempt.initiator.initiation[-MAC1_LEN:], now):
            return False, None
        if jar.current(now) == attempt.stamped_with:
            return True, None
        return True, self.initiation(peer_key, now)

    def consume_response(self, peer_key: bytes, msg: bytes) -> Optional[SessionKeys]:
        """Session keys if ``msg`` answers the peer's live initiation; the attempt then ends."""
        attempt = self.attempts.get(peer_key)
        if attempt is None:
            return None
        keys = attempt.initiator.consume_response(msg)
        if keys is not None:
            del self.attempts[peer_key]
        return keys

    def consume_initiation(self, msg: bytes, is_peer: Callable[[bytes], bool]) -> Optional[PendingInitiation]:
        """A verified, fresh initiation from a known peer, its timestamp recorded; else None."""
        pending = consume_initiation(self.identity, msg, self.timestamps.last)
        if pending is None or not is_peer(pending.remote_public):
            return None
        self.timestamps.record(pending.remote_public, pending.timestamp)
        return pending

    def get_timer(self) -> Optional[float]:
        deadlines = [min(a.next_retry, a.started_at + REKEY_ATTEMPT_TIME) for a in self.attempts.values()]
        return min(deadlines, default=None)
