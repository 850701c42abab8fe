"""Control-plane messages between nodes and the coordination server.

Every frame on a node↔coord channel carries one JSON object with a ``"type"`` key. Each message
is a frozen dataclass whose fields carry a `Codec` (check + convert, both directions), so a
message's schema, limits and error messages are one table instead of hand-written parsing.
Decoding checks every documented field: anything missing, mistyped or oversized raises
`MalformedMessage`, a `RemoteProtocolError`, and nothing else escapes. Fields this version does
not know are skipped (at most `MAX_UNKNOWN_FIELDS` of them), so a newer node or coord can add
optional fields without cutting off older peers.

Public keys travel as standard base64 of 32 bytes; endpoints as ``"host:port"`` strings
(``"[v6]:port"`` for IPv6). Optional fields may be absent or ``null``; encoders omit them.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar

from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import decode_key, encode_key
from meshvpn.relaytoken import TOKEN_LEN

MAX_TEXT = 255
MAX_ERROR_TEXT = 1024
MAX_ENDPOINTS = 8
MAX_CANDIDATES = 3 * MAX_ENDPOINTS
MAX_UNKNOWN_FIELDS = 16
MAX_PEERS = 4096
"""Peers in one peer_map frame; a larger map comes in several parts."""
MAX_RELAYS = 64

ERROR_CODES = frozenset(
    {
        "auth_key_invalid",
        "auth_key_expired",
        "auth_key_used",
        "approval_pending",
        "revoked",
        "network_full",
        "peer_unavailable",
        "bad_request",
    }
)


class MalformedMessage(RemoteProtocolError):
    """A control frame is not JSON or does not match the schema of its message type."""


class UnknownMessageType(MalformedMessage):
    """A control frame names a message type this side does not know."""


@dataclass(frozen=True)
class Endpoint:
    """A UDP address at which a node may be reachable."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``host:port`` / ``[v6]:port``; the host must be an IP literal."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or len(port) > 5:
            raise MalformedMessage(f"{text!r} is not a host:port endpoint")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise MalformedMessage(f"{text!r}: IPv6 hosts must be bracketed")
        return cls(_ip_literal(host), _port(int(port)))


@functools.lru_cache(maxsize=16384)
def _ip_literal(text: str) -> str:
    """The canonical form of an IP literal; cached because peer maps and stored nodes repeat the
    same few addresses thousands of times, and parsing dominated decoding them."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise MalformedMessage(f"{text!r} is not an IP address") from None


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise MalformedMessage(f"port {value} out of range")
    return value


@dataclass(frozen=True)
class Codec:
    """How one field travels: `load` checks a JSON value and converts it, `dump` converts back."""

    load: Callable[[Any], Any]
    dump: Callable[[Any], Any] = lambda value: value
    optional: bool = False


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise MalformedMessage(problem)


def text(max_len: int = MAX_TEXT, min_len: int = 1) -> Codec:
    """A printable string of bounded length (no control characters or lone surrogates)."""

    def load(value: Any) -> str:
        _check(isinstance(value, str), "expected a string")
        _check(min_len <= len(value) <= max_len, f"length must be {min_len}..{max_len}")
        _check(value.isprintable(), "control or unencodable characters")
        return value

    return Codec(load)


def choice(values: frozenset[str]) -> Codec:
    def load(value: Any) -> str:
        _check(isinstance(value, str) and value in values, f"expected one of {sorted(values)}")
        return value

    return Codec(load)


def _load_bool(value: Any) -> bool:
    _check(isinstance(value, bool), "expected true or false")
    return value


def _load_time(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    _check(ok and math.isfinite(value) and value >= 0, "expected a non-negative number")
    return float(value)


def _load_port(value: Any) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool), "expected an integer port")
    return _port(value)


def _load_count(value: Any) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31,
           "expected a non-negative integer")
    return value


def _load_key(value: Any) -> bytes:
    _check(isinstance(value, str) and len(value) == 44, "expected a base64 32-byte key")
    try:
        raw = decode_key(value)
    except ValueError:
        raise MalformedMessage("expected a base64 32-byte key") from None
    _check(encode_key(raw) == value, "expected a canonical base64 key")
    return raw


def _load_endpoint(value: Any) -> Endpoint:
    _check(isinstance(value, str) and len(value) <= 64, "expected a host:port string")
    return Endpoint.parse(value)


def _load_host(value: Any) -> str:
    _check(isinstance(value, str) and len(value) <= 45, "expected an IP address")
    return _ip_literal(value)


def _load_cidr(value: Any) -> str:
    _check(isinstance(value, str) and len(value) <= 49, "expected a CIDR prefix")
    try:
        return ipaddress.ip_network(value).with_prefixlen
    except ValueError:
        raise MalformedMessage(f"{value!r} is not a CIDR prefix") from None


def _load_token(value: Any) -> bytes:
    _check(isinstance(value, str) and len(value) == _TOKEN_TEXT_LEN, "expected a base64 relay token")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise MalformedMessage("expected a base64 relay token") from None
    _check(base64.b64encode(raw).decode() == value, "expected a canonical base64 relay token")
    return raw


_TOKEN_TEXT_LEN = 4 * ((TOKEN_LEN + 2) // 3)

BOOL = Codec(_load_bool)
TIME = Codec(_load_time)
PORT = Codec(_load_port)
COUNT = Codec(_load_count)
KEY = Codec(_load_key, encode_key)
ENDPOINT = Codec(_load_endpoint, str)
TOKEN = Codec(_load_token, lambda raw: base64.b64encode(raw).decode())
HOST = Codec(_load_host)
CIDR = Codec(_load_cidr)
NAME = text()


def optional(codec: Codec) -> Codec:
    """The value may be absent or null, which both decode to None."""
    return Codec(
        lambda value: None if value is None else codec.load(value),
        lambda value: None if value is None else codec.dump(value),
        optional=True,
    )


def list_of(codec: Codec, max_items: int) -> Codec:
    def load(value: Any) -> tuple:
        _check(isinstance(value, list), "expected a list")
        _check(len(value) <= max_items, f"more than {max_items} items")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(codec.load(item))
            except MalformedMessage as exc:
                raise MalformedMessage(f"[{index}]: {exc}") from None
        return tuple(items)

    return Codec(load, lambda value: [codec.dump(item) for item in value])


def record(cls: type[Record]) -> Codec:
    return Codec(cls.from_json, lambda value: value.to_json())


def wire(codec: Codec, default: Any = MISSING) -> Any:
    """Declare a dataclass field that travels on the wire with `codec`."""
    if codec.optional and default is MISSING:
        default = None
    return field(default=default, metadata={"codec": codec})


@functools.cache
def _wire_fields(cls: type) -> tuple[tuple[str, Codec], ...]:
    return tuple((f.name, f.metadata["codec"]) for f in fields(cls))


class Record:
    """A JSON object of the schema, described entirely by its fields' codecs."""

    _reserved: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_json(cls, obj: Any) -> Any:
        _check(isinstance(obj, dict), f"{cls.__name__}: expected a JSON object")
        spec = _wire_fields(cls)
        known = {name for name, _ in spec} | cls._reserved
        unknown = sum(1 for key in obj if key not in known)
        _check(unknown <= MAX_UNKNOWN_FIELDS, f"{cls.__name__}: {unknown} unknown fields")
        values = {}
        for name, codec in spec:
            if name not in obj:
                _check(codec.optional, f"{cls.__name__}: missing field {name!r}")
                continue
            try:
                values[name] = codec.load(obj[name])
            except MalformedMessage as exc:
                raise MalformedMessage(f"{cls.__name__}.{name}: {exc}") from None
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out = {}
        for name, codec in _wire_fields(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = codec.dump(value)
        return out


class Message(Record):
    """A top-level control message; its JSON object carries ``"type": TYPE``."""

    TYPE: ClassVar[str]
    _reserved = frozenset({"type"})

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_json()}


