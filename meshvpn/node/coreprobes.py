"""The node core's path probes: those that arrive, those it sends within each peer's budget, and pings.

A part of :class:`~meshvpn.node.core.NodeCore` (its base class, which provides every attribute used
here: ``probes``, ``probe_budget``, ``strangers``, ``peers``, ``routes``, ``punching``, ``socket_for``,
``drops``, ``config``, ``random_bytes``, ``_events``, ``_send_via``, ``_drain_paths``,
``datagram_received``), one concern with its own rules (``docs/paths.md``, ``docs/protocol.md``):

* A probe is opened by :class:`~meshvpn.node.probes.ProbeCodec` (authentic, fresh, addressed to
  us) and always answered; one that came straight from the peer is the path finder's too, and a
  probe from a peer we have no path to starts punching back, so one side's punch opens both ways.
* A probe from a key that is not a peer yet (the coord's fan-out may tell the prober of us
  first) is counted and kept a moment (:mod:`meshvpn.node.strangers`), and taken as just arrived
  when the peer map adds the key, so the prober's first punch round is not wasted.
* A reply answers a ``meshvpn ping`` (a ``PingReply``) or one of the path finder's probes.
* The probes we send for a peer stay within its ``ProbeBudget``; a ping goes along the current
  route, or punches when the peer has none.
"""

from __future__ import annotations

from typing import Optional

from meshvpn.node.peers import Peer
from meshvpn.node.probes import ProbeFromStranger, ProbeRefused
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.wire import Endpoint, MessageType


class CoreProbes:
    """The probe methods of the node core."""

    def _on_probe(self, data: bytes, src: Endpoint, now: float, relayed_from: Optional[bytes],
                  via: Optional[int] = None) -> None:
        direct = relayed_from is None and type(src) is not TcpEndpoint
        try:
            probe = self.probes.open(data, now + self.config.wall_offset, check_address=direct)
        except ProbeRefused as refused:
            self.peers.by_key[refused.sender].counters.drops[refused.reason] += 1
            return
        except ProbeFromStranger as stranger:
            self.drops[stranger.reason] += 1
            if direct and stranger.kind == MessageType.PROBE:
                self.strangers.heard(stranger.sender, data, src, via, now)
            return
        peer = self.peers.by_key[probe.sender]
        if relayed_from is not None and relayed_from != probe.sender:
            self.drops["relayed probe from another key"] += 1
            return
        if relayed_from is None:
            self.socket_for.heard(Endpoint(*src), via)
        if probe.kind == MessageType.PROBE:
            reply = self.probes.reply(peer.key, probe.tx_id, Endpoint(*src), self.random_bytes(24),
                                      now + self.config.wall_offset)
            self._send_via(self.routes.reply(src, relayed_from), reply)
            if relayed_from is None:
                peer.paths.probe_received(src, now, probe.newest)
                if peer.route is None:
                    peer.paths.punch(now)
        else:
            reply = peer.pings.answer(probe.tx_id, peer.name, peer.address, now)
            if reply is not None:
                self._events.append(reply)
                if relayed_from is None:
                    peer.paths.traffic_received(src, now)
            elif relayed_from is None:
                peer.paths.probe_reply_received(probe.tx_id, src, now)
        self._drain_paths(peer, now)

    def _strangers_known(self, key: bytes, now: float) -> None:
        """``key`` has just become a peer: each probe it sent us while it was not one is taken now."""
        for kept in self.strangers.take(key, now):
            self.datagram_received(kept.data, kept.src, now, via=kept.via)

    def _probe(self, peer: Peer, tx_id: bytes, dst: Endpoint, now: float) -> Optional[bytes]:
        """A probe for ``peer`` to ``dst`` within the peer's probe budget; None (counted) past it."""
        refused = self.probe_budget.allow(peer.key, dst, now)
        if refused is not None:
            peer.counters.drops[refused] += 1
            return None
        return self.probes.probe(peer.key, tx_id, dst, self.random_bytes(24), now + self.config.wall_offset)

    def ping(self, peer: Peer, now: float) -> Optional[bytes]:
        """Send one probe along the peer's current route; None when it has none.

        The answer arrives as a :class:`PingReply` event with the same ``tx_id``.
        """
        route = peer.route
        if route is None:
            self.punching.punch(peer, now)
            return None
        self.peers.touched.add(peer)
        tx_id = self.random_bytes(8)
        peer.pings.sent(tx_id, route, now)
        self._send_via(route, self.probes.probe(peer.key, tx_id, route.endpoint, self.random_bytes(24),
                                                now + self.config.wall_offset))
        return tx_id
