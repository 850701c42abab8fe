"""Authenticated path probes: hole punching and path checks between two nodes.

A probe says "this is node K, I sent this to endpoint E at time T"; the reply says "I
saw your probe come from endpoint S".  Both are sealed with the static-static
``crypto_box`` key of the two nodes (``meshvpn.wire.seal``), so nobody on the
path can forge a path into existence or learn the endpoints, and a node never
spends an X25519 operation on a key that is not one of its peers: the codec
only opens envelopes from keys it was told about.

Sealing is not enough against replay: a captured probe, sent again from an
attacker's address, would make the receiver probe the attacker, who could then
sit between the two peers.  So:

* every probe and reply carries a stamp (the sender's wall clock in µs, strictly
  increasing per receiver); the receiver takes a stamp once, refuses one more than
  PROBE_MAX_SKEW from its own clock ("stale probe") and one seen before or older
  than the PROBE_REORDER window below the newest ("replayed probe");
* a probe names the endpoint it was sent to, and the receiver takes it only when
  that is one of its own addresses (``addressed_to_us``): a probe the peer sent to
  someone else, forwarded to us, is refused ("probe for another address").

Both are checked by :meth:`ProbeCodec.open`, which raises :class:`ProbeRefused`
(a ``RemoteProtocolError`` naming the reason) for an authentic probe it will not
take.  Sans-IO: the wall clock is an argument.
"""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Iterable, NamedTuple

from meshvpn import wire
from meshvpn.errors import RemoteProtocolError
from meshvpn.wire import Endpoint, MessageType, PathProbe, WireError

PROBE_MAX_SKEW = 120.0
"""Seconds a probe's stamp may be from our wall clock, either way (clocks must agree this well)."""
PROBE_REORDER = 2.0
"""Seconds of stamps below the newest one from a peer that are still taken (once): reordering."""
MAX_REMEMBERED = 4096
"""Stamps remembered per peer inside the reorder window; past it the oldest become the floor."""
_US = 1_000_000


class ProbeFromStranger(RemoteProtocolError):
    """``ProbeFromStranger(kind, sender)``: a probe or reply from a key that is not a peer, not opened
    (we hold no box key for it, and compute none for a key we were not told about); ``reason`` names
    its drop counter. The exception's own arguments hold the fields (no ``__init__`` of ours: a flood
    of random keys raises one per datagram)."""

    reason = "probe from unknown key"

    def __str__(self) -> str:
        return self.reason

    @property
    def kind(self) -> int:
        return self.args[0]

    @property
    def sender(self) -> bytes:
        return self.args[1]


