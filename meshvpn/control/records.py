"""Records nested inside control messages: what a node says about itself and learns of its peers.

`meshvpn.control.messages` holds the messages themselves and re-exports these names; both sides
read them through it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

from meshvpn.control.schema import (
    BOOL, CIDR, COUNT, ENDPOINT, HOST, MAX_ENDPOINTS, MAX_PEERS, MAX_RELAYS, NAME, PORT, TIME,
    TOKEN, Codec, Endpoint, KEY, MalformedMessage, Record, _check, choice, list_of, optional,
    patch_of, record, wire,
)
from meshvpn.portspec import Service, parse_service


ENDPOINTS = list_of(ENDPOINT, MAX_ENDPOINTS)
MAX_IPV6_ENDPOINTS = 4
"""IPv6 endpoints a node announces: a few addresses (stable and temporary) and its STUN mapping."""
IPV6_ENDPOINTS = list_of(ENDPOINT, MAX_IPV6_ENDPOINTS)


# Records nested inside messages.


@dataclass(frozen=True)
class NetworkInfo(Record):
    """The overlay network a node was placed in."""

    name: str = wire(NAME)
    cidr: str = wire(CIDR)


@dataclass(frozen=True)
class RelayInfo(Record):
    """A relay a node may use when no direct path works; `host` may be a DNS name."""

    name: str = wire(NAME)
    host: str = wire(NAME)
    port: int = wire(PORT)
    public_key: bytes = wire(KEY)
    tls_port: int | None = wire(optional(PORT))
    """TCP port of the relay's TLS listener, for networks that let only TLS (or only port 443) through."""
    peer: bool | None = wire(optional(BOOL))
    """A member of the node's network that relays for it (a peer relay, named and keyed as that
    node): on its one UDP port, with no TCP or TLS listener."""


@dataclass(frozen=True)
class RelayToken(Record):
    """The node's pass for one relay (`meshvpn.relaytoken`), shown in its RELAY_HELLO."""

    relay: str = wire(NAME)
    """Name of the relay, as in `RelayInfo`."""
    token: bytes = wire(TOKEN)
    expires: float = wire(TIME)
    """Unix time after which the relay refuses it."""


@dataclass(frozen=True)
class RelayRtt(Record):
    """A node's round trip to one of its ready relays, in whole milliseconds (`meshvpn.node.pairrelay`)."""

    relay: str = wire(NAME)
    ms: int = wire(COUNT)


MAX_RELAY_RTTS = 8
"""A node reports its round trip to at most this many relays, its nearest."""
RELAY_RTTS = optional(list_of(record(RelayRtt), MAX_RELAY_RTTS))
RELAY_TOKENS = list_of(record(RelayToken), MAX_RELAYS)
RELAYS = list_of(record(RelayInfo), MAX_RELAYS)


@dataclass(frozen=True)
class TurnServer(Record):
    """A standard TURN server (RFC 8656) and the node's REST API credential for it (`meshvpn.coord.turncreds`);
    `host` may be a DNS name, which the node resolves (older nodes take only IP addresses)."""

    name: str = wire(NAME)
    host: str = wire(NAME)
    port: int = wire(PORT)
    username: str = wire(NAME)
    password: str = wire(NAME)
    expires: float = wire(TIME)
    """Unix time after which the TURN server refuses the credential."""
    tls_port: int | None = wire(optional(PORT))
    """The server's TURN-over-TLS port (coturn's `tls-listening-port`), tried after UDP and TCP."""


TURN_SERVERS = optional(list_of(record(TurnServer), MAX_RELAYS))

NAT_ALLOCATIONS = frozenset({"port preservation", "fixed offset", "sequential", "random", "unknown"})
"""Port allocations a node may report (`meshvpn.node.prediction.Allocation` values)."""


@dataclass(frozen=True)
class NatInfo(Record):
    """How a node's NAT hands out ports, from its own STUN samples: peers choose how to probe it."""

    endpoint_independent: bool = wire(BOOL)
    """One public endpoint for every destination (the STUN mapping is the one to probe)."""
    allocation: str = wire(choice(NAT_ALLOCATIONS))
    """How new mappings get their public port."""


NAT = optional(record(NatInfo))

MAX_RULES = 256
MAX_SERVICES = 64
ACTIONS = frozenset({"allow", "deny"})


def _load_service(value: Any) -> Service:
    _check(isinstance(value, str) and len(value) <= 20, "expected a service such as udp/27015")
    try:
        return parse_service(value)
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None


SERVICE = Codec(_load_service, str)

MAX_GROUPS = 64
"""Multicast groups one node may announce (the kernel's default igmp_max_memberships is 20)."""