ENDPOINTS = list_of(ENDPOINT, MAX_ENDPOINTS)


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


@dataclass(frozen=True)
class RelayToken(Record):
    """The node's pass for one relay (`meshvpn.relaytoken`), shown in its RELAY_HELLO."""

    relay: str = wire(NAME)
    """Name of the relay, as in `RelayInfo`."""
    token: bytes = wire(TOKEN)
    expires: float = wire(TIME)
    """Unix time after which the relay refuses it."""


RELAY_TOKENS = list_of(record(RelayToken), MAX_RELAYS)


@dataclass(frozen=True)
class TurnServer(Record):
    """A standard TURN server (RFC 8656) and the node's REST API credential for it (`meshvpn.turncreds`)."""

    name: str = wire(NAME)
    host: str = wire(HOST)
    port: int = wire(PORT)
    username: str = wire(NAME)
    password: str = wire(NAME)
    expires: float = wire(TIME)
    """Unix time after which the TURN server refuses the credential."""


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
    turn_relayed: tuple[Endpoint, ...] | None = wire(optional(ENDPOINTS))
    """The peer's relayed addresses on TURN servers: where to send through TURN."""
    nat: NatInfo | None = wire(NAT)
    """The peer's NAT as it reported it (absent: unknown, treated as endpoint-independent)."""


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


@dataclass(frozen=True)
class Endpoints(Message):
    """The node's endpoints changed (new interface, new STUN mapping)."""

    TYPE = "endpoints"
    local: tuple[Endpoint, ...] = wire(ENDPOINTS)
    public: Endpoint | None = wire(optional(ENDPOINT))
    nat: NatInfo | None = wire(NAT)
    """The node's NAT behaviour, re-sampled with the endpoints."""


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


# coord → node


@dataclass(frozen=True)
class Registered(Message):
    """Registration accepted: the node's identity in the overlay and the relays it may use."""

    TYPE = "registered"
    node_key: bytes = wire(KEY)
    name: str = wire(NAME)
    address: str = wire(HOST)
    network: NetworkInfo = wire(record(NetworkInfo))
    relays: tuple[RelayInfo, ...] = wire(list_of(record(RelayInfo), MAX_RELAYS), ())
    relay_tokens: tuple[RelayToken, ...] = wire(RELAY_TOKENS, ())
    """One token per relay; fresh ones follow in `RelayTokens` before these expire."""
    turn: tuple[TurnServer, ...] | None = wire(TURN_SERVERS)
    """TURN servers with the node's credentials; fresh ones follow in `RelayTokens`."""


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
        Register, Endpoints, PunchRequest, Ping, Pong, RelayHome, TurnRelayed,
        Registered, RelayTokens, PeerMap, PeerUpdate, PeerRemove, Punch, Error,
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
