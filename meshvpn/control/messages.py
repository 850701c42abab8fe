"""Control-plane messages between nodes and the coordination server.

Every frame on a node↔coord channel carries one JSON object with a ``"type"`` key. Each message
is a frozen dataclass of `meshvpn.control.schema` codecs; `decode` raises only
`MalformedMessage`. Both sides import this module: it belongs to neither.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from meshvpn.control.schema import (
    BOOL, CIDR, COUNT, ENDPOINT, ERROR_CODES, HOST, MAX_CANDIDATES, MAX_ENDPOINTS, MAX_ERROR_TEXT,
    MAX_PEERS, MAX_RELAYS, NAME, PORT, TIME, TOKEN, Codec, Endpoint, KEY,
    MalformedMessage, Message, Patch, Record, UnknownMessageType, _check, choice, list_of,
    optional, parse_endpoint, patch_of, record, text, wire,
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


def _load_group(value: Any) -> str:
    _check(isinstance(value, str) and len(value) <= 15, "expected an IPv4 multicast group")
    try:
        group = ipaddress.IPv4Address(value)
    except ValueError:
        raise MalformedMessage(f"{value!r} is not an IPv4 address") from None
    _check(group.is_multicast and str(group) == value, f"{value!r} is not a multicast group")
    return value


GROUPS = list_of(Codec(_load_group), MAX_GROUPS)


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


# node → coord


@dataclass(frozen=True)
class Register(Message):
    """First message on a channel: who I am, where I listen, and (for a new node) my auth key."""

    TYPE = "register"
    hostname: str = wire(NAME)
    version: str = wire(NAME)
    local_endpoints: tuple[Endpoint, ...] = wire(ENDPOINTS)
    auth_key: str | None = wire(optional(NAME))
    os: str | None = wire(optional(NAME))
    public_endpoint: Endpoint | None = wire(optional(ENDPOINT))
    """As learned from STUN, if the node has one."""
    tcp_punch: bool | None = wire(optional(BOOL))
    """This connection comes from the node's TCP punch port, which also accepts punched connections."""
    nat: NatInfo | None = wire(NAT)
    """The node's NAT behaviour, once it has sampled it."""
    mapped: Endpoint | None = wire(optional(ENDPOINT))
    """A port mapping the node's router granted (UPnP IGD, NAT-PMP, PCP)."""
    ipv6: tuple[Endpoint, ...] | None = wire(optional(IPV6_ENDPOINTS))
    """The node's IPv6 endpoints: its global addresses with its port, and its STUN mapping over IPv6."""
    deltas: bool | None = wire(optional(BOOL))
    """The node applies `peer_delta`; without it each change comes as its own `peer_update` or
    `peer_remove`, as before deltas existed."""
    delta_version: int | None = wire(optional(COUNT))
    """The newest `peer_delta` format the node applies (`DELTA_VERSION`); absent: 1. An older
    coord skips the field and sends format 1."""
    lan_party: bool | None = wire(optional(BOOL))
    """The node takes `access` (its rules, changed while it is online); an older node would
    refuse the unknown message."""
    peer_relays: bool | None = wire(optional(BOOL))
    """The node takes `relays` (peer relays as they come and go) and relays for its network when
    an admin allows it; older nodes are neither offered peer relays nor made one."""
    mapped_tcp: Endpoint | None = wire(optional(ENDPOINT))
    """A port mapping of the node's TCP punch port that its router granted (an older coord skips it)."""


@dataclass(frozen=True)
class Endpoints(Message):
    """The node's endpoints changed (new interface, new STUN mapping)."""

    TYPE = "endpoints"
    local: tuple[Endpoint, ...] = wire(ENDPOINTS)
    public: Endpoint | None = wire(optional(ENDPOINT))
    nat: NatInfo | None = wire(NAT)
    """The node's NAT behaviour, re-sampled with the endpoints."""
    mapped: Endpoint | None = wire(optional(ENDPOINT))
    """The node's router port mapping, granted, renewed to a new port or gone (absent)."""
    ipv6: tuple[Endpoint, ...] | None = wire(optional(IPV6_ENDPOINTS))
    """The node's IPv6 endpoints, as in `register` (absent: none)."""
    mapped_tcp: Endpoint | None = wire(optional(ENDPOINT))
    """The router's port mapping of the node's TCP punch port, as in `register` (absent: none)."""


@dataclass(frozen=True)
class PunchRequest(Message):
    """Ask the server to make this node and `peer_key` punch towards each other now."""

    TYPE = "punch_request"
    peer_key: bytes = wire(KEY)
    sample: Endpoint | None = wire(optional(ENDPOINT))
    """A fresh STUN sample from a new socket: behind a sequential NAT, the port below our next mappings."""


