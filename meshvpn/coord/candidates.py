"""Which addresses the coord passes on for punching, and which it refuses to pass on.

A node reports its endpoints; its peers then probe them. Passed on blindly, a report would let
one member make its peers spray probes at any address: their own loopback, a router on their
LAN, a third party on the internet. So the coord checks each endpoint for sense first:

* never loopback, link-local, multicast, unspecified, reserved or broadcast addresses, nor port 0;
* a *local* endpoint (the node's LAN address) only in LAN ranges (RFC 1918, RFC 6598 shared,
  RFC 4193 unique local) or at the very address the coord sees the node come from (a node with
  a public address on its interface);
* an *IPv6* endpoint only as a native IPv6 address (no IPv4-mapped one, which would aim the
  peers at an IPv4 host).

Endpoints that fail are dropped and counted; the rest travel as before.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from meshvpn.control import messages as m
from meshvpn.coord.connstate import Connection
from meshvpn.coord.store import NodeRecord

SAMPLE_LIFETIME = 1.0
"""Seconds a node's port sample is passed on in punches; after that its NAT has moved on."""

_LAN_RANGES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def plain_ip(host: str) -> str:
    """`host` normalised, with IPv4-mapped IPv6 (from dual-stack sockets) turned back into IPv4."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.compressed


def routable(endpoint: m.Endpoint) -> bool:
    """Whether probing `endpoint` can make sense at all, from anywhere."""
    address = ipaddress.ip_address(plain_ip(endpoint.host))
    return endpoint.port != 0 and not (
        address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_unspecified or address.is_reserved or address == ipaddress.IPv4Address("255.255.255.255")
    )


def local_candidate(endpoint: m.Endpoint, observed_host: str) -> bool:
    """Whether `endpoint` may be a LAN candidate of a node seen at `observed_host`."""
    if not routable(endpoint):
        return False
    host = plain_ip(endpoint.host)
    address = ipaddress.ip_address(host)
    return host == observed_host or any(address in lan for lan in _LAN_RANGES if lan.version == address.version)


def sane_public(endpoint: m.Endpoint | None) -> m.Endpoint | None:
    """`endpoint` if it may be passed on as a node's public mapping, else None."""
    return endpoint if endpoint is not None and routable(endpoint) else None


def sane_ipv6(endpoints: Iterable[m.Endpoint] | None) -> tuple[m.Endpoint, ...]:
    """The endpoints that may be passed on as a node's IPv6 endpoints."""
    sane = [ep for ep in endpoints or () if ":" in ep.host and plain_ip(ep.host) == ep.host and routable(ep)]
    return tuple(dict.fromkeys(sane))


def take_reported(conn: Connection, message: m.Register | m.Endpoints) -> bool:
    """Keep on `conn` the NAT, router port mappings and IPv6 endpoints its node reported, each
    checked before peers see it; whether any of them changed."""
    reported = (message.nat, sane_public(message.mapped), sane_public(message.mapped_tcp), sane_ipv6(message.ipv6))
    changed = reported != (conn.nat, conn.mapped, conn.mapped_tcp, conn.ipv6)
    conn.nat, conn.mapped, conn.mapped_tcp, conn.ipv6 = reported
    return changed


def sane_locals(endpoints: Iterable[m.Endpoint], observed_host: str) -> tuple[m.Endpoint, ...]:
    """The endpoints that may be passed on as LAN candidates of a node seen at `observed_host`."""
    return tuple(ep for ep in endpoints if local_candidate(ep, observed_host))


def take_samples(conn: Connection, message: m.PunchRequest, now: float) -> None:
    """Keep the sane port samples of `message` (`punch_towards` passes them on while fresh)."""
    if sane_public(message.sample) is not None:
        conn.sample, conn.sample_at = message.sample, now
    if sane_public(message.tcp_sample) is not None:
        conn.tcp_sample, conn.tcp_sample_at = message.tcp_sample, now


def punch_towards(node: NodeRecord, conn: Connection, now: float) -> m.Punch:
    """The `punch` that sends a peer towards `node`, online on `conn`, with its fresh samples. A TCP
    sample goes along only at an address of the node's own, the one its channel comes from or its
    public (UDP) endpoint's (a node on IPv6 has no other IPv4 one): its peer connects to the ports
    above it, or to random ports of that address, and must not be aimed at a third party."""
    sample = conn.sample if conn.sample is not None and now - conn.sample_at <= SAMPLE_LIFETIME else None
    tcp_sample = conn.tcp_sample if now - conn.tcp_sample_at <= SAMPLE_LIFETIME else None
    own = {conn.observed_host, node.public_endpoint and node.public_endpoint.host}
    tcp_sample = tcp_sample if tcp_sample is not None and plain_ip(tcp_sample.host) in own else None
    return m.Punch(node.key, candidates(node, conn.observed_host, sample), nat=conn.nat, sample=sample,
                   tcp_sample=tcp_sample)


def punch_towards_info(peer: m.PeerInfo) -> m.Punch:
    """The `punch` that sends a node towards `peer`, online on another coord instance, from the
    peer info that instance published: the same candidates and NAT report, but no port sample,
    which stays with the instance the peer sent it to."""
    return m.Punch(peer.key, candidates(peer, peer.observed_host), nat=peer.nat)


def candidates(node: NodeRecord | m.PeerInfo, observed_host: str | None,
               sample: m.Endpoint | None = None) -> tuple[m.Endpoint, ...]:
    """Where to punch towards `node`, most likely first: a fresh port sample, its STUN mapping, then
    its coord source address with each local port (port-preserving NATs without STUN), then its
    LAN addresses."""
    ordered = [sample] if sample else []
    ordered += [node.public_endpoint] if node.public_endpoint else []
    ordered += [m.Endpoint(observed_host, ep.port) for ep in node.local_endpoints] if observed_host else []
    ordered += node.local_endpoints
    return tuple(dict.fromkeys(ordered))[: m.MAX_CANDIDATES]
