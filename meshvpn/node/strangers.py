"""Probes from keys that are not our peers yet: kept a moment, and taken once the coord names the key.

Why: the coord batches its peer fan-out (up to 0.25 s after the first change,
``docs/coordination.md``), so a node that has just joined may know us and punch before we
have heard of it. Its probe cannot be opened then: the box key of a key we were not told about
would cost an X25519 operation, which anyone could make us spend by naming random keys. Dropped,
the probe wasted the prober's punch round, and its path waited for the next one. So the core
counts it ("probe from unknown key") and keeps it here, and when the peer map adds the key it
takes each kept probe as if it had just come: opened and checked as every probe is (authentic,
fresh, addressed to us, not replayed), answered, and handed to the path finder, which probes
back. The prober's first round then proves its path.

Nothing kept is authenticated, so nothing is done with it before its key is a peer, and then
only through those checks: a forged probe kept for a key fails them as it would have on arrival.
The memory is bounded against a flood of random keys and sources: at most `MAX_KEYS` keys (the
least recently heard goes first), `PER_KEY` probes each (the newest), each at most
``wire.PROBE_MAX_LEN`` bytes, none kept past `KEEP_FOR`: about 110 kB of probes at the most. A
datagram costs a dictionary lookup, an append and an eviction from the front (amortized O(1): a
key leaves at most once per time it came), and no cryptography. Sans-IO: time is an argument.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Optional

from meshvpn.wire import PROBE_MAX_LEN, Endpoint

KEEP_FOR = 2.0
"""Seconds a probe from an unknown key is kept. The coord's fan-out window (0.25 s; at most 1 s, in a
network of 10,000 nodes) and its links' delays fit; by then the prober's own rounds have gone on (its
burst lasts 0.8 s), and a probe more than ``probes.PROBE_REORDER`` (2 s) older than the newest taken
from its key would be refused anyway."""
PER_KEY = 4
"""Probes kept per key, the newest: a round's probes to each of our addresses that reach us (LAN,
public, IPv6), one round or two; more from one key in that time would add nothing but memory."""
MAX_KEYS = 256
"""Keys kept at once, the most recently heard: more nodes than this joining within `KEEP_FOR` of one
another is a flood, not a start; past it the least recently heard key's probes go (its round waits
for the next, as before they were kept)."""


class KeptProbe(NamedTuple):
    """A probe from a key that was not a peer, as it arrived."""

    data: bytes
    """The sealed probe, unopened."""
    src: Endpoint
    """Where it came from (unverified until the probe is opened)."""
    via: Optional[int]
    """The extra socket it arrived on; None is the main one."""
    at: float
    """When it arrived (monotonic seconds)."""


class Strangers:
    """The newest probes of each recently heard unknown key, until the key becomes a peer."""

    def __init__(self, max_keys: int = MAX_KEYS, per_key: int = PER_KEY, keep_for: float = KEEP_FOR) -> None:
        self.max_keys, self.per_key, self.keep_for = max_keys, per_key, keep_for
        self._kept: OrderedDict[bytes, list[tuple]] = OrderedDict()
        """Key -> its newest probes (plain tuples of a `KeptProbe`'s fields: a flood makes many), oldest
        first; the least recently heard key first."""

    def __len__(self) -> int:
        """Keys kept (some may be past `keep_for`, until the next probe or `take` clears them)."""
        return len(self._kept)

    def probes(self) -> int:
        """Probes kept, of every key."""
        return sum(len(kept) for kept in self._kept.values())

    def heard(self, key: bytes, data: bytes, src: Endpoint, via: Optional[int], now: float) -> None:
        """A PROBE from ``key``, not a peer, arrived straight from ``src`` (on socket ``via``) at ``now``."""
        if len(data) > PROBE_MAX_LEN:
            return  # no probe is that long: it would fail to open
        kept = self._kept.get(key)
        if kept is None:
            self._kept[key] = [(bytes(data), src, via, now)]
        else:
            self._kept.move_to_end(key)
            kept.append((bytes(data), src, via, now))
            if len(kept) > self.per_key:
                del kept[0]
        self._forget(now)

    def take(self, key: bytes, now: float) -> list[KeptProbe]:
        """The probes ``key`` sent within `keep_for`, oldest first, and forget them: it is a peer now."""
        kept = self._kept.pop(key, ())
        return [KeptProbe(*probe) for probe in kept if now - probe[3] <= self.keep_for]

    def _forget(self, now: float) -> None:
        """Drop the least recently heard keys past the limit, and those heard last before `keep_for`."""
        kept = self._kept
        while len(kept) > self.max_keys or (kept and now - kept[next(iter(kept))][-1][3] > self.keep_for):
            kept.popitem(last=False)
