"""What the native thread may open and seal, kept per peer and recomputed only for the peers that changed.

Why: the shell syncs the thread after every input (a coord message, a packet handed to Python);
building and comparing the whole table each time cost O(peers) per input, at 10,000 peers more
than the input itself. As ``meshvpn.node.peertimers`` keeps deadlines, the rows of a peer (its
entries: current and previous session; its sender: current session on a route over the main
socket) are built again only when the peer may have changed:

* marked by the core or the data path (``PeerTable.touched``/``trafficked``, and what the peer
  timers took from them, ``PeerTable.changed``), or given a route or an address
  (``PeerTable.set_route``/``readdress``, which mark ``changed``), or added or removed;
* or when a session in its rows expired (a heap of each peer's earliest expiry).

The thread's table is handed over only when some peer's rows changed. ``check`` compares every
answer with the full rebuild (the tests switch it on). Sans-IO: ``now`` is an argument.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from meshvpn.node.datapath import fastpath
from meshvpn.node.peers import Peer, PeerTable
from meshvpn.node.peertimers import KeyedHeap
from meshvpn.node.transports import MainSocket
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
    if route is not None and session is not None and now < session.expires_at and type(route.transport) is MainSocket:
        endpoint = packed(route.endpoint)
        if endpoint is not None:
            sender = (peer.overlay, session.remote_index, session.send_key, native_counter(session), endpoint,
                      route.prefix, session.expires_at)
    return (entries, sender) if entries or sender is not None else None


def _expiry(rows: Rows) -> float:
    entries, sender = rows
    return min([entry[5] for entry in entries] + ([sender[6]] if sender is not None else []))


class NativeTables:
    """Every peer's rows, as installed; :meth:`update` recomputes those of the peers that changed."""

    check = False
    """Compare every update with the full rebuild over all peers (the tests switch it on)."""

    def __init__(self, peers: PeerTable) -> None:
        self._peers = peers
        peers.changed = set()
        self._rows: dict[Peer, Rows] = {}
        self._expiries: KeyedHeap[Peer] = KeyedHeap()
        self._everyone = True

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
            if rows == self._rows.get(peer):
                continue
            changed = True
            if rows is None:
                del self._rows[peer]
            else:
                self._rows[peer] = rows
        if self.check:
            self._check(now)
        return changed

    def tables(self) -> tuple[list[tuple], dict[int, Peer], list[tuple], dict[bytes, Peer]]:
        """(entries, local index → peer, senders, overlay → peer) for ``Loop.replace`` and the folds."""
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
