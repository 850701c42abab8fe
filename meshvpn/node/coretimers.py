"""The node core's one timer: the earliest deadline of its machines, and what is due when it fires.

A part of :class:`~meshvpn.node.core.NodeCore` (its base class, which provides every attribute
used here), one concern with its own rules:

* A peer's deadline is the earliest of its machines' (pings, path finder, key ring) and its
  rekey: the side whose session is due (REKEY_AFTER_TIME for the initiator, shortly before
  REJECT_AFTER_TIME for the responder) starts a new handshake, but only if the session
  carried traffic since it was made (idle peers let their sessions expire).
* Node-wide deadlines: handshakes in flight, scheduled punches and re-samples, and the look at
  the data path's traffic times (:mod:`meshvpn.node.recovery`).
* ``handle_timer`` is safe to call early or late: each machine does only what is due.
"""

from __future__ import annotations

from typing import Optional

from meshvpn.constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT
from meshvpn.node.events import PeerDown
from meshvpn.node.peers import Peer

RESPONDER_REKEY_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
"""A responder whose session carries traffic rekeys itself at this age (WireGuard's rule)."""


class CoreTimers:
    """The timer methods of the node core."""

    def get_timer(self) -> Optional[float]:
        """The earliest deadline of any peer, handshake, scheduled punch or ping."""
        deadlines = [self.handshakes.get_timer(), self.punching.get_timer()]
        for peer in self.peers:
            deadlines.append(peer.pings.get_timer())
            deadlines.append(peer.paths.get_timer())
            deadlines.append(peer.ring.get_timer())
            deadlines.append(self._rekey_deadline(peer))
        deadlines.append(self._watch_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def _rekey_deadline(self, peer: Peer) -> Optional[float]:
        session = peer.ring.current
        if session is None or peer.key in self.handshakes.attempts:
            return None
        if max(peer.last_tx, peer.last_rx) <= session.created_at:
            return None
        return session.rekey_at if session.is_initiator else session.created_at + RESPONDER_REKEY_AGE

    def handle_timer(self, now: float) -> None:
        """Do everything due at ``now``; safe to call early or late."""
        self._watched_at = now
        for peer in self.peers:
            peer.pings.expire(now)
        self.punching.handle_timer(now)
        for peer in self.peers:
            self.sync_traffic(peer)
            peer.paths.handle_timer(now)
            self._drain_paths(peer, now)
            self.ring_expire(peer, now)
            rekey_at = self._rekey_deadline(peer)
            if rekey_at is not None and now >= rekey_at:
                self._initiate(peer, now)
        retry, abandoned = self.handshakes.due(now)
        for key in retry:
            self._initiate(self.peers.by_key[key], now)
        for key in abandoned:
            peer = self.peers.by_key[key]
            peer.counters.drops["handshake timeout"] += len(peer.pending)
            peer.pending.clear()
            if peer.ring.current is None:
                self._events.append(PeerDown(peer.name, "handshake timed out"))
