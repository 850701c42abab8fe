"""Connections per source prefix, capped, without I/O: one host, or one subnet, cannot take every
descriptor of the coord or the relay.

A cap per single address alone lets an IPv6 host (which holds a /64 or more) or a small
IPv4 subnet sidestep it, so each source counts against its IPv4 /32 and /24, or its IPv6 /64
and /48, and is refused when any of them is full. IPv4-mapped IPv6 sources count as IPv4.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefixLimits:
    """Connections allowed per source prefix; many nodes may share a NAT, so a host gets many."""

    per_host: int = 1024
    """Per IPv4 address or IPv6 /64 (what one host usually holds)."""
    per_subnet: int = 4096
    """Per IPv4 /24 or IPv6 /48 (what one site usually holds)."""


def prefixes(host: str) -> tuple[str, str]:
    """The host-sized and site-sized prefixes `host` counts against."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    lengths = (32, 24) if address.version == 4 else (64, 48)
    return tuple(str(ipaddress.ip_network(f"{address}/{n}", strict=False)) for n in lengths)  # type: ignore[return-value]


class PrefixCaps:
    """Counts admitted connections per prefix; `admit` and `release` come in pairs per connection."""

    def __init__(self, limits: PrefixLimits) -> None:
        self.limits = limits
        self._counts: dict[str, int] = {}

    def admit(self, host: str) -> str | None:
        """Count one connection from `host`; or, if a prefix is full, count nothing and name it."""
        keys = prefixes(host)
        for key, cap in zip(keys, (self.limits.per_host, self.limits.per_subnet)):
            if self._counts.get(key, 0) >= cap:
                return key
        for key in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
        return None

    def release(self, host: str) -> None:
        """One connection admitted from `host` ended."""
        for key in prefixes(host):
            remaining = self._counts[key] - 1
            if remaining:
                self._counts[key] = remaining
            else:
                del self._counts[key]

    def count(self, host: str) -> int:
        """Connections now counted against `host`'s own prefix."""
        return self._counts.get(prefixes(host)[0], 0)
