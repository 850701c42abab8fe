"""One UDP socket for both IP families, and the translation at its edge.

Why one socket rather than one per family: the native loop and the pure-Python loop each read
one descriptor, and every path, probe, STUN query and relay hello already shares that one
socket. An IPv6 socket with IPV6_V6ONLY off carries IPv4 too, but shows IPv4 peers as
IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) and takes only IPv6 destinations. Everything
above the socket speaks plain IPv4 for IPv4 peers, so the socket's edge translates both ways:
:func:`plain` on what arrives and :func:`on_socket` on what leaves. The native loop does the
same in C (``_fastpath_loop.c``). Where the host has no IPv6, the socket stays IPv4 as before.
"""

from __future__ import annotations

import functools
import socket

MAPPED_PREFIX = "::ffff:"
"""How the kernel (inet_ntop) writes an IPv4-mapped IPv6 address before its dotted IPv4 part."""
IPV4_WILDCARD = "0.0.0.0"


def is_dual(sock: socket.socket) -> bool:
    """Whether ``sock`` is an IPv6 socket that also carries IPv4 (IPV6_V6ONLY off)."""
    return sock.family == socket.AF_INET6 and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


def plain(source: tuple) -> tuple[str, int]:
    """A dual-stack socket's source address as ``(host, port)``, IPv4 peers in plain IPv4."""
    return _plain_host(source[0]), source[1]


@functools.lru_cache(maxsize=4096)
def _plain_host(host: str) -> str:
    """Cached: the Python receive path asks for every receive, and peers are few."""
    return host[len(MAPPED_PREFIX):] if host.startswith(MAPPED_PREFIX) and "." in host else host


def on_socket(endpoint: tuple) -> tuple[str, int]:
    """``(host, port)`` as a dual-stack socket takes it: IPv4 hosts mapped into IPv6."""
    host = endpoint[0]
    return (MAPPED_PREFIX + host, endpoint[1]) if ":" not in host else (host, endpoint[1])


def has_ipv6() -> bool:
    """Whether this host can open an IPv6 socket at all (IPv6 not disabled)."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        return False
    return True


def listen_hosts(host: str) -> str | list[str]:
    """What a server's TCP listener binds for a configured `host`: the IPv4 wildcard becomes both
    wildcards (asyncio gives the IPv6 one its own IPv6-only socket) where the host has IPv6."""
    return [host, "::"] if host == IPV4_WILDCARD and has_ipv6() else host


def dual_socket(port: int, v6_only: bool = False) -> socket.socket | None:
    """An IPv6 UDP socket on the wildcard address and ``port`` that carries IPv4 too (or, with
    ``v6_only``, only IPv6, beside an IPv4 socket on the same port), or None when the host has no
    IPv6 (no AF_INET6, or IPv6 disabled) or the port is taken."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6_only))
        sock.bind(("::", port))
    except OSError:
        sock.close()
        return None
    return sock
