"""The node core's one timer: the earliest deadline of its machines, and what is due when it fires.

A part of :class:`~meshvpn.node.core.NodeCore` (its base class, which provides every attribute
used here), one concern with its own rules:

* A peer's deadline is the earliest of its machines' (pings, path finder, key ring, the coord's
  scheduled punches) and its rekey: the side whose session is due (REKEY_AFTER_TIME for the
  initiator, shortly before REJECT_AFTER_TIME for the responder) starts a new handshake, but only
  if the session carried traffic since it was made (idle peers let their sessions expire).
* The peers' deadlines are kept in a heap (:mod:`meshvpn.node.peertimers`): whatever changes a
  peer marks it (``peers.touched``; the data path's traffic, ``peers.trafficked``), so asking costs
  the marked peers, and the timer looks only at the peers due or marked, never the whole table.
* Node-wide deadlines: handshakes in flight, hard-NAT re-samples, and the look at the data path's
  traffic times (:mod:`meshvpn.node.recovery`).
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
        """The earliest deadline of any peer, handshake, re-sample or look at the traffic."""
        deadlines = (self.timers.get_timer(), self.handshakes.get_timer(), self.punching.get_timer(),
                     self._watch_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def _peer_deadline(self, peer: Peer) -> Optional[float]:
        """The earliest deadline of the peer's machines, its scheduled punches and its rekey."""
        deadlines = (peer.pings.get_timer(), peer.paths.get_timer(), peer.ring.get_timer(),
                     self._rekey_deadline(peer), min(peer.punches_due, default=None))
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
        peers = self.timers.due(now)
        for peer in peers:
            peer.pings.expire(now)
        self.punching.handle_timer(now, peers)
        for peer in self.timers.due(now):  # the same, and any that the punches and re-samples touched
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
        for key, index in abandoned:
            peer = self.peers.by_key[key]
            self.peers.unindex(index, peer)
            self.peers.touched.add(peer)
            peer.counters.drops["handshake timeout"] += len(peer.pending)
            peer.pending.clear()
            if peer.ring.current is None:
                self._events.append(PeerDown(peer.name, "handshake timed out"))
