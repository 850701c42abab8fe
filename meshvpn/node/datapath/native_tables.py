"""What the native thread may open and seal, kept per peer and recomputed only for the peers that changed.

Why: the shell syncs the thread after every input (a coord message, a packet handed to Python);
building and comparing the whole table each time cost O(peers) per input, at 10,000 peers more
than the input itself. As ``meshvpn.node.peertimers`` keeps deadlines, the rows of a peer (its
entries: current and previous session; its sender: current session on a route over a UDP
socket) are built again only when the peer may have changed:

* marked by the core or the data path (``PeerTable.touched``/``trafficked``, and what the peer
  timers took from them, ``PeerTable.changed``), or given a route or an address
  (``PeerTable.set_route``/``readdress``, which mark ``changed``), or added or removed;
* or when a session in its rows expired (a heap of each peer's earliest expiry).

A sender names the socket it sends from: the main one, or a pinned one (birthday probing); the
pinned ones some sender uses are :attr:`NativeTables.pinned`, which the thread then serves.

Only the rows that changed are handed over (`Diff`, for ``Loop.patch``): at 10,000 peers the
whole table took milliseconds to build and parse where one peer's rows take microseconds.
``check`` compares every answer with the full rebuild (the tests switch it on). Sans-IO: ``now``
is an argument.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

from meshvpn.node.datapath import fastpath
from meshvpn.node.peers import Peer, PeerTable
from meshvpn.node.peertimers import KeyedHeap
from meshvpn.node.transports import MainSocket, PinnedSocket
from meshvpn.session import Session
from meshvpn.wire import Endpoint

Rows = tuple[tuple[tuple, ...], Optional[tuple]]
"""A peer's entries (what the thread opens) and its sender (what it seals), in ``Loop.replace``'s form."""


def packed(endpoint: Endpoint) -> Optional[tuple[bytes, int]]:
    try:
        return ipaddress.ip_address(endpoint[0]).packed, int(endpoint[1])
    except ValueError:
        return None


def rows_of(peer: Peer, now: float) -> Optional[Rows]:
    """The peer's rows now; None when the thread may do nothing for it."""
    if len(peer.overlay) not in (4, 16):
        return None
    ring = peer.ring
    entries = tuple((session.local_index, session.recv_key, native_window(session), peer.overlay, peer.key,
                     session.expires_at)
                    for session in (ring.current, ring.previous) if session is not None and now < session.expires_at)
    route, session, sender = peer.route, ring.current, None
    if route is not None and session is not None and now < session.expires_at:
        sid = socket_id(route.transport)
        endpoint = packed(route.endpoint)
        if endpoint is not None and sid is not None:
            sender = (peer.overlay, session.remote_index, session.send_key, native_counter(session), endpoint,
                      route.prefix, session.expires_at, sid)
    return (entries, sender) if entries or sender is not None else None


def socket_id(transport) -> Optional[int]:
    """The UDP socket the thread would send from for `transport`: 0 the main one, a pinned one's id, or
    None (a stream or TURN: Python's)."""
    kind = type(transport)
    return 0 if kind is MainSocket else transport.sid if kind is PinnedSocket else None


def _pinned(rows: Optional[Rows]) -> int:
    """The pinned socket the rows' sender sends from; 0 if none."""
    return rows[1][7] if rows is not None and rows[1] is not None else 0


def _expiry(rows: Rows) -> float:
    entries, sender = rows
    return min([entry[5] for entry in entries] + ([sender[6]] if sender is not None else []))


@dataclass
class Diff:
    """What the thread's table must change, in ``Loop.patch``'s order: rows gone, then rows put
    (each in place of the one with its index or overlay address), with the peer of each put row."""

    gone_indexes: list[int] = field(default_factory=list)
    entries: list[tuple] = field(default_factory=list)
    entry_peers: list[Peer] = field(default_factory=list)
    gone_overlays: list[bytes] = field(default_factory=list)
    senders: list[tuple] = field(default_factory=list)
    sender_peers: list[Peer] = field(default_factory=list)

    def put_entry(self, row: tuple, peer: Peer) -> None:
        self.entries.append(row)
        self.entry_peers.append(peer)

    def put_sender(self, row: tuple, peer: Peer) -> None:
        self.senders.append(row)
        self.sender_peers.append(peer)


