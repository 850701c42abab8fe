"""Authenticated path probes: hole punching and path checks between two nodes.

A probe says "this is node K, I sent this to endpoint E"; the reply says "I saw
your probe come from endpoint S".  Both are sealed with the static-static
``crypto_box`` key of the two nodes (``meshvpn.wire.seal``), so nobody on the
path can forge a path into existence or learn the endpoints, and a node never
spends an X25519 operation on a key that is not one of its peers: the codec
only opens envelopes from keys it was told about.
"""

from __future__ import annotations

from typing import NamedTuple

from meshvpn import wire
from meshvpn.wire import Endpoint, MessageType, PathProbe, WireError


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


class ProbeCodec:
    """Seals and opens probes for one node, caching the box key per peer."""

    def __init__(self, private_key: bytes, public_key: bytes) -> None:
        self._private = private_key
        self._public = public_key
        self._keys: dict[bytes, bytes] = {}

    def add_peer(self, peer_public: bytes) -> None:
        """Accept probes from ``peer_public`` (computes the shared key once)."""
        if peer_public not in self._keys:
            self._keys[peer_public] = wire.box_key(self._private, peer_public)

    def remove_peer(self, peer_public: bytes) -> None:
        self._keys.pop(peer_public, None)

    def probe(self, peer_public: bytes, tx_id: bytes, dst: Endpoint, nonce: bytes) -> bytes:
        """A PROBE for ``peer_public`` sent to ``dst``; ``nonce`` is 24 random bytes."""
        return self._seal(MessageType.PROBE, peer_public, PathProbe(tx_id, dst), nonce)

    def reply(self, peer_public: bytes, tx_id: bytes, seen_from: Endpoint, nonce: bytes) -> bytes:
        """The PROBE_REPLY to a probe with ``tx_id`` that arrived from ``seen_from``."""
        return self._seal(MessageType.PROBE_REPLY, peer_public, PathProbe(tx_id, seen_from), nonce)

    def _seal(self, kind: MessageType, peer_public: bytes, payload: PathProbe, nonce: bytes) -> bytes:
        return wire.seal(kind, self._public, nonce, self._keys[peer_public], payload)

    def open(self, buf: bytes | bytearray | memoryview) -> OpenedProbe:
        """Authenticate a PROBE or PROBE_REPLY; raise ``WireError`` for anything else."""
        sealed = wire.decode_sealed(buf)
        if sealed.kind != MessageType.PROBE and sealed.kind != MessageType.PROBE_REPLY:
            raise WireError(f"type {sealed.kind} is not a path probe")
        key = self._keys.get(sealed.sender_public)
        if key is None:
            raise WireError("probe from a key that is not a peer")
        payload = wire.open_sealed(sealed, key)
        return OpenedProbe(sealed.kind, sealed.sender_public, payload.tx_id, payload.endpoint)