class ProbeRefused(RemoteProtocolError):
    """An authentic probe or reply that is not taken; ``reason`` names the drop counter of ``sender``."""

    def __init__(self, reason: str, sender: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sender = sender


@dataclass
class SeenStamps:
    """Stamps taken from one peer: each once, none at or below ``floor``.

    Every stamp above ``floor`` that was taken is in ``stamps`` (in arrival order, which is
    nearly stamp order), so pruning from the front and raising the floor keep the rule.
    """

    floor: int = -1
    newest: int = -1
    stamps: dict[int, None] = field(default_factory=dict)

    def take(self, stamp: int) -> bool:
        if stamp <= self.floor or stamp in self.stamps:
            return False
        stamps = self.stamps
        stamps[stamp] = None
        if stamp > self.newest:
            self.newest = stamp
            self.floor = max(self.floor, stamp - int(PROBE_REORDER * _US))
            for old in list(takewhile(lambda s: s <= self.floor, stamps)):
                del stamps[old]
        if len(stamps) > MAX_REMEMBERED:
            oldest = next(iter(stamps))
            del stamps[oldest]
            self.floor = max(self.floor, oldest)
        return True


class OpenedProbe(NamedTuple):
    """A probe or probe reply that passed authentication."""

    kind: int
    """``MessageType.PROBE`` or ``MessageType.PROBE_REPLY``."""
    sender: bytes
    """The sending node's static public key."""
    tx_id: bytes
    """The 8-byte transaction id chosen by the prober."""
    endpoint: Endpoint
    """PROBE: where the prober sent it; PROBE_REPLY: where the probe was seen from."""
    newest: bool = False
    """Its stamp is the newest taken from the sender: no copy of an older probe, held back and
    sent later, so it may move a silent path as the newest data does (`docs/security.md`)."""


class ProbeCodec:
    """Seals and opens probes for one node, caching the box key and the stamps per peer (in the
    mappings given, which the node core keeps on its peers)."""

    def __init__(self, private_key: bytes, public_key: bytes, keys: MutableMapping[bytes, bytes] | None = None,
                 sent: MutableMapping[bytes, int] | None = None,
                 seen: MutableMapping[bytes, SeenStamps] | None = None) -> None:
        self._private = private_key
        self._public = public_key
        self._keys: MutableMapping[bytes, bytes] = {} if keys is None else keys
        self._sent: MutableMapping[bytes, int] = {} if sent is None else sent
        self._seen: MutableMapping[bytes, SeenStamps] = {} if seen is None else seen
        """The peer's stamps taken (replays refused)."""
        self.own_hosts: frozenset = frozenset()
        """Our addresses (LAN interfaces, the public one): where probes to us were sent."""

    def add_peer(self, peer_public: bytes) -> None:
        """Accept probes from ``peer_public`` (computes the shared key once)."""
        if peer_public not in self._keys:
            self._keys[peer_public] = wire.box_key(self._private, peer_public)

    def remove_peer(self, peer_public: bytes) -> None:
        self._keys.pop(peer_public, None)
        self._sent.pop(peer_public, None)
        self._seen.pop(peer_public, None)

    def peer_keys(self) -> set[bytes]:
        return set(self._keys) | set(self._sent) | set(self._seen)

    def set_own_hosts(self, hosts: Iterable[str]) -> None:
        """Our addresses as the shell knows them (interfaces, STUN mapping); replaces the previous set."""
        self.own_hosts = frozenset(ipaddress.ip_address(host) for host in hosts)

    def addressed_to_us(self, endpoint: Endpoint) -> bool:
        """Whether a probe sent to ``endpoint`` was meant for one of our addresses (ports are the NATs')."""
        return ipaddress.ip_address(endpoint.host) in self.own_hosts

    def probe(self, peer_public: bytes, tx_id: bytes, dst: Endpoint, nonce: bytes, wall: float) -> bytes:
        """A PROBE for ``peer_public`` sent to ``dst`` at ``wall`` (seconds); ``nonce`` is 24 random bytes."""
        return self._seal(MessageType.PROBE, peer_public, tx_id, dst, nonce, wall)

    def reply(self, peer_public: bytes, tx_id: bytes, seen_from: Endpoint, nonce: bytes, wall: float) -> bytes:
        """The PROBE_REPLY to a probe with ``tx_id`` that arrived from ``seen_from``."""
        return self._seal(MessageType.PROBE_REPLY, peer_public, tx_id, seen_from, nonce, wall)

    def _seal(self, kind: MessageType, peer_public: bytes, tx_id: bytes, endpoint: Endpoint, nonce: bytes,
              wall: float) -> bytes:
        stamp = self._sent[peer_public] = max(self._sent.get(peer_public, 0) + 1, int(wall * _US))
        return wire.seal(kind, self._public, nonce, self._keys[peer_public], PathProbe(tx_id, endpoint, stamp))

    def open(self, buf: bytes | bytearray | memoryview, wall: float, check_address: bool = True) -> OpenedProbe:
        """Authenticate a fresh PROBE or PROBE_REPLY; raise ``ProbeFromStranger`` for one from a key that is
        not a peer, ``ProbeRefused`` for one not taken, ``WireError`` for anything else.

        A PROBE must also be addressed to us, unless ``check_address`` is False (a probe
        through the relay or a TCP path, sent to whatever carries it, which makes no path).
        """
        sealed = wire.decode_sealed(buf)
        if sealed.kind != MessageType.PROBE and sealed.kind != MessageType.PROBE_REPLY:
            raise WireError(f"type {sealed.kind} is not a path probe")
        key = self._keys.get(sealed.sender_public)
        if key is None:
            raise ProbeFromStranger(sealed.kind, sealed.sender_public)
        payload = wire.open_sealed(sealed, key)
        if abs(payload.stamp - wall * _US) > PROBE_MAX_SKEW * _US:
            raise ProbeRefused("stale probe", sealed.sender_public)
        if check_address and sealed.kind == MessageType.PROBE and not self.addressed_to_us(payload.endpoint):
            raise ProbeRefused("probe for another address", sealed.sender_public)
        seen = self._seen.setdefault(sealed.sender_public, SeenStamps())
        if not seen.take(payload.stamp):
            raise ProbeRefused("replayed probe", sealed.sender_public)
        return OpenedProbe(sealed.kind, sealed.sender_public, payload.tx_id, payload.endpoint,
                           payload.stamp == seen.newest)


PROBE_TARGET_HOSTS = 16
"""Distinct addresses probed for one peer within PROBE_TARGET_WINDOW (its LAN ones, public, observed)."""
PROBE_TARGET_WINDOW = 60.0
"""Seconds an address probed for a peer counts against PROBE_TARGET_HOSTS."""
PROBE_RATE = 300.0
"""Probes a second sent for one peer, on average (birthday probing's rate, the highest any strategy needs)."""
PROBE_BURST = 600
"""Probes for one peer that may leave at once after a quiet spell."""


@dataclass
class ProbeAllowance:
    """One peer's probe budget (kept on the peer, ``Peer.probe_allowance``)."""

    tokens: float
    at: float
    hosts: dict[str, float] = field(default_factory=dict)
    """Address → when a probe for this peer last went there."""


class ProbeBudget:
    """How many addresses, and how many probes a second, we probe for each peer.

    Why: the targets come from the peer (through the coord's punch messages) and from where
    its packets arrived, so without a bound a member could make its peers spray probes at
    any address it names.  A probe over budget is not sent; ``allow`` says which limit it hit.
    """

    def __init__(self, max_hosts: int = PROBE_TARGET_HOSTS, window: float = PROBE_TARGET_WINDOW,
                 rate: float = PROBE_RATE, burst: int = PROBE_BURST,
                 peers: MutableMapping[bytes, ProbeAllowance] | None = None) -> None:
        self.max_hosts, self.window, self.rate, self.burst = max_hosts, window, rate, burst
        self._peers: MutableMapping[bytes, ProbeAllowance] = {} if peers is None else peers

    def allow(self, peer: bytes, target: Endpoint, now: float) -> str | None:
        """None if a probe for ``peer`` may go to ``target`` now (and count it); else the drop reason."""
        allowance = self._peers.get(peer)
        if allowance is None:
            allowance = self._peers[peer] = ProbeAllowance(float(self.burst), now)
        allowance.tokens = min(float(self.burst), allowance.tokens + (now - allowance.at) * self.rate)
        allowance.at = now
        if allowance.tokens < 1.0:
            return "probe budget: rate"
        hosts = allowance.hosts
        for host in [h for h, when in hosts.items() if now - when > self.window]:
            del hosts[host]
        if target.host not in hosts and len(hosts) >= self.max_hosts:
            return "probe budget: targets"
        hosts[target.host] = now
        allowance.tokens -= 1.0
        return None

    def peer_keys(self) -> set[bytes]:
        return set(self._peers)