@dataclass(frozen=True)
class Ping(Message):
    """Liveness probe, either direction; answered by `Pong`."""

    TYPE = "ping"


@dataclass(frozen=True)
class Leave(Message):
    """Node → coord, first message instead of `register` (`meshvpn leave`): forget this node for good.
    The server deletes it, tells its peers (`peer_remove`) and closes; a revoked node stays revoked."""

    TYPE = "leave"


@dataclass(frozen=True)
class Pong(Message):
    """Answer to `Ping`."""

    TYPE = "pong"


@dataclass(frozen=True)
class TurnRelayed(Message):
    """The node's relayed addresses on TURN servers changed (allocated, lost, moved)."""

    TYPE = "turn_relayed"
    endpoints: tuple[Endpoint, ...] = wire(ENDPOINTS)


@dataclass(frozen=True)
class RelayHome(Message):
    """The relay the node keeps a connection to, so peers know where to reach it when relayed."""

    TYPE = "relay_home"
    relay: str = wire(NAME)
    rtts: tuple[RelayRtt, ...] | None = wire(RELAY_RTTS)
    """The node's round trips to its ready relays (at most 8, the nearest), shown to its peers."""


PATH_KINDS = frozenset({"lan", "direct", "tcp", "relay"})
"""Path kinds a node reports (`meshvpn.node.pathfinder.PathKind` values)."""


@dataclass(frozen=True)
class PeerPath(Record):
    """How this node reaches one peer now."""

    peer: str = wire(NAME)
    """The peer's name in the network."""
    kind: str | None = wire(optional(choice(PATH_KINDS)))
    """None: no path (the peer is unreachable)."""


@dataclass(frozen=True)
class Paths(Message):
    """The node's path to each listed peer changed: the admin's view of the mesh. Sent only to a
    coord whose `Registered` says it takes them; all of them after each registration."""

    TYPE = "paths"
    paths: tuple[PeerPath, ...] = wire(list_of(record(PeerPath), MAX_PEERS))


@dataclass(frozen=True)
class Groups(Message):
    """The multicast groups this node's applications joined now (its whole set), learned from the
    IGMP reports on its TUN; the coord passes them to its peers in `PeerInfo.groups`. Sent only to
    a coord whose `Registered` says `lan_party`, after each registration and each change."""

    TYPE = "groups"
    groups: tuple[str, ...] = wire(GROUPS)


# coord → node


@dataclass(frozen=True)
class Registered(Message):
    """Registration accepted: the node's identity in the overlay and the relays it may use."""

    TYPE = "registered"
    node_key: bytes = wire(KEY)
    name: str = wire(NAME)
    address: str = wire(HOST)
    network: NetworkInfo = wire(record(NetworkInfo))
    relays: tuple[RelayInfo, ...] = wire(RELAYS, ())
    relay_tokens: tuple[RelayToken, ...] = wire(RELAY_TOKENS, ())
    """One token per relay; fresh ones follow in `RelayTokens` before these expire."""
    turn: tuple[TurnServer, ...] | None = wire(TURN_SERVERS)
    """TURN servers with the node's credentials; fresh ones follow in `RelayTokens`."""
    path_reports: bool | None = wire(optional(BOOL))
    """The coord takes `Paths` reports (an older coord would refuse the unknown message)."""
    access: AccessInfo | None = wire(optional(record(AccessInfo)))
    """Access rules this node enforces on what it receives; absent: everyone reaches it."""
    lan_party: bool | None = wire(optional(BOOL))
    """The coord takes `groups` and passes them on (an older coord would refuse the unknown message)."""
    relaying: bool | None = wire(optional(BOOL))
    """This node relays for its network (a peer relay): for any member whose relay token names it."""


@dataclass(frozen=True)
class Access(Message):
    """The node's access rules changed while it is online (a reload of the coord's policy, a tag
    given or taken): they replace those of `registered` at once, tunnels untouched. Sent only to
    nodes that registered with `lan_party`."""

    TYPE = "access"
    access: AccessInfo | None = wire(optional(record(AccessInfo)))
    """Absent: everyone reaches the node."""


@dataclass(frozen=True)
class Relays(Message):
    """The relays the node may use, or whether it relays itself, changed while it is online (a peer
    relay was allowed, came online, moved or left): they replace those of `registered`, with a
    token each. Sent only to nodes that registered with `peer_relays`."""

    TYPE = "relays"
    relays: tuple[RelayInfo, ...] = wire(RELAYS, ())
    relay_tokens: tuple[RelayToken, ...] = wire(RELAY_TOKENS, ())
    relaying: bool = wire(BOOL, False)
    """This node relays for its network from now on (or no longer)."""


