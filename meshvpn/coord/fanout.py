"""What the coord tells nodes about their peers, coalesced per network over a short window.

Every join, departure or endpoint change must reach every online peer of the network, so a
network of n nodes coming up costs O(n²) announcements. Sent one frame each, from one event
loop, they took most of an hour at 10,000 nodes, and handshakes waiting behind them missed
their deadline. The membership core now says *what* changed (one `Announce` per change, see
`Membership.actions`), and this module decides how it travels:

* A network's updates wait at most one window after the first one: `FanoutSettings.window`
  seconds, longer in a large network (`window_per_node`, up to `max_window`), whose every round
  costs a frame per online node. A later update of the same peer replaces the earlier one, so a
  window holds each peer once, in its latest state.
* When the window is due it becomes a *round*: the frames are built once for the whole network
  and each delta format (`peer_delta` with field-level changes for nodes of format 2
  (`peerchanges`), with whole peer infos for format 1, else one `peer_update` per change, as
  before deltas existed), and every node online at that moment gets them, except that a node
  never hears about itself. A round costs O(changes + nodes), not O(changes × nodes).
* A removal (a revocation above all) never waits behind updates: it cancels the peer's pending
  update, takes the peer out of the rounds under way, and goes at the next `drain` as a round
  of its own, ahead of every other.
* `drain` hands out at most `FanoutSettings.slice` destinations per call, so the shell serves
  the I/O that is ready between slices: handshakes and keepalives are never starved.
* A network's due window waits while the network's previous round is still being served, and
  takes in what changes meanwhile: when the coord cannot keep up (a starved CPU, 10,000 nodes
  under churn), rounds come less often and carry more, rather than queue up one behind the other
  and put every change further behind.
* A node whose view starts afresh (`registered` and its map) is marked with `fresh`: its map
  holds everything announced so far, so the open window's round sends it only what changes
  after that.
* Before any other message goes to a node, `take` gives it what is still on its way (pending
  removals, its part of the rounds under way, then the open window), so per node every message
  keeps the order the core emitted it in. The open window stays open: its round sends the same
  (or newer) state again, which a node applies as it did the first time.

Sans-IO: `now` is an argument and nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator

from meshvpn.control import messages as m
from meshvpn.coord.peerchanges import PeerStates, change_json
from meshvpn.coord.peermap import PART_BYTES, peer_delta_frames

Audience = Callable[[str], Iterable[tuple[Hashable, bytes, int]]]
"""The nodes online in a network now: (connection, node key, the delta format it takes)."""


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


@dataclass(frozen=True)
class _Change:
    sequence: int
    frame: bytes
    """The peer's `peer_update` frame, with its whole info."""
    info: m.PeerInfo
    fields: frozenset[str] | None
    """What changed in the window (`peerchanges`); None: nodes may not have the peer, send it whole."""


@dataclass
class RoundTimes:
    """Where the fan-out's time goes, summed over the rounds of updates served so far (removals
    go at once and are left out): how long windows waited from their first change to their
    round's start (the window, and the previous round still being served), and how long rounds
    took from their start to their last node."""

    rounds: int = 0
    waited: float = 0.0
    served: float = 0.0

    def add(self, opened: float, started: float, finished: float) -> None:
        self.rounds += 1
        self.waited += started - opened
        self.served += finished - started


@dataclass
class _Window:
    opened: float
    due: float
    changes: dict[bytes, _Change] = field(default_factory=dict)
    """By peer key: its latest update."""
    sequence: int = 0
    """Changes added so far; numbers them."""
    cursors: dict[Hashable, int] = field(default_factory=dict)
    """Nodes whose view started afresh during the window, and the sequence number then."""


class _Frames:
    """One window's updates as frames, built once per delta format and reused."""

    def __init__(self, window: _Window, part_bytes: int) -> None:
        self.changes = window.changes
        self.cursors = window.cursors
        self.part_bytes = part_bytes
        self._shared: dict[int, list[bytes]] = {}
        self._json: dict[bytes, bytes] = {}

    def towards(self, conn_id: Hashable, key: bytes, delta_format: int) -> list[bytes]:
        """The frames for the node `key` on `conn_id`: every change but the one about itself and
        those its fresh view already holds."""
        cursor = self.cursors.get(conn_id)
        if key in self.changes or cursor is not None:
            after = -1 if cursor is None else cursor
            return self._build({k: c for k, c in self.changes.items() if k != key and c.sequence > after}, delta_format)
        frames = self._shared.get(delta_format)
        if frames is None:
            frames = self._shared[delta_format] = self._build(self.changes, delta_format)
        return frames

    def drop(self, key: bytes) -> None:
        """The peer was removed: nobody not yet served hears of this update any more."""
        if self.changes.pop(key, None) is not None:
            self._shared.clear()

    def _build(self, changes: dict[bytes, _Change], delta_format: int) -> list[bytes]:
        if not changes:
            return []
        if delta_format == 0:
            return [change.frame for change in changes.values()]
        if delta_format == 1:
            return peer_delta_frames([change.frame for change in changes.values()], (), self.part_bytes)
        whole = [change.frame for change in changes.values() if change.fields is None]
        fields = [self._field_json(key, change) for key, change in changes.items() if change.fields is not None]
        return peer_delta_frames(whole, (), self.part_bytes, fields)

    def _field_json(self, key: bytes, change: _Change) -> bytes:
        json = self._json.get(key)
        if json is None:
            json = self._json[key] = change_json(change.info, change.fields)
        return json


