"""Control-plane messages between nodes and the coordination server.

Every frame on a node↔coord channel carries one JSON object with a ``"type"`` key. Each message
is a frozen dataclass of `meshvpn.control.schema` codecs; `decode` raises only
`MalformedMessage`. Both sides import this module: it belongs to neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshvpn.control.schema import (  # MAX_ENDPOINTS and parse_endpoint are read through here too
    BOOL, COUNT, ENDPOINT, ERROR_CODES, HOST, MAX_CANDIDATES, MAX_ENDPOINTS, MAX_ERROR_TEXT,
    MAX_PEERS, NAME, TIME, Endpoint, KEY, MalformedMessage, Message, Patch, Record,
    UnknownMessageType, _check, choice, list_of, optional, parse_endpoint, record, text, wire,
)

from meshvpn.control.records import (  # re-exported: both sides read records through this module
    ENDPOINTS, MAX_IPV6_ENDPOINTS, IPV6_ENDPOINTS, NetworkInfo, RelayInfo, RelayToken, RelayRtt,
    MAX_RELAY_RTTS, RELAY_RTTS, RELAY_TOKENS, RELAYS, TurnServer, TURN_SERVERS, NAT_ALLOCATIONS,
    NatInfo, NAT, MAX_RULES, MAX_SERVICES, ACTIONS, SERVICE, MAX_GROUPS, GROUPS, GROUPS6, RuleInfo,
    AccessInfo, PeerInfo, PEER_CHANGE, DELTA_VERSION,
)


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
    tcp_sample: Endpoint | None = wire(optional(ENDPOINT))
    """A fresh STUN-over-TCP sample from a new connection: behind a sequential NAT, the port below our
    next TCP mapping (the one towards the peer)."""


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
    groups6: tuple[str, ...] | None = wire(optional(GROUPS6))
    """The IPv6 groups, learned from MLD reports (a node of an IPv6 overlay), passed on in
    `PeerInfo.groups6`; a coord that predates them ignores them."""


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
    tcp_sample: Endpoint | None = wire(optional(ENDPOINT))
    """The peer's fresh TCP port sample, if it sent one moments ago: connect to the ports above it."""


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