@dataclass(frozen=True)
class RelayTokens(Message):
    """Fresh relay tokens for an online node, sent well before the previous ones expire."""

    TYPE = "relay_tokens"
    tokens: tuple[RelayToken, ...] = wire(RELAY_TOKENS)
    turn: tuple[TurnServer, ...] | None = wire(TURN_SERVERS)
    """Fresh TURN credentials, when the server offers TURN servers."""


@dataclass(frozen=True)
class PeerMap(Message):
    """Every peer of the node's network, sent once after registration.

    A map too large for one frame comes in parts 0, 1, ... (`meshvpn.coord.peermap`); a map
    that fits one frame carries neither `part` nor `last`, exactly as before parts existed."""

    TYPE = "peer_map"
    peers: tuple[PeerInfo, ...] = wire(list_of(record(PeerInfo), MAX_PEERS))
    part: int | None = wire(optional(COUNT))
    """Index of this part, from 0; absent when the whole map is in this frame."""
    last: bool | None = wire(optional(BOOL))
    """True on the final part: only then does the map replace the node's view."""


@dataclass(frozen=True)
class PeerUpdate(Message):
    """One peer appeared or changed (came online, went offline, new endpoints or relay)."""

    TYPE = "peer_update"
    peer: PeerInfo = wire(record(PeerInfo))


@dataclass(frozen=True)
class PeerRemove(Message):
    """A peer left the network for good (revoked or ephemeral and gone)."""

    TYPE = "peer_remove"
    key: bytes = wire(KEY)


@dataclass(frozen=True)
class PeerDelta(Message):
    """Every change to the node's peers over one short window, coalesced: each key appears once,
    in `peers` (its latest info), `changed` (the fields that changed, for a peer the node has) or
    `removed`. Sent only to nodes that registered with `deltas`, and `changed` only to those
    with `delta_version` 2; a large delta comes as several, each complete in itself."""

    TYPE = "peer_delta"
    peers: tuple[PeerInfo, ...] = wire(list_of(record(PeerInfo), MAX_PEERS), ())
    removed: tuple[bytes, ...] = wire(list_of(KEY, MAX_PEERS), ())
    changed: tuple[Patch, ...] | None = wire(optional(list_of(PEER_CHANGE, MAX_PEERS)))
    """Absent from a delta of format 1 (and from a coord that knows no other)."""


@dataclass(frozen=True)
class Punch(Message):
    """Start punching towards `peer_key` now: the peer got the mirror message at the same time."""

    TYPE = "punch"
    peer_key: bytes = wire(KEY)
    endpoints: tuple[Endpoint, ...] = wire(list_of(ENDPOINT, MAX_CANDIDATES))
    """Candidates in the order to try them."""
    at: float | None = wire(optional(TIME))
    """Unix time to start; absent means immediately."""
    nat: NatInfo | None = wire(NAT)
    """The peer's NAT behaviour, as it reported it."""
    sample: Endpoint | None = wire(optional(ENDPOINT))
    """The peer's fresh port sample, if it sent one moments ago (also first in `endpoints`)."""


@dataclass(frozen=True)
class Error(Message):
    """A refusal; `code` is one of ERROR_CODES, `message` is for humans."""

    TYPE = "error"
    code: str = wire(choice(ERROR_CODES))
    message: str = wire(text(MAX_ERROR_TEXT, min_len=0), "")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Register, Endpoints, PunchRequest, Ping, Pong, RelayHome, TurnRelayed, Paths, Leave, Groups,
        Registered, RelayTokens, PeerMap, PeerUpdate, PeerRemove, PeerDelta, Punch, Error, Access, Relays,
    )
}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    _check(len(obj) == len(pairs), "duplicate keys in a JSON object")
    return obj


def _reject_constant(name: str) -> None:
    raise MalformedMessage(f"{name} is not allowed")


def decode(data: bytes | str) -> Message:
    """Parse one control frame; raises only `MalformedMessage`."""
    try:
        obj = json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"not JSON: {exc}"[:200]) from None
    return decode_object(obj)


def decode_object(obj: Any) -> Message:
    """Turn a parsed JSON value into its message; raises only `MalformedMessage`."""
    _check(isinstance(obj, dict), "a control message must be a JSON object")
    kind = obj.get("type")
    _check(isinstance(kind, str), "missing message type")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {kind[:40]!r}")
    return cls.from_json(obj)


def encode(message: Message) -> bytes:
    """Serialise one control message as a compact JSON frame payload."""
    return json.dumps(message.to_json(), separators=(",", ":"), allow_nan=False).encode()