def _group_loader(family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], longest: int) -> Callable[[Any], str]:
    """Checks a group of ``family`` as written out (dotted, or IPv6 as Python's ipaddress prints it)."""
    name = "IPv4" if family is ipaddress.IPv4Address else "IPv6"

    def load(value: Any) -> str:
        _check(isinstance(value, str) and len(value) <= longest, f"expected an {name} multicast group")
        try:
            group = family(value)
        except ValueError:
            raise MalformedMessage(f"{value!r} is not an {name} address") from None
        _check(group.is_multicast and str(group) == value, f"{value!r} is not a multicast group")
        return value

    return load


GROUPS = list_of(Codec(_group_loader(ipaddress.IPv4Address, 15)), MAX_GROUPS)
GROUPS6 = list_of(Codec(_group_loader(ipaddress.IPv6Address, 39)), MAX_GROUPS)
"""IPv6 groups apart from IPv4's: a node or coord that predates them ignores the field rather than
refusing a message whose `groups` holds an address it cannot read."""


@dataclass(frozen=True)
class RuleInfo(Record):
    """One access rule as a receiving node enforces it (`meshvpn.lan.access`)."""

    rule: int = wire(COUNT)
    """Index of the rule in the network's rules in the coord config: drops are counted by it."""
    action: str = wire(choice(ACTIONS))
    sources: tuple[str, ...] = wire(list_of(NAME, MAX_PEERS))
    """Names of the peers the rule is about; "*" is every peer."""
    services: tuple[Service, ...] = wire(list_of(SERVICE, MAX_SERVICES))


@dataclass(frozen=True)
class AccessInfo(Record):
    """The access rules that concern one node: those whose `to` group it is in, in order."""

    default: str = wire(choice(ACTIONS))
    """What a packet no rule matches gets."""
    rules: tuple[RuleInfo, ...] = wire(list_of(record(RuleInfo), MAX_RULES), ())


@dataclass(frozen=True)
class PeerInfo(Record):
    """What a node learns about one peer in its network."""

    key: bytes = wire(KEY)
    name: str = wire(NAME)
    address: str = wire(HOST)
    online: bool = wire(BOOL)
    local_endpoints: tuple[Endpoint, ...] = wire(ENDPOINTS, ())
    public_endpoint: Endpoint | None = wire(optional(ENDPOINT))
    observed_host: str | None = wire(optional(HOST))
    """The source address of the peer's coord connection (host only: its TCP port says nothing about UDP)."""
    home_relay: str | None = wire(optional(NAME))
    last_seen: float | None = wire(optional(TIME))
    """Unix time the peer last registered or disconnected."""
    turn_relayed: tuple[Endpoint, ...] | None = wire(optional(ENDPOINTS))
    """The peer's relayed addresses on TURN servers: where to send through TURN."""
    public_tcp: Endpoint | None = wire(optional(ENDPOINT))
    """The source of the peer's coord connection when it comes from the peer's TCP punch port:
    the NAT's mapping of that port, where TCP hole punching connects to."""
    nat: NatInfo | None = wire(NAT)
    """The peer's NAT as it reported it (absent: unknown, treated as endpoint-independent)."""
    groups: tuple[str, ...] | None = wire(optional(GROUPS))
    """Multicast groups the peer's applications joined (`Groups`): where its multicast goes."""
    groups6: tuple[str, ...] | None = wire(optional(GROUPS6))
    """The IPv6 multicast groups the peer's applications joined (`Groups.groups6`)."""
    mapped_endpoint: Endpoint | None = wire(optional(ENDPOINT))
    """A port the peer's router forwards to it (UPnP IGD, NAT-PMP, PCP): open to any sender."""
    ipv6_endpoints: tuple[Endpoint, ...] | None = wire(optional(IPV6_ENDPOINTS))
    """The peer's IPv6 endpoints (global addresses, and its IPv6 mapping as STUN saw it): probed
    beside its IPv4 candidates."""
    peer_relay: bool | None = wire(optional(BOOL))
    """The peer relays for the network now (`Relays` offers it to nodes that take peer relays)."""
    mapped_tcp: Endpoint | None = wire(optional(ENDPOINT))
    """A port the peer's router forwards to its TCP punch port: TCP punching connects there."""
    relay_rtts: tuple[RelayRtt, ...] | None = wire(RELAY_RTTS)
    """The peer's round trips to its ready relays, as it last reported them: a relayed pair takes
    the relay with the lowest sum of both ends' (absent: the peer's home, as before)."""


PEER_CHANGE = patch_of(PeerInfo, "key")
"""A peer's changed fields (a `Patch` of `PeerInfo`, in its field order): its key and only what changed."""
DELTA_VERSION = 2
"""The newest `peer_delta` format: 1 carries whole peer infos, 2 also field-level `changed`."""
