"""The hot loop: IP packets from the TUN to sealed datagrams, and transport datagrams back.

Per packet, outbound: destination overlay address (4 or 16 raw bytes) → peer (one dict
lookup, skipped while the destination repeats, as it does for every segment of a TSO
super-packet) → its current session → ``seal_into`` a :class:`SendBuffer`, which lays the
messages of one route back to back so the shell sends each run with one GSO
``sendmsg``.  Inbound: each datagram of a GRO receive, in the receive buffer itself:
DATA/KEEPALIVE (bare or in a relay envelope) → peer by receiver index (one dict lookup) →
``open_into`` in place → the inner source address must be the peer's own overlay address
(else dropped as "spoofed") and the destination one of ours (``meshvpn.node.destinations``,
else dropped as "not_for_me") → a view of the plaintext for the TUN's coalescing write.
Everything else is copied out and goes to the node.

Rules: no logging, no exceptions out of the loop, no asyncio objects, no per-packet copies
besides the AEAD's own output.  Drops are counted by reason, per peer when the peer is known.
Liveness costs two attribute writes and a mark (``peers.trafficked``, one set insert per run):
the core reads ``last_rx``/``last_rx_src`` on its timer, of the marked peers only.  Sans-IO:
the shell does the reads and writes, so simulations use the same code through the bytes-in,
bytes-out :meth:`DataPlane.outbound` and :meth:`DataPlane.inbound`.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Callable, Iterable, Optional

from meshvpn import wire
from meshvpn.node.datapath import fastpath
from meshvpn.errors import MeshError
from meshvpn.lan.packets import Drop
from meshvpn.node.core import NodeCore
from meshvpn.node.lanparty import LanParty
from meshvpn.node.node import Node
from meshvpn.node.datapath.offload import GSO_NONE, VNET_HDR_LEN, VirtioNetHdr
from meshvpn.node.pathtypes import PathKind
from meshvpn.node.peers import Peer, Route
from meshvpn.session import OVERHEAD, Session
from meshvpn.wire import Endpoint

_DATA = int(wire.MessageType.DATA)
_KEEPALIVE = int(wire.MessageType.KEEPALIVE)
_RELAY = int(wire.MessageType.RELAY)
_VERSION = wire.VERSION
_RELAY_INNER = wire.RELAY_PREFIX_LEN
_IPV4_MIN = 20
_IPV6_MIN = 40
_unpack_index = struct.Struct("<I").unpack_from
_NOT_FOR_ME = Drop.NOT_FOR_ME.value
SEND_BUFFER = 2 * 65536 + 256
"""Room for one open run (at most one GSO send) plus the largest message that may join it."""

SendRun = Callable[[Route, memoryview, int], None]
"""send(route, data, seg_size): ``data`` holds messages of ``seg_size`` back to back (the last may be shorter)."""


def _sealing_session(peer: Optional[Peer], now: float) -> Optional[Session]:
    """The session that seals for ``peer`` now, if it has one and a route; else the core must act."""
    if peer is None or peer.route is None:
        return None
    session = peer.ring.current
    return None if session is None or now >= session.expires_at else session


def _count_sent(peer: Peer, packets: int, nbytes: int, now: float, trafficked: set[Peer]) -> None:
    counters = peer.counters
    counters.tx_packets += packets
    counters.tx_bytes += nbytes
    peer.last_tx = now
    trafficked.add(peer)


def _count_received(peer: Peer, packets: int, nbytes: int) -> None:
    counters = peer.counters
    counters.rx_packets += packets
    counters.rx_bytes += nbytes


def _count_dropped(peer: Peer, failed: int, spoofed: int, wrong_key: int, misdirected: int) -> None:
    drops = peer.counters.drops
    for reason, count in (("failed to open", failed), ("spoofed", spoofed), ("relayed under another key", wrong_key),
                          (_NOT_FOR_ME, misdirected)):
        if count:
            drops[reason] += count


def _let_in(lan: LanParty, peer: Peer, to_tun: list[memoryview], first: int, own: bytes, now: float) -> None:
    """Keep in ``to_tun[first:]`` (one peer's run) only what the LAN party lets in: rules, TTL, counters.

    Without rules, packets to ``own`` address (the run's unicast, around a broadcast) pass unparsed."""
    at, size = (16, 4) if len(own) == 4 else (24, 16)
    if lan.access.active:
        kept = [packet for packet in to_tun[first:] if lan.inbound(packet, now)]
    else:
        kept = [packet for packet in to_tun[first:] if packet[at : at + size] == own or lan.inbound(packet, now)]
    refused = len(to_tun) - first - len(kept)
    if refused:
        to_tun[first:] = kept
        peer.counters.drops["access"] += refused


class SendBuffer:
    """Sealed messages for one destination (a peer's route), back to back, in the shape one GSO send takes.

    A run holds messages of one size for one route; a shorter message may end it.  A
    message that cannot join (another route, a larger size) sends the run first, and a run
    is sent as soon as it is closed or full (``max_segments``, ``max_bytes``), so the buffer
    only ever holds one run and every send is a single ``sendmsg``.
    """

    __slots__ = ("out", "at", "dest", "seg_size", "count", "max_segments", "max_bytes", "_send", "_view")

    def __init__(self, send: SendRun, max_segments: float = math.inf, max_bytes: float = math.inf,
                 size: int = SEND_BUFFER) -> None:
        self.out = bytearray(size)
        """Where messages are sealed; the open run is ``out[:at]``."""
        self.at = 0
        self.dest: Optional[Route] = None
        """Destination of the open run: the route (endpoint and transport) it leaves by."""
        self.seg_size = 0
        """Size of the open run's messages."""
        self.count = 0
        """Messages in the open run."""
        self.max_segments = max_segments
        self.max_bytes = max_bytes
        self._send = send
        self._view = memoryview(self.out)

    def place(self, dest: Route, size: int) -> int:
        """Where a message of ``size`` bytes for ``dest`` goes; sends the open run if it cannot join."""
        if self.count:
            if size <= self.seg_size and (dest is self.dest or dest == self.dest) \
                    and self.at + size <= len(self.out):
                return self.at
            self.flush()
        self.dest = dest
        self.seg_size = size
        return 0

    def added(self, size: int) -> None:
        """The message placed last was written (``size`` bytes); send the run if that closed or filled it."""
        self.count += 1
        at = self.at = self.at + size
        if size < self.seg_size or self.count >= self.max_segments or at + self.seg_size > self.max_bytes:
            self.flush()

    def filled(self, dest: Route, seg_size: int, count: int, at: int) -> None:
        """The empty buffer now holds ``count`` messages of ``seg_size`` (the last may be shorter) up to ``at``.

        The run is sent at once if its last message is shorter or it is full, as :meth:`added` does.
        """
        self.dest, self.seg_size, self.count, self.at = dest, seg_size, count, at
        if at != count * seg_size or count >= self.max_segments or at + seg_size > self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Send the open run, if any."""
        if self.count:
            self._send(self.dest, self._view[: self.at], self.seg_size)
            self.at = self.count = 0


class DataPlane:
    """Seals TUN packets for their peers and opens transport messages for the TUN."""

    def __init__(self, core: Node | NodeCore) -> None:
        self.core = core
        """The node (a bare :class:`NodeCore` in tests of the data path alone): it gets what the loop cannot do."""
        self.drops: Counter = Counter()
        """Packets dropped before a peer was known, by reason."""
        self.core_touched = False
        """Set when a batch handed anything to the core: the shell then re-arms its timer."""
        self.lan: Optional[LanParty] = getattr(core, "lan", None)
        """Broadcast, multicast and access rules (a bare core in tests has none)."""
        self.trafficked = core.peers.trafficked
        """Where the peers whose traffic times moved are marked, for the core's timer (`meshvpn.node.peertimers`)."""

    # ---- outbound -------------------------------------------------------------------

    def seal_packets(self, src: bytearray, ranges: Iterable[tuple[int, int]], now: float, sends: SendBuffer) -> None:
        """Seal each IP packet ``src[start:end]`` for its peer into ``sends`` (which sends full runs).

        Ranges are used one at a time, so a range may be invalidated by taking the next (the
        TUN's in-place split); packets the core must keep are copied.  While the destination
        repeats, its peer, session and route are reused and its counters added up once.
        """
        by_overlay, trafficked = self.core.peers.by_overlay, self.trafficked
        out = sends.out
        lan = self.lan
        track = lan is not None and lan.access.active
        last_dst = peer = session = route = None
        prefix = b""
        sealed = sealed_bytes = 0
        for start, end in ranges:
            length = end - start
            version = src[start] >> 4 if length else 0
            if version == 4 and length >= _IPV4_MIN:
                dst = src[start + 16 : start + 20]
            elif version == 6 and length >= _IPV6_MIN:
                dst = src[start + 24 : start + 40]
            else:
                self.drops["not ip"] += 1
                continue
            if track:
                lan.track(src, start, end, now)
            if dst != last_dst:
                if sealed:
                    _count_sent(peer, sealed, sealed_bytes, now, trafficked)
                    sealed = sealed_bytes = 0
                last_dst = dst
                peer = by_overlay.get(bytes(dst))
                session = _sealing_session(peer, now)
                if session is not None:
                    route = peer.route
                    prefix = route.prefix
            if session is None:
                if peer is None:
                    self._fan_out(bytes(src[start:end]), now, sends)
                else:
                    self._to_core(peer, bytes(src[start:end]), now)
                    last_dst = None
                continue
            size = len(prefix) + OVERHEAD + length
            at = sends.place(route, size)
            try:
                if prefix:
                    out[at : at + len(prefix)] = prefix
                session.seal_into(out, at + len(prefix), src, start, end)
            except MeshError:
                self._to_core(peer, bytes(src[start:end]), now)
                last_dst = None
                continue
            sends.added(size)
            sealed += 1
            sealed_bytes += length
        if sealed:
            _count_sent(peer, sealed, sealed_bytes, now, trafficked)

    def seal_super_packet(self, buf: bytearray, size: int, now: float, sends: SendBuffer) -> bool:
        """Split and seal the TUN read ``buf[:size]`` (virtio header first) in one pass: one ``fastpath.seal_split``.

        False, with nothing sealed, when the read is not a super-packet for a peer with a
        session and a route, or is malformed or outside the loop's limits: the caller then
        takes it through :meth:`seal_packets`, whose rules (core hand-off, drop counts) apply.
        """
        if size < VNET_HDR_LEN + _IPV4_MIN or buf[1] == GSO_NONE:
            return False
        version = buf[VNET_HDR_LEN] >> 4
        if version == 4:
            dst = buf[VNET_HDR_LEN + 16 : VNET_HDR_LEN + 20]
        elif version == 6 and size >= VNET_HDR_LEN + _IPV6_MIN:
            dst = buf[VNET_HDR_LEN + 24 : VNET_HDR_LEN + 40]
        else:
            return False
        peer = self.core.peers.by_overlay.get(bytes(dst))
        session = _sealing_session(peer, now)
        if session is None:
            return False
        if self.lan is not None and self.lan.access.active:
            self.lan.track(buf, VNET_HDR_LEN, size, now)
        route = peer.route
        sends.flush()
        try:
            sealed = fastpath.seal_split(session, route.prefix, buf, VNET_HDR_LEN, size, VirtioNetHdr.decode(buf),
                                         sends.out, 0)
        except MeshError:
            return False
        if sealed is None:
            return False
        count, at, first_size = sealed
        sends.filled(route, first_size, count, at)
        _count_sent(peer, count, at - count * (len(route.prefix) + OVERHEAD), now, self.trafficked)
        return True

    def _fan_out(self, packet: bytes, now: float, sends: SendBuffer) -> None:
        """A packet no peer's address matched: a broadcast or multicast copy for each peer the LAN
        party chooses, sealed on the peer's route like any packet for it; else dropped as before."""
        lan = self.lan
        peers = None if lan is None else lan.from_tun(packet, self.core.peers, now)
        if peers is None:
            self.drops["no peer"] += 1
            return
        if lan.touched or lan.has_output:
            lan.touched = False
            self.core_touched = True
        for peer in peers:
            if not self._seal_copy(peer, packet, now, sends):
                self._to_core(peer, packet, now)

    def _seal_copy(self, peer: Peer, packet: bytes, now: float, sends: SendBuffer) -> bool:
        """Seal one copy for ``peer`` on its route into ``sends``; False when the core must take it."""
        session = _sealing_session(peer, now)
        if session is None:
            return False
        route = peer.route
        prefix = route.prefix
        size = len(prefix) + OVERHEAD + len(packet)
        at = sends.place(route, size)
        try:
            sends.out[at : at + len(prefix)] = prefix
            session.seal_into(sends.out, at + len(prefix), packet, 0, len(packet))
        except MeshError:
            return False
        sends.added(size)
        _count_sent(peer, 1, len(packet), now, self.trafficked)
        return True

    def _to_core(self, peer: Peer, packet: bytes, now: float) -> None:
        """The core queues the packet and starts a handshake or path search."""
        self.core_touched = True
        self.core.packet_from_tun(peer, packet, now)

    def outbound(self, packets: Iterable[bytes], now: float) -> dict[Endpoint, list[bytes]]:
        """Seal each TUN packet for its peer; the datagrams grouped by UDP destination (bytes form)."""
        groups: dict[Endpoint, list[bytes]] = {}

        def collect(route: Route, data: memoryview, seg_size: int) -> None:
            group = groups.setdefault(route.endpoint, [])
            group += (bytes(data[first : first + seg_size]) for first in range(0, len(data), seg_size))

        sends = SendBuffer(collect)
        for packet in packets:
            self.seal_packets(packet, ((0, len(packet)),), now, sends)
        sends.flush()
        return groups

    # ---- inbound --------------------------------------------------------------------

    def open_datagrams(self, buf: bytearray, nbytes: int, seg_size: int, src: Endpoint, now: float,
                       to_tun: list[memoryview], first: int = 0) -> None:
        """Open the datagrams in ``buf[first : first + nbytes]`` (``seg_size`` each, the last may be shorter) in place.

        Views of the plaintext IP packets are appended to ``to_tun``; they stay valid until
        ``buf`` is written again.  While the receiver index repeats (a GRO batch is one flow),
        its peer and session are reused and its counters added up once.
        """
        if not nbytes:
            self._other(b"", src, now)
            return
        view = memoryview(buf)
        by_index, trafficked = self.core.peers.by_index, self.trafficked
        accepted = self.core.destinations.accepted
        lan = self.lan
        at, stop = first, first + nbytes
        while at < stop:
            end = min(at + seg_size, stop)
            kind = buf[at + 1] if end - at > 1 else -1
            if (kind == _DATA or kind == _KEEPALIVE) and buf[at] == _VERSION and end - at >= OVERHEAD:
                msg = at
            elif kind == _RELAY and buf[at] == _VERSION and end - at >= _RELAY_INNER + OVERHEAD \
                    and (buf[at + _RELAY_INNER + 1] == _DATA or buf[at + _RELAY_INNER + 1] == _KEEPALIVE):
                msg = at + _RELAY_INNER
            else:
                self._other(bytes(buf[at:end]), src, now)
                at += seg_size
                continue
            index = _unpack_index(buf, msg + 4)[0]
            peer = by_index.get(index)
            if peer is None:
                if msg != at and self.core.peer_relay.relaying:  # a member's, through us as its peer relay
                    self._other(bytes(buf[at:end]), src, now)
                else:
                    self.drops["unknown index"] += 1
                at += seg_size
                continue
            relay_key = peer.key if msg != at else None
            session = peer.ring.current
            opener = session if session is not None and session.local_index == index else peer.ring
            greatest = opener.window.greatest if opener is session else None
            overlay = peer.overlay
            before = len(to_tun)
            next_at, authentic, opened, opened_bytes, failed, spoofed, wrong_key, misdirected, casts = \
                fastpath.open_run(opener, index, relay_key, overlay, accepted(len(overlay)), buf, view, at, stop,
                                  seg_size, to_tun)
            at = next_at if next_at > at else at + seg_size
            if opened and lan is not None and (casts or lan.access.active):
                _let_in(lan, peer, to_tun, before, accepted(len(overlay))[: len(overlay)], now)
            if opened:
                _count_received(peer, opened, opened_bytes)
            if failed or spoofed or wrong_key or misdirected:
                _count_dropped(peer, failed, spoofed, wrong_key, misdirected)
            if authentic:
                trafficked.add(peer)  # its receive times move, and a next session may have become current
                if relay_key is not None:
                    self.relay_received(peer, src, now, now)
                else:
                    newest = greatest is not None and opener.window.greatest != greatest  # type: ignore[attr-defined]
                    self.direct_received(peer, src, now, newest, now)
                if peer.pending:
                    self.core_touched = True
                    self.core.flush(peer, now)

    def direct_received(self, peer: Peer, src: Endpoint, when: float, newest: bool, now: float) -> bool:
        """Authentic data of the peer came straight from ``src`` at ``when`` (this path's or the native thread's).

        From the peer's known source it is liveness (``last_rx``, which silence detection reads).
        From a new source it counts, and moves the peer there (``roamed``), only if it was the
        ``newest``: it moved the current session's replay window forward, so no old or replayed
        packet, whoever sends it from wherever, can move the peer (docs/security.md).  True if it counted."""
        if src != peer.last_rx_src:
            if not newest:
                return False
            self.core_touched = True
            self.core.roamed(peer, src, now)
        peer.last_rx = max(peer.last_rx, when)
        peer.last_rx_src = src
        self.trafficked.add(peer)
        return True

    def relay_received(self, peer: Peer, src: Endpoint, when: float, now: float) -> None:
        """Authentic data of the peer came through relay ``src`` at ``when`` (this path's or the native thread's).

        The relayed path lives (``last_relay_rx``, which silence detection reads); traffic through
        another relay than before may mean the peer left ours for a reason (``relay_moved``), and
        traffic through a relay after direct traffic, while we send direct, that the peer left the
        direct path (``relayed_on_direct``): events, so the core acts at once, not at its next look."""
        straight_before = peer.last_relay_rx < peer.last_rx
        peer.last_relay_rx = max(peer.last_relay_rx, when)
        self.trafficked.add(peer)
        route = peer.route
        if straight_before and route is not None and route.path.kind is not PathKind.RELAY:
            self.core_touched = True
            self.core.relayed_on_direct(peer, now)
        if src == peer.last_relay_src:
            return
        moved = peer.last_relay_src is not None
        peer.last_relay_src = src
        if moved:
            self.core_touched = True
            self.core.relay_moved(peer, src, now)

    def _other(self, data: bytes, src: Endpoint, now: float) -> None:
        self.core_touched = True
        self.core.datagram_received(data, src, now)

    def open_messages(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> list[memoryview]:
        """Open single datagrams (a relay's stream, a side socket), each copied into its own buffer.

        The views are writable, as the TUN's coalescing write needs them.
        """
        to_tun: list[memoryview] = []
        for data, src in datagrams:
            buf = bytearray(data)
            self.open_datagrams(buf, len(buf), len(buf) or 1, src, now, to_tun)
        return to_tun

    def inbound(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> list[bytes]:
        """Open transport messages into IP packets for the TUN; hand the rest on (bytes form)."""
        return [bytes(packet) for packet in self.open_messages(datagrams, now)]
