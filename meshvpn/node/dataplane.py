"""The hot loop: IP packets from the TUN to sealed datagrams, and transport datagrams back.

Per packet, outbound: destination overlay address (4 or 16 raw bytes) → peer (one dict
lookup) → its current session → seal → the peer's route, grouped by UDP destination so
the shell can send each group as one batch.  Inbound: DATA/KEEPALIVE → peer by receiver
index (one dict lookup) → open → the inner source address must be the peer's own
overlay address (else dropped as "spoofed") → TUN.  Everything else goes to the core.

Rules: no logging, no exceptions out of the loop, no asyncio objects, one copy per
packet (the seal).  Drops are counted by reason, per peer when the peer is known.
Liveness costs two attribute writes: the core reads ``last_rx``/``last_rx_src`` on its
timer.  Sans-IO: the shell does the reads and writes, so simulations use the same code.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Optional

from meshvpn import wire
from meshvpn.errors import MeshError
from meshvpn.node.core import NodeCore
from meshvpn.node.peers import Peer
from meshvpn.wire import Endpoint

_DATA = wire.MessageType.DATA
_KEEPALIVE = wire.MessageType.KEEPALIVE
_RELAY = wire.MessageType.RELAY
_VERSION = wire.VERSION
_MIN_TRANSPORT = wire.KEEPALIVE_LEN
_RELAY_INNER = wire.RELAY_PREFIX_LEN
_IPV4_MIN = 20
_IPV6_MIN = 40


class DataPlane:
    """Seals TUN packets for their peers and opens transport messages for the TUN."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.drops: Counter = Counter()
        """Packets dropped before a peer was known, by reason."""
        self.core_touched = False
        """Set when a batch handed anything to the core: the shell then re-arms its timer."""

    def outbound(self, packets: Iterable[bytes], now: float) -> dict[Endpoint, list[bytes]]:
        """Seal each TUN packet for its peer; the datagrams grouped by UDP destination."""
        by_overlay = self.core.peers.by_overlay
        groups: dict[Endpoint, list[bytes]] = {}
        for packet in packets:
            version = packet[0] >> 4 if packet else 0
            if version == 4 and len(packet) >= _IPV4_MIN:
                peer = by_overlay.get(packet[16:20])
            elif version == 6 and len(packet) >= _IPV6_MIN:
                peer = by_overlay.get(packet[24:40])
            else:
                self.drops["not ip"] += 1
                continue
            if peer is None:
                self.drops["no peer"] += 1
                continue
            session = peer.ring.current
            route = peer.route
            if session is None or route is None or now >= session.expires_at:
                self.core_touched = True
                self.core.packet_from_tun(peer, packet, now)
                continue
            try:
                message = session.seal(packet)
            except MeshError:
                self.core_touched = True
                self.core.packet_from_tun(peer, packet, now)
                continue
            if route.prefix:
                message = route.prefix + message
            group = groups.get(route.endpoint)
            if group is None:
                groups[route.endpoint] = [message]
            else:
                group.append(message)
            counters = peer.counters
            counters.tx_packets += 1
            counters.tx_bytes += len(packet)
            peer.last_tx = now
        return groups

    def inbound(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> list[bytes]:
        """Open transport messages into IP packets for the TUN; hand the rest to the core."""
        to_tun: list[bytes] = []
        for data, src in datagrams:
            if len(data) >= _MIN_TRANSPORT and data[0] == _VERSION and (data[1] == _DATA or data[1] == _KEEPALIVE):
                self._transport(data, src, now, None, to_tun)
            elif len(data) >= _RELAY_INNER + _MIN_TRANSPORT and data[1] == _RELAY and (
                data[_RELAY_INNER + 1] == _DATA or data[_RELAY_INNER + 1] == _KEEPALIVE
            ):
                self._transport(data[_RELAY_INNER:], src, now, data[4:_RELAY_INNER], to_tun)
            else:
                self.core_touched = True
                self.core.datagram_received(data, src, now)
        return to_tun

    def _transport(self, data: bytes, src: Endpoint, now: float, relayed_from: Optional[bytes], to_tun: list) -> None:
        peer: Optional[Peer] = self.core.peers.by_index.get(int.from_bytes(data[4:8], "little"))
        if peer is None:
            self.drops["unknown index"] += 1
            return
        if relayed_from is not None and relayed_from != peer.key:
            peer.counters.drops["relayed under another key"] += 1
            return
        plain = peer.ring.open(data)
        if plain is None:
            peer.counters.drops["failed to open"] += 1
            return
        if relayed_from is None:
            peer.last_rx = now
            peer.last_rx_src = src
        if peer.pending:
            self.core_touched = True
            self.core.flush(peer, now)
        if not plain:
            return
        version = plain[0] >> 4
        if version == 4:
            source = plain[12:16]
        elif version == 6:
            source = plain[8:24]
        else:
            source = b""
        if source != peer.overlay:
            peer.counters.drops["spoofed"] += 1
            return
        counters = peer.counters
        counters.rx_packets += 1
        counters.rx_bytes += len(plain)
        to_tun.append(plain)
