"""`meshvpn netcheck`'s IPv6 line: whether this host has a global IPv6 address, what the
coordination server's STUN service sees over IPv6, and whether the coord and the relays answer
over IPv6 (a TCP connect, as for IPv4).

The coord's IPv6 address is the first of its configured addresses that is an IPv6 literal or a
name with an AAAA record (`meshvpn.node.ipv6.stun_server6`); a relay's, its address if that is
an IPv6 literal or a name with one. Without a global address nothing is sent over IPv6.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from meshvpn.config import NodeConfig
from meshvpn.node.ipv6 import local_ipv6, stun_server6
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


async def check_ipv6(config: NodeConfig, relays: dict[str, tuple[str, int]]) -> Ipv6Report:
    """Run the IPv6 checks (`relays`: name to (host, port)); never raises for the network."""
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
        report.coord[str(coord)] = await _connect_time(coord)
    for name, (host, port) in relays.items():
        address = await _ipv6_address(host)
        report.relays[name] = "no IPv6 address" if address is None else await _connect_time(Endpoint(address, port))
    return report


async def _ipv6_address(host: str) -> str | None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET6,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        return None
    return infos[0][4][0] if infos else None


async def _connect_time(endpoint: Endpoint) -> float | None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*endpoint), TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return None
    writer.close()
    return loop.time() - start


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
