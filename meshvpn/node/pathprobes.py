"""The probes a path finder has in flight, and which of them a reply answers.

Each probe carries a random transaction id, sealed with the pair's key, so only the peer can
answer it: the id names the candidate the probe went to and when it went. A reply proves a path
only when it answers such a probe sent at most `path_timeout` ago (`PathFinder` then checks that
it came from that very endpoint). At most `max_pending` probes are remembered; the oldest make
room. A predicted port the strategy guessed is a candidate nowhere else, so roaming looks here for
the peer's extra sockets we probed (`PathFinder.roamed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from meshvpn.node.candidates import Candidate
from meshvpn.node.pathtimers import PathFinderConfig


@dataclass
class PendingProbe:
    """One probe in flight: where it went, and when."""

    candidate: Candidate
    sent_at: float


class PendingProbes:
    """The probes in flight by transaction id, oldest first; `rng` draws each id (8 random bytes)."""

    def __init__(self, rng: Callable[[], bytes], config: PathFinderConfig) -> None:
        self._rng = rng
        self._config = config
        self._pending: dict[bytes, PendingProbe] = {}

    def send(self, candidate: Candidate, now: float) -> bytes:
        """A probe to `candidate` leaves now: its transaction id."""
        tx_id = self._rng()
        self._pending[tx_id] = PendingProbe(candidate, now)
        if len(self._pending) > self._config.max_pending:
            del self._pending[next(iter(self._pending))]
        return tx_id

    def answered(self, tx_id: bytes, now: float) -> PendingProbe | None:
        """The probe a reply with `tx_id` answers, taken; None for one we never sent, forgot, or
        sent more than `path_timeout` ago (that one stays until it makes room)."""
        probe = self._pending.get(tx_id)
        if probe is None or now - probe.sent_at > self._config.path_timeout:
            return None
        del self._pending[tx_id]
        return probe

    def take(self, tx_id: bytes) -> PendingProbe | None:
        """The probe `tx_id` names, taken whatever its age (a reply over TCP checks its own way)."""
        return self._pending.pop(tx_id, None)

    def candidates(self) -> Iterator[Candidate]:
        """Where the probes in flight went, oldest first."""
        return (probe.candidate for probe in self._pending.values())
