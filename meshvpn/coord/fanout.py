"""What the coord tells nodes about their peers, coalesced per network over a short window.

Every join, departure or endpoint change must reach every online peer of the network, so a
network of n nodes coming up costs O(n²) announcements. Sent one frame each, from one event
loop, they took most of an hour at 10,000 nodes, and handshakes waiting behind them missed
their deadline. The membership core now says *what* changed (one `Announce` per change, see
`Membership.actions`), and this module decides how it travels:

* A network's changes wait at most one window after the first one: `FanoutSettings.window`
  seconds, longer in a large network (`window_per_node`, up to `max_window`), whose every round
  costs a frame per online node. A
  later change of the same peer replaces the earlier one; a removal cancels an update (and an
  update after a removal replaces it), so a window holds each peer once, in its latest state.
* When the window is due it becomes a *round*: the frames are built once for the whole network
  (one `peer_delta` for nodes that registered with `deltas`, else one `peer_update` or
  `peer_remove` per change, as before deltas existed), and every node online at that moment
  gets them, except that a node never hears about itself. A round costs O(changes + nodes),
  not O(changes × nodes).
* `drain` hands out at most `FanoutSettings.slice` destinations per call, so the shell serves
  the I/O that is ready between slices: handshakes and keepalives are never starved.
* A node whose view starts afresh (`registered` and its map) is marked with `fresh`: its map
  holds everything announced so far, so the open window's round sends it only what changes
  after that.
* Before any other message goes to a node, `take` gives it what is still on its way (its part
  of a round under way, then the open window), so per node every message keeps the order the
  core emitted it in. The open window stays open: its round sends the same (or newer) state
  again, which a node applies as it did the first time.

Sans-IO: `now` is an argument and nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator

from meshvpn.control import messages as m
from meshvpn.coord.peermap import PART_BYTES, peer_delta_frames

_REMOVED = None
"""A change that removes the peer (in place of its `peer_update` frame)."""

Audience = Callable[[str], Iterable[tuple[Hashable, bytes, bool]]]
"""The nodes online in a network now: (connection, node key, takes deltas)."""


@dataclass(frozen=True)
class FanoutSettings:
    """How long announcements wait to be coalesced, and how many nodes one drain serves."""

    window: float = 0.25
    """Seconds a network's first pending change waits for later ones to join it (at least)."""
    window_per_node: float = 100e-6
    """Seconds of window per node online in the network: every round costs each online node a
    sealed frame (some 60 µs of the coord's CPU), so a large network's rounds come less often,
    and serving them keeps within about half a core (1 s at 10,000 nodes)."""
    max_window: float = 1.0
    """The longest window, however large the network: a change still reaches peers within 2 s."""
    slice: int = 256
    """Destinations one `drain` call hands out; the rest wait for the next loop iteration."""
    part_bytes: int = PART_BYTES
    """Peer JSON per `peer_delta` frame; a larger delta goes as several."""


@dataclass
class _Window:
    due: float
    changes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    """Peer key → (sequence number, its latest `peer_update` frame or `_REMOVED`)."""
    sequence: int = 0
    """Changes added so far; numbers them."""
    cursors: dict[Hashable, int] = field(default_factory=dict)
    """Nodes whose view started afresh during the window, and the sequence number then."""


class _Frames:
    """One window's changes as frames, built once per kind of node and reused."""

    def __init__(self, window: _Window, part_bytes: int) -> None:
        self.changes = window.changes
        self.cursors = window.cursors
        self.part_bytes = part_bytes
        self._shared: dict[bool, list[bytes]] = {}

    def towards(self, conn_id: Hashable, key: bytes, deltas: bool) -> list[bytes]:
        """The frames for the node `key` on `conn_id`: every change but the one about itself and
        those its fresh view already holds."""
        cursor = self.cursors.get(conn_id)
        if key in self.changes or cursor is not None:
            after = -1 if cursor is None else cursor
            return self._build({k: c for k, c in self.changes.items() if k != key and c[0] > after}, deltas)
        frames = self._shared.get(deltas)
        if frames is None:
            frames = self._shared[deltas] = self._build(self.changes, deltas)
        return frames

    def _build(self, changes: dict[bytes, tuple[int, bytes | None]], deltas: bool) -> list[bytes]:
        if not changes:
            return []
        updates = [change for _, change in changes.values() if change is not _REMOVED]
        removed = [key for key, (_, change) in changes.items() if change is _REMOVED]
        if deltas:
            return peer_delta_frames(updates, removed, self.part_bytes)
        return updates + [m.encode(m.PeerRemove(key)) for key in removed]


