"""The node's IPv6 endpoints: its global addresses with the UDP port, and its IPv6 mapping as the
coord's STUN server sees it.

Why both: behind no NAT (the common case for IPv6) the two agree and either one reaches us
through a stateful firewall once we have sent towards the peer; behind a prefix translator
(NPTv6) or NAT66 only the STUN mapping does. A global address is one a peer elsewhere can
reach: not loopback, link-local, multicast or IPv4-mapped, and not a unique local address
(fc00::/7) unless `listen.ipv6_ula` says such a prefix is routed between the sites. Addresses
still under duplicate address detection, failed it, or deprecated are left out: the kernel
would not (or should not) send from them. The coord's STUN server over IPv6 is the first of its
configured addresses that is an IPv6 literal or a name with an AAAA record.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path
from typing import Iterable, Optional

from meshvpn.config import NodeConfig
from meshvpn.control import messages as m
from meshvpn.node.discovery import MAPPING_TIMEOUT, stun_server
from meshvpn.node.netlink import IFA_F_UNUSABLE
from meshvpn.stunio import StunClient
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node")

IF_INET6 = Path("/proc/net/if_inet6")
ULA = ipaddress.ip_network("fc00::/7")


def interface_ipv6(text: str) -> list[tuple[str, str, int]]:
    """``(interface, address, flags)`` for each line of /proc/net/if_inet6 (``text``)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            found.append((fields[5], address.compressed, int(fields[4], 16)))
        except ValueError:
            continue
    return found


def select_ipv6(addresses: Iterable[tuple[str, str, int]], port: int, skip_interfaces: Iterable[str],
                allow_ula: bool) -> tuple[Endpoint, ...]:
    """The global IPv6 addresses of usable interfaces with ``port``, at most MAX_IPV6_ENDPOINTS."""
    skip = set(skip_interfaces)
    out: list[Endpoint] = []
    for interface, text, flags in addresses:
        address = ipaddress.IPv6Address(text)
        if interface in skip or flags & IFA_F_UNUSABLE or not reachable_elsewhere(address, allow_ula):
            continue
        endpoint = Endpoint(address.compressed, port)
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out[:m.MAX_IPV6_ENDPOINTS])


def reachable_elsewhere(address: ipaddress.IPv6Address, allow_ula: bool) -> bool:
    """Whether a peer at another site may reach ``address`` (ULAs only when allowed)."""
    if address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified:
        return False
    if address.ipv4_mapped is not None or address.is_site_local or address.is_reserved:
        return False
    return allow_ula or address not in ULA


def host_ipv6() -> list[tuple[str, str, int]]:
    """``(interface, address, flags)`` of every IPv6 address of this host (none without IPv6)."""
    try:
        return interface_ipv6(IF_INET6.read_text())
    except OSError:
        return []


def local_ipv6(port: int, tun_name: str, allow_ula: bool) -> tuple[Endpoint, ...]:
    """This host's global IPv6 endpoints for a UDP socket on ``port``."""
    return select_ipv6(host_ipv6(), port, (tun_name,), allow_ula)


async def stun_server6(config: NodeConfig) -> Optional[Endpoint]:
    """The coord's STUN server over IPv6: the first coord address with an IPv6 address."""
    try:
        return await stun_server(config, socket.AF_INET6)
    except OSError:
        return None


async def ipv6_mapping(stun: StunClient, config: NodeConfig) -> Optional[Endpoint]:
    """Our IPv6 endpoint as the coord's STUN server sees it, or None (no IPv6 server, no answer)."""
    server = await stun_server6(config)
    if server is None:
        return None
    try:
        result = await asyncio.wait_for(stun.query(server), MAPPING_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        log.info("no STUN mapping over IPv6: %s", exc or type(exc).__name__)
        return None
    return Endpoint(ipaddress.ip_address(result.mapped[0]).compressed, result.mapped[1])

