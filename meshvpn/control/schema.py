"""The control schema's machinery: codecs, records and their limits.

Every field of a control message carries a `Codec` (check + convert, both directions), so a
message's schema, limits and error messages are one table instead of hand-written parsing.
Decoding checks every documented field: anything missing, mistyped or oversized raises
`MalformedMessage`, a `RemoteProtocolError`, and nothing else escapes. Fields this version does
not know are skipped (at most `MAX_UNKNOWN_FIELDS` of them), so a newer node or coord can add
optional fields without cutting off older peers. The messages themselves are in
`meshvpn.control.messages`.

Public keys travel as standard base64 of 32 bytes; endpoints as ``"host:port"`` strings
(``"[v6]:port"`` for IPv6). Optional fields may be absent or ``null``; encoders omit them.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar

from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import decode_key, encode_key
from meshvpn.relaytoken import TOKEN_LEN
from meshvpn.wire import Endpoint

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


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``host:port`` / ``[v6]:port``; the host must be an IP literal."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5:
        raise MalformedMessage(f"{text!r} is not a host:port endpoint")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise MalformedMessage(f"{text!r}: IPv6 hosts must be bracketed")
    return Endpoint(_ip_literal(host), _port(int(port)))


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
    return parse_endpoint(value)


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


def _load_field(owner: str, name: str, codec: Codec, value: Any) -> Any:
    try:
        return codec.load(value)
    except MalformedMessage as exc:
        raise MalformedMessage(f"{owner}.{name}: {exc}") from None


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
            values[name] = _load_field(cls.__name__, name, codec, obj[name])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out = {}
        for name, codec in _wire_fields(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = codec.dump(value)
        return out


@dataclass(frozen=True)
class Patch:
    """Some fields of one record, the one `key` names: a field absent from `changes` kept its
    value, one present took the value given (None: an optional field was cleared)."""

    key: Any
    changes: tuple[tuple[str, Any], ...] = ()

    def apply(self, record: Any) -> Any:
        """`record` with the changes made."""
        return replace(record, **dict(self.changes))


def patch_of(cls: type[Record], identity: str) -> Codec:
    """A `Patch` of `cls` on the wire: a JSON object with `identity` and the changed fields, each
    in its own codec (null only where the field is optional); unknown fields are skipped as in
    a record. A field the patch does not name is absent, so "unchanged" and "cleared" differ."""
    spec = dict(_wire_fields(cls))
    known = set(spec)
    name_of = cls.__name__

    def load(obj: Any) -> Patch:
        _check(isinstance(obj, dict), f"{name_of} change: expected a JSON object")
        _check(identity in obj, f"{name_of} change: missing field {identity!r}")
        unknown = sum(1 for name in obj if name not in known)
        _check(unknown <= MAX_UNKNOWN_FIELDS, f"{name_of} change: {unknown} unknown fields")
        key = _load_field(name_of, identity, spec[identity], obj[identity])
        changes = tuple((name, _load_field(name_of, name, codec, obj[name]))
                        for name, codec in spec.items() if name != identity and name in obj)
        return Patch(key, changes)

    def dump(patch: Patch) -> dict[str, Any]:
        return {identity: spec[identity].dump(patch.key),
                **{name: spec[name].dump(value) for name, value in patch.changes}}

    return Codec(load, dump)


class Message(Record):
    """A top-level control message; its JSON object carries ``"type": TYPE``."""

    TYPE: ClassVar[str]
    _reserved = frozenset({"type"})

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_json()}