class NativeTables:
    """Every peer's rows, as computed, and what the thread holds: :meth:`update` recomputes the rows
    of the peers that changed, :meth:`diff` says what to hand over, :meth:`installed` notes it."""

    check = False
    """Compare every update with the full rebuild over all peers (the tests switch it on)."""

    def __init__(self, peers: PeerTable) -> None:
        self._peers = peers
        peers.changed = set()
        self._rows: dict[Peer, Rows] = {}
        self._before: dict[Peer, Optional[Rows]] = {}
        """The rows the thread holds for each peer whose rows changed since the last `diff`."""
        self._expiries: KeyedHeap[Peer] = KeyedHeap()
        self._everyone = True
        self.by_index: dict[int, Peer] = {}
        """Local index → peer, as installed: counts of a session retired since still find their peer."""
        self.by_overlay: dict[bytes, Peer] = {}
        """Overlay address → peer, as installed for sealing."""
        self._pins: dict[int, int] = defaultdict(int)
        """Pinned socket id → the senders that send from it."""

    @property
    def pinned(self) -> Iterable[int]:
        """The pinned sockets some sender sends from: the ones the thread should serve."""
        return self._pins.keys()

    def update(self, now: float) -> bool:
        """Recompute the rows of the peers marked since the last call; True if any changed."""
        peers = self._peers
        if self._everyone:
            dirty, self._everyone = set(peers) | set(self._rows), False
        else:
            dirty = peers.changed | peers.touched | peers.trafficked
            dirty.update(self._expiries.pop_until(now))
        peers.changed.clear()
        changed = False
        for peer in dirty:
            rows = rows_of(peer, now) if peers.by_key.get(peer.key) is peer else None
            self._expiries.set(peer, None if rows is None else _expiry(rows))
            old = self._rows.get(peer)
            if rows == old:
                continue
            changed = True
            self._before.setdefault(peer, old)
            self._count_pin(_pinned(old), -1)
            self._count_pin(_pinned(rows), 1)
            if rows is None:
                del self._rows[peer]
            else:
                self._rows[peer] = rows
        if self.check:
            self._check(now)
        return changed

    def _count_pin(self, sid: int, step: int) -> None:
        if sid:
            self._pins[sid] += step
            if not self._pins[sid]:
                del self._pins[sid]

    def diff(self) -> Diff:
        """What the thread must change to hold the rows :meth:`update` computed: the rows of the
        peers that changed since the last call, no others. A row the thread holds for another peer
        (an index or address that moved) leaves only with that peer's."""
        diff = Diff()
        for peer, before in self._before.items():
            old_entries, old_sender = before if before is not None else ((), None)
            new_entries, new_sender = self._rows.get(peer, ((), None))
            old = {row[0]: row for row in old_entries}
            new = {row[0]: row for row in new_entries}
            diff.gone_indexes += [index for index in old.keys() - new.keys() if self.by_index.get(index) is peer]
            for index, row in new.items():
                if old.get(index) != row:
                    diff.put_entry(row, peer)
            if old_sender == new_sender:
                continue
            if old_sender is not None and (new_sender is None or new_sender[0] != old_sender[0]) \
                    and self.by_overlay.get(old_sender[0]) is peer:
                diff.gone_overlays.append(old_sender[0])
            if new_sender is not None:
                diff.put_sender(new_sender, peer)
        self._before.clear()
        return diff

    def installed(self, diff: Diff) -> None:
        """The thread took `diff` (``Loop.patch``): the installed views follow, in its order."""
        for index in diff.gone_indexes:
            del self.by_index[index]
        for overlay in diff.gone_overlays:
            del self.by_overlay[overlay]
        self.by_index.update((row[0], peer) for row, peer in zip(diff.entries, diff.entry_peers))
        self.by_overlay.update((row[0], peer) for row, peer in zip(diff.senders, diff.sender_peers))

    def tables(self) -> tuple[list[tuple], dict[int, Peer], list[tuple], dict[bytes, Peer]]:
        """(entries, local index → peer, senders, overlay → peer): the whole table, as ``Loop.replace`` takes it."""
        entries, by_index, senders, by_overlay = [], {}, [], {}
        for peer, (rows, sender) in self._rows.items():
            entries += rows
            for row in rows:
                by_index[row[0]] = peer
            if sender is not None:
                senders.append(sender)
                by_overlay[peer.overlay] = peer
        return entries, by_index, senders, by_overlay

    def _check(self, now: float) -> None:
        full = {peer: rows for peer in self._peers if (rows := rows_of(peer, now)) is not None}
        if full != self._rows:
            stale = sorted(peer.name for peer in set(full) | set(self._rows) if full.get(peer) != self._rows.get(peer))
            raise AssertionError(f"native tables kept stale rows for {stale}")
        pins = Counter(_pinned(rows) for rows in full.values())
        del pins[0]
        if pins != self._pins:
            raise AssertionError(f"native tables count pinned sockets {dict(self._pins)}, not {dict(pins)}")


def native_counter(session: Session):
    """The session's send counter shared with the thread (made from ``send_counter`` the first time)."""
    if session.shared_counter is None:
        session.shared_counter = fastpath.native_module().NativeCounter(session.send_counter)
    return session.shared_counter


def native_window(session: Session):
    """The session's window as a NativeWindow (copied from its ReplayWindow the first time)."""
    window = session.window
    native_type = fastpath.native_module().NativeWindow
    if type(window) is not native_type:
        window = session.window = native_type(window)
    return window
