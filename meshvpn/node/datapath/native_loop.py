"""The native receive thread's Python face: what it may open, and what it saw.

Why: the round trip the tunnel adds is mostly the asyncio loop waking up and dispatching, not
the crypto (see docs/dataplane.md, "The native loop").  ``meshvpn._fastpath.Loop`` is a thread
without the GIL that receives on the node's main UDP socket, opens the bare transport messages
of the sessions installed here (bare, or in a relay envelope) and writes them to the TUN, and
seals TUN reads for peers whose route is on that socket (direct or relayed); everything else comes back through
:meth:`NativeReceiver.take`. The birthday sockets a current path is pinned to (`meshvpn.node.mappings`)
are served the same way: after each sync they are handed over (``MappingSockets.hand_over``), and
what the thread leaves to Python from them goes to ``MappingSockets.received``.  Python keeps every decision: after each input the shell calls
:meth:`NativeReceiver.sync`, which installs the current and previous session of every peer (a
responder's unconfirmed ``next`` session stays with Python, whose first packet rotates the
ring) and drops the rest, looking only at the peers that changed (`native_tables`); :meth:`NativeReceiver.pull` folds the thread's counts, liveness and
roaming (``last_rx``/``last_rx_src`` direct, ``last_relay_rx``/``last_relay_src`` through a relay,
by the Python path's own ``DataPlane.direct_received`` and ``relay_received``) included, into the
peers before the core looks at them.

While access rules are active the thread passes only the flows the filter already decided
(`meshvpn.lan.flowcache`, handed over by :meth:`NativeReceiver._follow_access`); a packet it opened
for any other flow comes back for `meshvpn.lan.access` to judge, a TUN read of any other flow as
a read.

A session the thread serves gets a ``NativeWindow`` in place of its ReplayWindow (a copy, made
once, before the thread can see the session), so both threads share one window behind one
mutex and a counter is accepted once whichever thread opens it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Optional

from meshvpn.lan.flowcache import FlowCache
from meshvpn.node.datapath import fastpath
from meshvpn.node.datapath.dataplane import DataPlane, SendBuffer, _count_dropped, _count_received, _count_sent, _let_in
from meshvpn.node.datapath.native_relay import NativePeerRelay
from meshvpn.node.datapath.native_tables import NativeTables, packed
from meshvpn.node.mappings import MappingSockets
from meshvpn.node.peers import Peer
from meshvpn.wire import Endpoint

TOTALS = ("receives", "opened natively", "handed to python", "queue full", "tun writes", "tun write errors",
          "tun reads", "sealed natively", "udp sends", "udp send errors")
"""The thread-wide counts of :meth:`NativeReceiver.pull`, in the order the thread reports them."""


def available(tun) -> bool:
    """Whether the native loop can serve this TUN: the extension is in use and the TUN carries a virtio header."""
    native = fastpath.native_module()
    return native is not None and hasattr(getattr(native, "Loop", None), "flows") and bool(getattr(tun, "offloads", 0))


class NativeReceiver:
    """Owns one ``meshvpn._fastpath.Loop``: its table, its hand-over queue and its counts."""

    def __init__(self, data: DataPlane, udp_fd: int, tun, sends: SendBuffer, after: Callable[[], None],
                 busy_poll_us: int = 0, mappings: Optional[MappingSockets] = None) -> None:
        self._loop = fastpath.native_module().Loop(udp_fd, tun.fileno(), busy_poll_us)
        self._mappings = mappings
        """The birthday sockets: the pinned ones are handed over after each sync."""
        self._data = data
        self._core = data.core
        self._tun = tun
        self._sends = sends
        self._after = after
        self._tables = NativeTables(data.core.peers)
        self._installed: tuple = ()
        """The accepted destinations and the TURN servers, as installed."""
        self.totals: Counter = Counter()
        """Thread-wide counts (TOTALS) since start."""
        self.relay = NativePeerRelay(self._loop, self._core.peer_relay)
        """What the thread forwards for this node's peer relay."""
        self._filtering = False
        """The thread was last told that access rules are active."""

    @classmethod
    def attach(cls, loop, data: DataPlane, sock, tun, sends: SendBuffer, on_udp: Callable[[], None],
               on_tun: Callable[[], None], after: Callable[[], None], busy_poll_us: int = 0,
               mappings: Optional[MappingSockets] = None) -> Optional[NativeReceiver]:
        """Start the thread on ``sock`` and ``tun`` and wake ``loop`` for its hand-overs, when it can serve ``tun``.

        Otherwise ``on_udp`` and ``on_tun`` (the Python loops) read them and None is returned.
        Python's seals go to ``sends``; ``after`` runs after each wake-up, as after any data-path
        input (the node's outputs). The pinned sockets of ``mappings`` are served as ``sock`` is.
        """
        if not available(tun):
            loop.add_reader(tun.fileno(), on_tun)
            loop.add_reader(sock.fileno(), on_udp)
            return None
        receiver = cls(data, sock.fileno(), tun, sends, after, busy_poll_us, mappings)
        receiver.sync(loop.time())
        receiver._loop.start()
        loop.add_reader(receiver._loop.fileno(), receiver._on_wake, loop)
        return receiver

    def detach(self, loop) -> None:
        """Stop and join the thread (before the socket and the TUN close); its counts are folded in."""
        loop.remove_reader(self._loop.fileno())
        self._loop.stop()
        self.pull(0.0)

    def _on_wake(self, loop) -> None:
        """Seal and open what the thread handed over as ``_on_tun``/``_on_udp`` would; fold in its counts."""
        now = loop.time()
        data, tun, sends, to_tun = self._data, self._tun, self._sends, []
        turn_servers = self._core.turn.by_endpoint
        noted = False
        for message, source, seg_size, sid in self._loop.take():
            if sid:  # from a pinned socket, as its loop reader would have had it
                self._mappings.received(sid, memoryview(message), seg_size, Endpoint(*source))
            elif source is None and seg_size < 0:  # opened by the thread, for the access filter to judge
                if not noted:  # the flows the thread used count before a reply of theirs is judged
                    self._follow_access(notes=True)
                    noted = True
                self._judge(-1 - seg_size, message, now, to_tun)
            elif source is None:  # a TUN read, virtio header first
                size = len(message)
                tun.buffer[:size] = message
                if not data.seal_super_packet(tun.buffer, size, now, sends):
                    data.seal_packets(tun.buffer, tun.segments(size), now, sends)
            elif (src := Endpoint(*source)) in turn_servers:  # STUN from a TURN server can look like a DATA header
                for first in range(0, len(message), seg_size):
                    self._core.receive_datagram(message[first : first + seg_size], src, now)
            else:
                data.open_datagrams(bytearray(message), len(message), seg_size, src, now, to_tun)
        sends.flush()
        self.pull(now, notes=False)
        self.sync(now)
        if to_tun:
            tun.write_packets(to_tun)
        self._after()

    def _judge(self, index: int, packet: bytes, now: float, to_tun: list) -> None:
        """A packet the thread opened (and counted) for the peer of ``index``: the filter lets it in or counts it."""
        peer, lan = self._tables.by_index.get(index), self._data.lan
        if peer is None or lan is None:
            self._data.drops["unknown index"] += 1
            return
        to_tun.append(memoryview(bytearray(packet)))
        own = self._core.destinations.accepted(len(peer.overlay))[: len(peer.overlay)]
        _let_in(lan, peer, to_tun, len(to_tun) - 1, own, now)

    def _follow_access(self, notes: bool) -> None:
        """Tell the thread whether rules are active and what the filter decided since; with ``notes``,
        fold the outbound flows it used.

        Each hand-over waits for the thread's table lock, which the thread holds while it seals or
        opens one read (up to 64 KiB): a wake-up that only carried TUN reads (a broadcast storm's)
        hands over nothing, and leaves the notes to the next judgement or timer."""
        lan = self._data.lan
        if lan is None:
            return
        access = lan.access
        if access.cache is None:
            access.cache = FlowCache()
        if not (access.active or self._filtering):
            return
        cache = access.cache
        if not (notes or cache.reset or cache.installs or access.active != self._filtering):
            return
        reset, installs = cache.take()
        used = self._loop.flows(access.active, reset, installs)
        self._filtering = access.active
        cache.fold(used, access.outbound)

    def _follow_fanout(self) -> None:
        """Tell the thread until when the LAN party's budget is spent; count what it dropped meanwhile."""
        fanout = None if self._data.lan is None else self._data.lan.fanout
        if fanout is None:
            return
        held = self._loop.hold_fanout(fanout.held_until)
        if held:
            fanout.held(held)
            self.totals["fan-out held natively"] += held

    def sync(self, now: float) -> None:
        """Install what the thread may open and seal now, if it changed since the last call.

        Only the peers marked since the last call are looked at, and only the rows that changed
        are handed over (`native_tables`); what the rows that left counted is folded in."""
        self._follow_access(notes=False)  # rules that became active hold before any new entry serves
        destinations = self._core.destinations
        turn = sorted(filter(None, map(packed, self._core.turn.by_endpoint)))
        others = (destinations.accepted(4), destinations.accepted(16), turn)
        self.relay.sync()
        tables = self._tables
        changed = tables.update(now)
        if self._mappings is not None:
            self._mappings.hand_over(self._loop.pin, tables.pinned)
        if not changed and others == self._installed:
            return
        diff = tables.diff()
        self._fold(self._loop.patch(diff.gone_indexes, diff.entries, diff.gone_overlays, diff.senders, *others), now)
        tables.installed(diff)
        self._installed = others
        if tables.check:
            indexes, overlays = self._loop.installed()
            assert (sorted(indexes), sorted(overlays)) == (sorted(tables.by_index), sorted(tables.by_overlay))

    def pull(self, now: float, notes: bool = True) -> None:
        """Fold what the thread counted into the peers, the drops and :attr:`totals` (with ``notes``,
        the outbound flows it used too)."""
        self._follow_access(notes)
        self._follow_fanout()
        rows, send_rows, totals = self._loop.counts()
        self._fold((rows, send_rows), now)
        for name, value in zip(TOTALS, totals):
            if value:
                self.totals[name] += value
        if totals[3]:
            self._data.drops["native queue full"] += totals[3]
        self.totals.update({f"peer relay {name}": count for name, count in self.relay.pull().items() if count})

    def _fold(self, tables: tuple[Iterable[tuple], Iterable[tuple]], now: float) -> None:
        rows, send_rows = tables
        lan = self._data.lan
        for index, packets, nbytes, failed, spoofed, wrong_key, misdirected, last_rx, source, broadcast, multicast, \
                last_relay_rx, relay in rows:
            peer = self._tables.by_index.get(index)
            if peer is None:
                continue
            if lan is not None:
                lan.received["broadcast"] += broadcast
                lan.received["multicast"] += multicast
            if packets:
                _count_received(peer, packets, nbytes)
            if failed or spoofed or wrong_key or misdirected:
                _count_dropped(peer, failed, spoofed, wrong_key, misdirected)
            if self._received(peer, index, last_rx, source, last_relay_rx, relay, now) and peer.pending and now:
                self._data.core_touched = True
                self._core.flush(peer, now)
        for overlay, packets, nbytes, last_tx in send_rows:
            peer = self._tables.by_overlay.get(overlay)
            if peer is not None:
                _count_sent(peer, packets, nbytes, max(peer.last_tx, last_tx), self._data.trafficked)

    def _received(self, peer: Peer, index: int, last_rx: float, source: Optional[tuple], last_relay_rx: float,
                  relay: Optional[tuple], now: float) -> bool:
        """Hand the thread's latest direct and relayed receives to the peer as the Python path would; True if any.

        The thread notes a direct receive only for the newest message of a session (it moved the
        window), so one of the current session from a new source roams, through the Python path's
        own ``DataPlane.direct_received``.  A receive older than what the peer already has (Python
        opened a later one) changes nothing.  At ``detach`` (``now`` 0.0) neither a new source nor a
        new relay triggers anything: the node is going away."""
        fresh = False
        if source is not None and last_rx > peer.last_rx:
            current = peer.ring.current
            newest = bool(now) and current is not None and current.local_index == index
            fresh = self._data.direct_received(peer, Endpoint(*source), last_rx, newest, now)
        if relay is not None and last_relay_rx > peer.last_relay_rx and now:
            self._data.relay_received(peer, Endpoint(*relay), last_relay_rx, now)
            fresh = True
        return fresh