class _Removals:
    """Peers removed, as frames for every delta format: a round that goes before all others."""

    def __init__(self, part_bytes: int) -> None:
        self.keys: list[bytes] = []
        self.part_bytes = part_bytes
        self.cursors: dict[Hashable, int] = {}
        """Nodes that need only the removals from this index on: their map came after the
        earlier ones, or they took them already."""
        self._shared: dict[bool, list[bytes]] = {}

    def towards(self, conn_id: Hashable, key: bytes, delta_format: int) -> list[bytes]:
        cursor = self.cursors.get(conn_id, 0)
        if cursor:
            return self._build(self.keys[cursor:], delta_format > 0)
        frames = self._shared.get(delta_format > 0)
        if frames is None:
            frames = self._shared[delta_format > 0] = self._build(self.keys, delta_format > 0)
        return frames

    def add(self, key: bytes) -> None:
        self.keys.append(key)
        self._shared.clear()

    def _build(self, keys: list[bytes], deltas: bool) -> list[bytes]:
        if not keys:
            return []
        if deltas:
            return peer_delta_frames((), keys, self.part_bytes)
        return [m.encode(m.PeerRemove(removed)) for removed in keys]

    def drop(self, key: bytes) -> None:
        """Removals are never cancelled."""


@dataclass
class _Round:
    network: str
    frames: _Frames | _Removals
    audience: list[tuple[Hashable, bytes, int]]
    next: int = 0
    served: set[Hashable] = field(default_factory=set)
    """Nodes that got this round early, through `take`."""
    opened: float | None = None
    """When its window took its first change, and when the round started (None: removals)."""
    started: float = 0.0


class Fanout:
    """Pending announcements by network (oldest window first), pending removals, and the rounds under way."""

    def __init__(self, settings: FanoutSettings = FanoutSettings()) -> None:
        self.settings = settings
        self._windows: dict[str, _Window] = {}
        """By network; a window's length depends on its network's size."""
        self._removals: dict[str, _Removals] = {}
        """By network: peers removed since the last `drain`, in order."""
        self._rounds: deque[_Round] = deque()
        self._states = PeerStates()
        self.announcements = 0
        """Changes taken in."""
        self.frames = 0
        """Frames handed out."""
        self.times = RoundTimes()

    def add(self, network: str, subject: bytes, message: m.Message, payload: bytes | None, now: float,
            online: int = 0) -> None:
        """`message` (a peer update or removal about `subject`) is for every other node of
        `network`, where `online` nodes are online now (they set the window's length)."""
        self.announcements += 1
        if isinstance(message, m.PeerRemove):
            self._remove(network, subject)
            return
        window = self._windows.get(network)
        if window is None:
            window = self._windows[network] = _Window(now, now + self.window(online))
        changed = self._states.note(message.peer)
        earlier = window.changes.get(subject)
        if earlier is not None and changed is not None:
            changed = None if earlier.fields is None else earlier.fields | changed
        window.sequence += 1
        window.changes[subject] = _Change(window.sequence, payload or m.encode(message), message.peer, changed)

    def _remove(self, network: str, subject: bytes) -> None:
        self._states.forget(subject)
        window = self._windows.get(network)
        if window is not None:
            window.changes.pop(subject, None)
        for round_ in self._rounds:
            if round_.network == network:
                round_.frames.drop(subject)
        removals = self._removals.get(network)
        if removals is None:
            removals = self._removals[network] = _Removals(self.settings.part_bytes)
        removals.add(subject)

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
        removals = self._removals.get(network)
        if removals is not None:
            removals.cursors[conn_id] = len(removals.keys)

    def get_timer(self) -> float | None:
        """When `drain` has work: now if a removal waits or a round is under way, else when the
        first window is due."""
        if self._rounds or self._removals:
            return float("-inf")
        return min((window.due for window in self._windows.values()), default=None)

    def drain(self, now: float, audience: Audience) -> Iterator[tuple[Hashable, list[bytes]]]:
        """(destination, frames) for at most one slice of destinations: pending removals become
        rounds ahead of all others, due windows rounds behind them, for the nodes `audience` says
        are online in their network now."""
        for network, removals in self._removals.items():
            self._rounds.appendleft(_Round(network, removals, list(audience(network))))
        self._removals.clear()
        busy = {round_.network for round_ in self._rounds if isinstance(round_.frames, _Frames)}
        for network in [name for name, window in self._windows.items() if window.due <= now and name not in busy]:
            window = self._windows.pop(network)
            frames = _Frames(window, self.settings.part_bytes)
            self._rounds.append(_Round(network, frames, list(audience(network)), opened=window.opened, started=now))
        budget = self.settings.slice
        while self._rounds and budget:
            round_ = self._rounds[0]
            while round_.next < len(round_.audience) and budget:
                conn_id, key, delta_format = round_.audience[round_.next]
                round_.next += 1
                if conn_id not in round_.served:
                    budget -= 1
                    yield conn_id, self._count(round_.frames.towards(conn_id, key, delta_format))
            if round_.next == len(round_.audience):
                self._rounds.popleft()
                if round_.opened is not None:
                    self.times.add(round_.opened, round_.started, now)

    def take(self, conn_id: Hashable, network: str, key: bytes, delta_format: int) -> list[bytes]:
        """What is on its way to the node `key` on `conn_id` in `network`, to send before anything else."""
        frames: list[bytes] = []
        removals = self._removals.get(network)
        if removals is not None:
            frames += removals.towards(conn_id, key, delta_format)
            removals.cursors[conn_id] = len(removals.keys)
        for round_ in self._rounds:
            if round_.network == network and conn_id not in round_.served:
                round_.served.add(conn_id)
                frames += round_.frames.towards(conn_id, key, delta_format)
        window = self._windows.get(network)
        if window is not None:
            frames += _Frames(window, self.settings.part_bytes).towards(conn_id, key, delta_format)
        return self._count(frames)

    def _count(self, frames: list[bytes]) -> list[bytes]:
        self.frames += len(frames)
        return frames
