"""Sealing a fan-out slice's frames on two threads: the event loop's and one more.

At 10,000 nodes a round of updates is a sealed frame for every node online, several kilobytes
each under churn, and sealing them is about half of what a round costs the coord. cffi releases
the GIL around libsodium's encryption, so a second thread seals half of a
slice's connections while the loop's thread seals the other half; then the loop's thread writes
them all. Each connection is sealed by one thread only, and nothing else runs on the loop's
thread meanwhile, so no channel's frames can be numbered out of order; and the scheduler sees
two threads wanting the CPU instead of one, on a machine the coord shares. (On the shared
development VM no core was ever free, so what it gains could not be measured there.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from meshvpn.coord.connection import Connection

PARALLEL_FROM = 16
"""Connections in a slice below which its sealing stays on the loop's thread: handing work to
another thread costs tens of microseconds."""


def _seal_all(deliveries: list[tuple[Connection, list[bytes]]]) -> list[str | None]:
    return [conn.seal(frames) for conn, frames in deliveries]


class Sealer:
    """Seals and writes the frames of fan-out slices (`Fanout.drain`)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="meshvpn-seal")

    def send(self, deliveries: Iterable[tuple[Connection, list[bytes]]]) -> None:
        """Seal each connection's frames in order and write them; a connection may come twice
        (a removal's round and a window's in one slice), and keeps its order."""
        by_conn: dict[Connection, list[bytes]] = {}
        for conn, frames in deliveries:
            if frames:
                by_conn.setdefault(conn, []).extend(frames)
        ready = [(conn, frames) for conn, frames in by_conn.items() if conn.takes_round(frames)]
        half = len(ready) // 2 if len(ready) >= PARALLEL_FROM else 0
        other = self._pool.submit(_seal_all, ready[half:]) if half else None
        problems = _seal_all(ready[:half] if other is not None else ready)
        if other is not None:
            problems += other.result()
        for (conn, _), problem in zip(ready, problems):
            conn.write_sealed(problem)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
