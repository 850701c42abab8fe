"""A peer's recent path changes, each with its reason and how long it took (sans-IO).

``meshvpn status`` answers "why is this pair relayed, and since when?" from here. What "took"
means depends on the direction of the change:

* **to a direct path** (LAN, UDP or TCP, from none or the relay): seconds since the peer was
  last without one, that is since the search began or since the old direct path went silent:
  ``relay→direct (punched 1.9 s)``;
* **away from a direct path** (timeout, lost): seconds of silence on the old path before it was
  given up (``last_heard``): ``direct→relay (path timeout 10.0 s)``;
* **to the relay while searching**: seconds since the search began: ``-→relay (relay fallback 2.0 s)``;
* between two direct paths (a better one): nothing to time.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Optional

from meshvpn.node.events import PeerPathChanged
from meshvpn.node.pathfinder import ChangeReason, Path, PathKind
from meshvpn.wire import Endpoint

HISTORY = 8
"""Changes kept per peer."""
_DIRECT = (PathKind.LAN, PathKind.DIRECT, PathKind.TCP)


@dataclass(frozen=True)
class PathRecord:
    """One change of a peer's path."""

    at: float
    old: Optional[str]
    """Kind of the old path (``lan``, ``direct``, ``tcp``, ``relay``), None for no path."""
    new: Optional[str]
    reason: str
    took: Optional[float]
    """Seconds, as the module docstring says; None when there is nothing to time."""

    def text(self) -> str:
        took = "" if self.took is None else f" {self.took:.1f} s"
        return f"{self.old or '-'}→{self.new or '-'} ({self.reason}{took})"

    def as_dict(self, now: float) -> dict:
        return {"ago": round(now - self.at, 3), "old": self.old, "new": self.new, "reason": self.reason,
                "took": None if self.took is None else round(self.took, 3), "text": self.text()}


def last_heard(change: PeerPathChanged, last_rx: float, last_rx_src: Optional[Endpoint], path_timeout: float,
               now: float) -> Optional[float]:
    """When the old path of `change` was last heard: the data path's last traffic from its endpoint,
    or, for a timeout with no such traffic, `path_timeout` before now (which is what the timeout says)."""
    if change.old is None:
        return None
    if last_rx and last_rx_src == change.old.endpoint:
        return last_rx
    return now - path_timeout if change.reason == ChangeReason.PATH_TIMEOUT else None


@dataclass
class PathLog:
    """The last `HISTORY` changes of one peer's path, and when it was last without a direct one."""

    records: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    searching_since: Optional[float] = None
    """When the peer was last left without a direct path (None while it has one, or never wanted one)."""
    counts: Counter = field(default_factory=Counter)
    """Every change since the peer was added, by reason (for metrics)."""
    seconds: Counter = field(default_factory=Counter)
    """The sum of the timed changes' seconds, by reason (for metrics: a mean per reason)."""

    def wanted(self, current: Optional[Path], now: float) -> None:
        """A punch starts while the path is `current`: without a direct one, the search is timed from here."""
        if self.searching_since is None and (current is None or current.kind not in _DIRECT):
            self.searching_since = now

    def changed(self, old: Optional[Path], new: Optional[Path], reason: str, now: float,
                heard: Optional[float]) -> PathRecord:
        """Record a change; `heard` is when traffic last arrived on the old path (None: unknown)."""
        was_direct = old is not None and old.kind in _DIRECT
        is_direct = new is not None and new.kind in _DIRECT
        took: Optional[float] = None
        if is_direct and not was_direct:
            took = None if self.searching_since is None else now - self.searching_since
            self.searching_since = None
        elif was_direct and not is_direct:
            took = None if heard is None else now - heard
            self.searching_since = now if heard is None else heard
        elif not is_direct and self.searching_since is not None:
            took = now - self.searching_since
        record = PathRecord(now, None if old is None else old.kind.value, None if new is None else new.kind.value,
                            reason, took)
        self.records.append(record)
        self.counts[reason] += 1
        if took is not None:
            self.seconds[reason] += took
        return record

    def record(self, change: PeerPathChanged, last_rx: float, last_rx_src: Optional[Endpoint], path_timeout: float,
               now: float) -> PathRecord:
        """Record the node's `change`, given when the data path last heard the peer and from where."""
        heard = last_heard(change, last_rx, last_rx_src, path_timeout, now)
        return self.changed(change.old, change.new, change.reason, now, heard)