@dataclass
class _Round:
    network: str
    frames: _Frames
    audience: list[tuple[Hashable, bytes, bool]]
    next: int = 0
    served: set[Hashable] = field(default_factory=set)
    """Nodes that got this round early, through `take`."""


class Fanout:
    """Pending announcements by network (oldest window first) and the rounds under way."""

    def __init__(self, settings: FanoutSettings = FanoutSettings()) -> None:
        self.settings = settings
        self._windows: dict[str, _Window] = {}
        """By network; a window's length depends on its network's size."""
        self._rounds: deque[_Round] = deque()
        self.announcements = 0
        """Changes taken in."""
        self.frames = 0
        """Frames handed out."""

    def add(self, network: str, subject: bytes, message: m.Message, payload: bytes | None, now: float,
            online: int = 0) -> None:
        """`message` (a peer update or removal about `subject`) is for every other node of
        `network`, where `online` nodes are online now (they set the window's length)."""
        window = self._windows.get(network)
        if window is None:
            window = self._windows[network] = _Window(now + self.window(online))
        window.sequence += 1
        change = _REMOVED if isinstance(message, m.PeerRemove) else payload or m.encode(message)
        window.changes[subject] = (window.sequence, change)
        self.announcements += 1

    def window(self, online: int) -> float:
        """How long a window lasts in a network of `online` nodes online."""
        settings = self.settings
        return min(settings.max_window, max(settings.window, online * settings.window_per_node))

    def fresh(self, conn_id: Hashable, network: str) -> None:
        """The node on `conn_id` starts its view of `network` afresh now (`registered` and a full
        map): the open window sends it only changes that come after."""
        window = self._windows.get(network)
        if window is not None:
            window.cursors[conn_id] = window.sequence

    def get_timer(self) -> float | None:
        """When `drain` has work: now if a round is under way, else when the first window is due."""
        if self._rounds:
            return float("-inf")
        return min((window.due for window in self._windows.values()), default=None)

    def drain(self, now: float, audience: Audience) -> Iterator[tuple[Hashable, list[bytes]]]:
        """(destination, frames) for at most one slice of destinations: due windows become
        rounds for the nodes `audience` says are online in their network now."""
        for network in [name for name, window in self._windows.items() if window.due <= now]:
            frames = _Frames(self._windows.pop(network), self.settings.part_bytes)
            self._rounds.append(_Round(network, frames, list(audience(network))))
        budget = self.settings.slice
        while self._rounds and budget:
            round_ = self._rounds[0]
            while round_.next < len(round_.audience) and budget:
                conn_id, key, deltas = round_.audience[round_.next]
                round_.next += 1
                if conn_id not in round_.served:
                    budget -= 1
                    yield conn_id, self._count(round_.frames.towards(conn_id, key, deltas))
            if round_.next == len(round_.audience):
                self._rounds.popleft()

    def take(self, conn_id: Hashable, network: str, key: bytes, deltas: bool) -> list[bytes]:
        """What is on its way to the node `key` on `conn_id` in `network`, to send before anything else."""
        frames: list[bytes] = []
        for round_ in self._rounds:
            if round_.network == network and conn_id not in round_.served:
                round_.served.add(conn_id)
                frames += round_.frames.towards(conn_id, key, deltas)
        window = self._windows.get(network)
        if window is not None:
            frames += _Frames(window, self.settings.part_bytes).towards(conn_id, key, deltas)
        return self._count(frames)

    def _count(self, frames: list[bytes]) -> list[bytes]:
        self.frames += len(frames)
        return frames
