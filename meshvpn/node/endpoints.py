"""Local endpoint discovery: the interface addresses a peer on the same LAN can reach us at.

A peer behind the same NAT cannot reach our public endpoint unless the NAT hairpins,
so the node reports every usable interface address with its UDP port and the peer
probes them as LAN candidates.  Loopback, link-local and the node's own TUN are left
out: they are either unreachable from another host or would loop through the mesh.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from typing import Iterable

from meshvpn.control.messages import MAX_ENDPOINTS, Endpoint

SIOCGIFADDR = 0x8915


def interface_addresses() -> list[tuple[str, str]]:
    """``(interface, IPv4 address)`` for every interface that has one (its primary address)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:
                continue
            found.append((name, socket.inet_ntoa(reply[20:24])))
    return found


def select_endpoints(
    addresses: Iterable[tuple[str, str]], port: int, skip_interfaces: Iterable[str], bind_address: str
) -> tuple[Endpoint, ...]:
    """The endpoints to report: usable addresses with ``port``, at most MAX_ENDPOINTS.

    A socket bound to one address is reachable only there, so ``bind_address`` other
    than the wildcard is the only endpoint.
    """
    if not ipaddress.ip_address(bind_address).is_unspecified:
        return (Endpoint(bind_address, port),)
    skip = set(skip_interfaces)
    out: list[Endpoint] = []
    for interface, text in addresses:
        address = ipaddress.ip_address(text)
        if interface in skip or address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        endpoint = Endpoint(address.compressed, port)
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out[:MAX_ENDPOINTS])


def local_endpoints(port: int, tun_name: str, bind_address: str = "0.0.0.0") -> tuple[Endpoint, ...]:
    """This host's LAN endpoints for a UDP socket on ``port``."""
    return select_endpoints(interface_addresses(), port, (tun_name,), bind_address)
