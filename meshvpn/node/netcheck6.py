"""`meshvpn netcheck`'s IPv6 line: whether this host has a global IPv6 address, what the
coordination server's STUN service sees over IPv6, and whether the coord and the relays answer
over IPv6 (a TCP connect, as for IPv4).

The coord's IPv6 address is the first of its configured addresses that is an IPv6 literal or a
name with an AAAA record (`meshvpn.node.ipv6.stun_server6`). A relay's are the IPv6 ones among
the addresses the daemon's link knows for it (a name's AAAA records beside its A records, even
when the link reached it over IPv4), raced as the link races them (`netcheck_relays.connect_time`).
Without a global address nothing is sent over IPv6.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

from meshvpn.config import NodeConfig
from meshvpn.node.family import is_ipv6
from meshvpn.node.ipv6 import local_ipv6, stun_server6
from meshvpn.node.netcheck_relays import connect_time
from meshvpn.stunio import stun_binding
from meshvpn.wire import Endpoint

TIMEOUT = 2.0
"""Seconds each IPv6 check may take."""


@dataclass
class Ipv6Report:
    """What the IPv6 checks found; None where a check could not run."""

    addresses: list[str] = field(default_factory=list)
    """The host's global IPv6 addresses (those a node announces)."""
    stun: str | None = None
    """Our IPv6 endpoint as the coord's STUN service saw it."""
    stun_error: str | None = None
    """Why there is no STUN answer over IPv6."""
    coord: dict[str, float | None] = field(default_factory=dict)
    """The coord's IPv6 endpoint: TCP connect seconds, None if it did not answer."""
    relays: dict[str, float | None | str] = field(default_factory=dict)
    """Each relay: TCP connect seconds over IPv6, None if unreachable, "no IPv6 address"."""


async def check_ipv6(config: NodeConfig, relays: dict[str, Sequence[tuple[str, int]]]) -> Ipv6Report:
    """Run the IPv6 checks (`relays`: name to its addresses, (host, port) each); never raises for the network."""
    report = Ipv6Report([e.host for e in local_ipv6(0, config.tun.name, config.listen.ipv6_ula)])
    if not report.addresses:
        return report
    server = await stun_server6(config)
    if server is None:
        report.stun_error = "the coord has no IPv6 address"
    else:
        try:
            result = await stun_binding(server, timeout=TIMEOUT)
            report.stun = str(Endpoint(*result.mapped))
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            report.stun_error = str(exc) or type(exc).__name__
        coord = Endpoint(server.host, config.coord.address.port)
        report.coord[str(coord)] = await connect_time([coord])
    for name, addresses in relays.items():
        ipv6 = [address for address in addresses if is_ipv6(address)]
        report.relays[name] = await connect_time(ipv6) if ipv6 else "no IPv6 address"
    return report


def render_ipv6(report: Ipv6Report) -> str:
    """The report's one line."""
    if not report.addresses:
        return "IPv6: no global address"
    parts = [f"IPv6: global {', '.join(report.addresses)}",
             f"STUN {report.stun}" if report.stun else f"STUN no answer ({report.stun_error})"]
    parts += [f"coord {where} {_reached(rtt)}" for where, rtt in report.coord.items()]
    parts += [f"relay {name} {_reached(rtt)}" for name, rtt in sorted(report.relays.items())]
    return "; ".join(parts)


def _reached(rtt: float | None | str) -> str:
    if isinstance(rtt, str):
        return rtt
    return "unreachable" if rtt is None else f"{rtt * 1000:.1f} ms"
