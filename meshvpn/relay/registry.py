"""The relay's registrations: which node is on which link, in which network, with what allowance.

Why apart from the core: the core's checks read it, and the relay's native thread
(`meshvpn.relay.native`) forwards from a copy of it, installed again whenever `generation`
moves (a node registered, moved to another link or network, or gone; a refreshing hello from
the same link and network changes nothing the thread reads). The buckets are the thread's too,
so they are made by the `bucket` factory: `TokenBucket`, or a native bucket both threads spend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

from meshvpn.config import RelayLimits
from meshvpn.ratelimit import TokenBucket

BucketFactory = Callable[[float, float, float], TokenBucket]
"""(rate, burst, now) → a bucket with TokenBucket's methods and attributes."""


@dataclass(eq=False)
class Registration:
    """One node's link and its forwarding allowance."""

    key: bytes
    link: Hashable
    """A UDP endpoint, or the core's `Stream`."""
    expires: float
    """When the node's token runs out."""
    last_heard: float
    bucket: TokenBucket
    network: bytes
    """The network the node's token names: envelopes go only to nodes of the same."""


class Registry:
    """Registrations by node key and by link (one node per link, one link per node)."""

    def __init__(self, bucket: BucketFactory = TokenBucket) -> None:
        self.by_key: dict[bytes, Registration] = {}
        self.by_link: dict[Hashable, Registration] = {}
        self.generation = 0
        """Moves whenever a key, link or network changes: the native thread's copy is then stale."""
        self._bucket = bucket

    def register(self, node: bytes, link: Hashable, expires: float, network: bytes, limits: RelayLimits,
                 now: float) -> Registration:
        """Bind `node` to `link` (a node already there is unregistered), or refresh its registration."""
        reg = self.by_key.get(node)
        if reg is None:
            bucket = self._bucket(limits.packets_per_second, limits.burst, now)
            reg = Registration(node, link, expires, now, bucket, network)
            self.by_key[node] = reg
            self.generation += 1
        elif reg.link != link:
            if self.by_link.get(reg.link) is reg:
                del self.by_link[reg.link]
            reg.link = link
            self.generation += 1
        old = self.by_link.get(link)
        if old is not None and old is not reg:
            self.unregister(old)
        self.by_link[link] = reg
        self.generation += reg.network != network
        reg.expires = expires
        reg.network = network
        reg.last_heard = now
        return reg

    def unregister(self, reg: Registration) -> None:
        if self.by_key.get(reg.key) is reg:
            del self.by_key[reg.key]
            self.generation += 1
        if self.by_link.get(reg.link) is reg:
            del self.by_link[reg.link]

    def set_limits(self, limits: RelayLimits) -> None:
        """New rate and burst for every bucket; each keeps its level, capped at the new burst."""
        for reg in self.by_key.values():
            reg.bucket.rate, reg.bucket.burst = limits.packets_per_second, limits.burst
            reg.bucket.tokens = min(reg.bucket.tokens, limits.burst)

    def heard(self, node: bytes, when: float) -> None:
        """An envelope of `node` was checked at `when` elsewhere (the native thread): it is alive."""
        reg = self.by_key.get(node)
        if reg is not None and when > reg.last_heard:
            reg.last_heard = when
