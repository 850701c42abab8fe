"""The relay's native forwarding thread, its Python face: what it may forward, and what it counted.

Why: a relayed ping paid the asyncio loop's wake-up and dispatch twice per round trip over a
direct one (docs/relay.md, "The native thread"). ``meshvpn._fastpath.RelayLoop`` is a thread
without the GIL that owns the reads of the relay's UDP socket and forwards RELAY envelopes from
a registered UDP endpoint to a registered UDP endpoint of the same network with `RelayCore`'s
rules; everything else comes back through :meth:`NativeForwarder.take` for the core.

Python keeps every registration. The thread forwards from a copy of the core's `Registry`
(key, network, UDP endpoint or a TCP stream, bucket), installed by :meth:`NativeForwarder.sync`
after every input when the registry's ``generation`` moved; the buckets are the registrations'
own ``NativeBucket`` objects, which both threads spend. :meth:`NativeForwarder.pull` folds what
the thread counted (forwarded packets, bytes and runs, drops by the core's reasons, each node's
``last_heard``) into the core, so `status`, metrics, expiry and the hello checks see every
envelope whichever thread checked it.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from typing import Callable, Optional

from meshvpn.node.datapath import fastpath
from meshvpn.relay.core import RelayCore
from meshvpn.wire import Endpoint

DROPS = ("rate limited", "malformed", "destination not registered", "destination in another network",
         "sender's token expired", "destination's token expired")
"""The thread's drop counts, in the order it reports them: `RelayCore`'s reasons."""
FORWARDED = ("forwarded natively", "forwarded bytes", "runs", "udp sends", "udp send errors")
"""The forwarding counts a node's native loop reports for its peer relay (`Loop.relay_counts`), in order."""
TOTALS = ("receives", "forwarded natively", "forwarded bytes", "runs", "udp sends", "udp send errors",
          "handed to python", "queue full")
"""The thread-wide counts of `counts()`, in the order the thread reports them."""
QUEUE_FULL = "hand-over queue full"
"""The drop reason of a receive the thread could not hand to Python (more than 4 MiB waiting)."""


def available(clock: Callable[[], float]) -> bool:
    """Whether the thread can serve a relay on `clock`: the extension is in use, and the clock is the wall
    clock the thread reads (tokens and buckets are in Unix seconds, and both threads spend one bucket)."""
    module = fastpath.native_module()
    return module is not None and hasattr(module, "RelayLoop") and clock is time.time


def describe(clock: Callable[[], float]) -> str:
    """The start-up log's words: where the relay forwards, and why not natively."""
    if available(clock):
        return "in a native thread"
    if fastpath.native_module() is None:
        return f"in Python: the data path is {fastpath.DATA_PATH_TEXT}"
    return "in Python: the relay runs on another clock than the wall clock"


def bucket_factory():
    """The registrations' buckets when the thread runs: one `TokenBucket` both threads spend."""
    return fastpath.native_module().NativeBucket


def _packed(link) -> Optional[tuple[bytes, int]]:
    """A UDP endpoint as the thread takes it; None for a TCP stream (or an address it cannot hold)."""
    if not isinstance(link, tuple):
        return None
    try:
        return ipaddress.ip_address(link[0]).packed, int(link[1])
    except ValueError:
        return None


class NativeForwarder:
    """Owns one ``meshvpn._fastpath.RelayLoop``: its registrations, its hand-over queue and its counts."""

    def __init__(self, core: RelayCore, udp_fd: int, busy_poll_us: int = 0) -> None:
        self._loop = fastpath.native_module().RelayLoop(udp_fd, busy_poll_us)
        self._core = core
        self._generation = -1
        self.totals: Counter = Counter()
        """Thread-wide counts (TOTALS) since start."""
        self.send_errors = 0
        """UDP sends of the thread the kernel refused."""

    def start(self) -> None:
        self.sync()
        self._loop.start()

    def stop(self) -> None:
        """Stop and join the thread (before the socket closes); its counts are folded in."""
        self._loop.stop()
        self.pull()

    def fileno(self) -> int:
        """An eventfd, readable while receives wait in :meth:`take`."""
        return self._loop.fileno()

    def take(self) -> list[tuple[bytes, Endpoint, int]]:
        """The receives handed over, in order: (datagrams of `seg` bytes back to back, source, seg)."""
        return [(data, Endpoint(*source), seg) for data, source, seg in self._loop.take()]

    def sync(self) -> None:
        """Install the registrations in the thread if they changed since the last call."""
        registry = self._core.registry
        if registry.generation == self._generation:
            return
        fold_heard(self._core, self._loop.replace(registrations(self._core)))
        self._generation = registry.generation

    def pull(self) -> None:
        """Fold what the thread counted into the core: forwarded, drops, and each node's last_heard."""
        heard, totals, drops = self._loop.counts()
        counts = dict(zip(TOTALS, totals))
        self.totals.update(counts)
        self.send_errors += counts["udp send errors"]
        fold(self._core, heard, counts, drops)
        if counts["queue full"]:
            self._core.drops[QUEUE_FULL] += counts["queue full"]


def registrations(core: RelayCore) -> list[tuple]:
    """The core's registrations as a thread installs them: key, a number for its network, its UDP
    endpoint (None for a stream), its bucket and its token's expiry."""
    networks: dict[bytes, int] = {}
    return [(reg.key, networks.setdefault(reg.network, len(networks)), _packed(reg.link), reg.bucket, reg.expires)
            for reg in core.registry.by_key.values()]


def fold(core: RelayCore, heard: list[tuple[bytes, float]], counts: dict, drops: tuple) -> None:
    """What a thread forwarded and dropped into `core`'s stats and drops, and each node's last_heard."""
    fold_heard(core, heard)
    core.stats.forwarded += counts["forwarded natively"]
    core.stats.forwarded_bytes += counts["forwarded bytes"]
    core.stats.runs += counts["runs"]
    for reason, count in zip(DROPS, drops):
        if count:
            core.drops[reason] += count


def fold_heard(core: RelayCore, heard: list[tuple[bytes, float]]) -> None:
    for key, when in heard:
        core.registry.heard(key, when)
