"""STUN message codec (RFC 5389, RFC 5780 and RFC 8656 TURN attributes): a table from attribute type to pack/unpack.

Pure: no I/O. `meshvpn.stun` builds the Binding server responder and client transaction on it
and re-exports the names callers need, so import from there; `meshvpn.turn` builds the TURN
client on it.

Wire layout (RFC 5389 §6)::

    0                   1                   2                   3
    |0 0| message type (14 bits)   |  message length (body bytes)  |
    |                  magic cookie 0x2112A442                     |
    |             transaction id (96 bits, 3 words)                |
    | attribute type               | attribute length              |
    | value, padded to a multiple of 4 bytes ...                   |

Sharing a socket with meshvpn's own protocol: meshvpn datagrams start with version byte 1
(0b00000001), so "first two bits zero" alone does not tell them apart. `is_stun` also needs
the magic cookie at bytes 4-8 and a length field that matches the datagram; meshvpn's header has
its two reserved bytes (STUN's length field) zero, so a meshvpn datagram of more than 20 bytes
can never pass.

RFC 3489 ("classic") clients send 128-bit transaction ids with no magic cookie. `decode`
accepts them (`StunMessage.classic`) so the server can answer them the old way (§12.2);
`is_stun` does not, because a shared socket only ever carries our own, modern requests.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from meshvpn.errors import LocalProtocolError, RemoteProtocolError

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")
ATTR_HEADER = struct.Struct("!HH")
FINGERPRINT_XOR = 0x5354554E
INTEGRITY_SIZE = 20
TRANSACTION_ID_SIZE = 12

_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02

Address = tuple[str, int]


class StunError(RemoteProtocolError):
    """A datagram is not a well-formed STUN message; the text says what is wrong."""


class StunClass(IntEnum):
    """The two class bits of the message type."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class StunMethod(IntEnum):
    """The methods meshvpn speaks; others decode as plain ints."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(IntEnum):
    """Attribute types meshvpn understands (RFC 5389, RFC 5780, RFC 8656 and RFC 3489's two)."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    SOURCE_ADDRESS = 0x0004
    CHANGED_ADDRESS = 0x0005
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


@dataclass(frozen=True)
class ErrorCode:
    """ERROR-CODE value: a 300..699 code and its reason phrase."""

    code: int
    reason: str = ""


@dataclass(frozen=True)
class ChangeRequest:
    """CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer from another IP and/or port."""

    ip: bool = False
    port: bool = False


@dataclass
class StunMessage:
    """One STUN message; `attributes` maps type to decoded value (raw bytes when unknown).

    MESSAGE-INTEGRITY and FINGERPRINT appear here after decoding but are never encoded from
    here: `encode` computes them from its `key` and `fingerprint` arguments.
    """

    method: int
    cls: StunClass
    transaction_id: bytes
    attributes: dict[int, Any] = field(default_factory=dict)
    cookie: int = MAGIC_COOKIE

    @property
    def classic(self) -> bool:
        """True for an RFC 3489 message (no magic cookie)."""
        return self.cookie != MAGIC_COOKIE

    @property
    def unknown_required(self) -> list[int]:
        """Unknown comprehension-required attribute types (below 0x8000), in message order."""
        return [t for t in self.attributes if t < 0x8000 and t not in _SPECS]


# --- attribute packers and unpackers: (value, xor pad) <-> bytes --------------------------


def _pack_address(value: Address, pad: bytes) -> bytes:
    ip = ipaddress.ip_address(value[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return struct.pack("!BBH", 0, family, value[1]) + ip.packed


def _unpack_address(data: bytes, pad: bytes) -> Address:
    if len(data) < 4:
        raise ValueError(f"{len(data)} bytes, an address needs at least 4")
    family, port = data[1], int.from_bytes(data[2:4], "big")
    if family == _FAMILY_IPV4 and len(data) == 8:
        return str(ipaddress.IPv4Address(data[4:])), port
    if family == _FAMILY_IPV6 and len(data) == 20:
        return str(ipaddress.IPv6Address(data[4:])), port
    raise ValueError(f"family {family:#04x} with {len(data) - 4} address bytes")


def _xor(data: bytes, pad: bytes) -> bytes:
    """XOR the port with the cookie's high half and the address with cookie + transaction id."""
    n = len(data) - 2
    if n <= 0:
        return data
    mask = (pad[:2] + pad)[:n]
    return data[:2] + (int.from_bytes(data[2:], "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def _pack_xor_address(value: Address, pad: bytes) -> bytes:
    return _xor(_pack_address(value, pad), pad)


def _unpack_xor_address(data: bytes, pad: bytes) -> Address:
    return _unpack_address(_xor(data, pad), pad)


def _pack_text(value: str, pad: bytes) -> bytes:
    return value.encode()


def _unpack_text(data: bytes, pad: bytes) -> str:
    return data.decode()


def _pack_raw(value: bytes, pad: bytes) -> bytes:
    return bytes(value)


def _unpack_raw(data: bytes, pad: bytes) -> bytes:
    return data


def _pack_error_code(value: ErrorCode, pad: bytes) -> bytes:
    return struct.pack("!HBB", 0, value.code // 100, value.code % 100) + value.reason.encode()


def _unpack_error_code(data: bytes, pad: bytes) -> ErrorCode:
    if len(data) < 4:
        raise ValueError(f"{len(data)} bytes, needs at least 4")
    klass, number = data[2] & 0x07, data[3]
    if not 3 <= klass <= 6 or number > 99:
        raise ValueError(f"class {klass} number {number} is not a 300..699 code")
    return ErrorCode(klass * 100 + number, data[4:].decode())


def _pack_unknown_attributes(value: tuple[int, ...], pad: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


def _unpack_unknown_attributes(data: bytes, pad: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise ValueError(f"{len(data)} bytes is not a list of 16-bit types")
    return struct.unpack(f"!{len(data) // 2}H", data)


def _pack_change_request(value: ChangeRequest, pad: bytes) -> bytes:
    return (value.ip << 2 | value.port << 1).to_bytes(4, "big")


def _unpack_change_request(data: bytes, pad: bytes) -> ChangeRequest:
    if len(data) != 4:
        raise ValueError(f"{len(data)} bytes, must be 4")
    flags = data[3]
    return ChangeRequest(ip=bool(flags & 0x04), port=bool(flags & 0x02))


def _pack_port(value: int, pad: bytes) -> bytes:
    return struct.pack("!HH", value, 0)


def _unpack_port(data: bytes, pad: bytes) -> int:
    if len(data) not in (2, 4):
        raise ValueError(f"{len(data)} bytes, must be 2 or 4")
    return int.from_bytes(data[:2], "big")


def _pack_u32(value: int, pad: bytes) -> bytes:
    return value.to_bytes(4, "big")


def _unpack_integrity(data: bytes, pad: bytes) -> bytes:
    if len(data) != INTEGRITY_SIZE:
        raise ValueError(f"{len(data)} bytes, HMAC-SHA1 is {INTEGRITY_SIZE}")
    return bytes(data)


def _unpack_u32(data: bytes, pad: bytes) -> int:
    if len(data) != 4:
        raise ValueError(f"{len(data)} bytes, must be 4")
    return int.from_bytes(data, "big")


def _sized(size: int, convert: Callable[[bytes], Any]) -> Callable[[bytes, bytes], Any]:
    """An unpacker for a fixed-size value (the TURN attributes): check the size, then convert."""

    def unpack(data: bytes, pad: bytes) -> Any:
        if len(data) != size:
            raise ValueError(f"{len(data)} bytes, must be {size}")
        return convert(data)

    return unpack


_TURN_CODECS = {
    Attr.CHANNEL_NUMBER: (lambda v, p: struct.pack("!HH", v, 0), _sized(4, lambda d: int.from_bytes(d[:2], "big"))),
    Attr.REQUESTED_TRANSPORT: (lambda v, p: bytes((v, 0, 0, 0)), _sized(4, lambda d: d[0])),
    Attr.DONT_FRAGMENT: (lambda v, p: b"", _sized(0, lambda d: True)),
    Attr.EVEN_PORT: (lambda v, p: b"\x80" if v else b"\x00", _sized(1, lambda d: bool(d[0] & 0x80))),
    Attr.RESERVATION_TOKEN: (_pack_raw, _sized(8, bytes)),
}
"""RFC 8656 values: channel number (u16 + 2 reserved), protocol number (u8 + 3 reserved),
DONT-FRAGMENT (empty: presence is the value), EVEN-PORT's R bit, an 8-byte reservation token."""


@dataclass(frozen=True)
class AttrSpec:
    """How one attribute type is named, packed and unpacked."""

    name: str
    pack: Callable[[Any, bytes], bytes]
    unpack: Callable[[bytes, bytes], Any]


_ADDRESS = (_pack_address, _unpack_address)
_XOR_ADDRESS = (_pack_xor_address, _unpack_xor_address)
_TEXT = (_pack_text, _unpack_text)
_SPECS: dict[int, AttrSpec] = {
    attr: AttrSpec(attr.name.replace("_", "-"), *codec)
    for attr, codec in {
        Attr.MAPPED_ADDRESS: _ADDRESS,
        Attr.CHANGE_REQUEST: (_pack_change_request, _unpack_change_request),
        Attr.SOURCE_ADDRESS: _ADDRESS,
        Attr.CHANGED_ADDRESS: _ADDRESS,
        Attr.USERNAME: _TEXT,
        Attr.MESSAGE_INTEGRITY: (_pack_raw, _unpack_integrity),
        Attr.ERROR_CODE: (_pack_error_code, _unpack_error_code),
        Attr.UNKNOWN_ATTRIBUTES: (_pack_unknown_attributes, _unpack_unknown_attributes),
        Attr.REALM: _TEXT,
        Attr.NONCE: _TEXT,
        Attr.LIFETIME: (_pack_u32, _unpack_u32),
        Attr.XOR_PEER_ADDRESS: _XOR_ADDRESS,
        Attr.DATA: (_pack_raw, _unpack_raw),
        Attr.XOR_RELAYED_ADDRESS: _XOR_ADDRESS,
        Attr.XOR_MAPPED_ADDRESS: _XOR_ADDRESS,
        Attr.PADDING: (_pack_raw, _unpack_raw),
        Attr.RESPONSE_PORT: (_pack_port, _unpack_port),
        Attr.SOFTWARE: _TEXT,
        Attr.FINGERPRINT: (_pack_u32, _unpack_u32),
        Attr.RESPONSE_ORIGIN: _ADDRESS,
        Attr.OTHER_ADDRESS: _ADDRESS,
        **_TURN_CODECS,
    }.items()
}
_COMPUTED = (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT)


def attr_name(attr_type: int) -> str:
    """The RFC name of an attribute type, or its hex value when unknown."""
    spec = _SPECS.get(attr_type)
    return spec.name if spec else f"attribute {attr_type:#06x}"


# --- message type, integrity and fingerprint -------------------------------------------


def message_type(method: int, cls: StunClass) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 5389 §6, figure 3)."""
    return (
        (method & 0x000F)
        | (method & 0x0070) << 1
        | (method & 0x0F80) << 2
        | (cls & 0b01) << 4
        | (cls & 0b10) << 7
    )


def split_message_type(value: int) -> tuple[int, StunClass]:
    """Inverse of `message_type`."""
    method = (value & 0x000F) | (value & 0x00E0) >> 1 | (value & 0x3E00) >> 2
    return method, StunClass((value >> 4) & 0b01 | (value >> 7) & 0b10)


def _with_length(head: bytes | bytearray, body_length: int) -> bytes:
    """The bytes a check covers: the message so far with the length field set as the RFC says."""
    return bytes(head[:2]) + body_length.to_bytes(2, "big") + bytes(head[4:])


def _integrity(head: bytes | bytearray, key: bytes) -> bytes:
    checked = _with_length(head, len(head) - HEADER.size + 4 + INTEGRITY_SIZE)
    return hmac.new(key, checked, hashlib.sha1).digest()


def _fingerprint(head: bytes | bytearray) -> int:
    checked = _with_length(head, len(head) - HEADER.size + 8)
    return binascii.crc32(checked) ^ FINGERPRINT_XOR


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The long-term credential key, MD5(username ":" realm ":" password) (RFC 5389 §15.4)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# --- encode and decode -------------------------------------------------------------------


def _append(out: bytearray, attr_type: int, value: bytes, pad_byte: int) -> None:
    out += ATTR_HEADER.pack(attr_type, len(value))
    out += value
    out += bytes([pad_byte]) * (-len(value) % 4)


def encode(
    msg: StunMessage, *, key: bytes | None = None, fingerprint: bool = False, pad_byte: int = 0
) -> bytes:
    """Serialize `msg`, appending MESSAGE-INTEGRITY when `key` is given and FINGERPRINT on request.

    Unknown attributes are written from their raw bytes. `pad_byte` fills attribute padding,
    which receivers ignore (RFC 5769's vectors pad with spaces).
    """
    if len(msg.transaction_id) != TRANSACTION_ID_SIZE:
        raise LocalProtocolError(f"transaction id is {len(msg.transaction_id)} bytes, not 12")
    pad = msg.cookie.to_bytes(4, "big") + msg.transaction_id
    out = bytearray(HEADER.pack(message_type(msg.method, msg.cls), 0, msg.cookie, msg.transaction_id))
    for attr_type, value in msg.attributes.items():
        if attr_type in _COMPUTED:
            continue
        spec = _SPECS.get(attr_type)
        _append(out, attr_type, spec.pack(value, pad) if spec else value, pad_byte)
    if key is not None:
        _append(out, Attr.MESSAGE_INTEGRITY, _integrity(out, key), pad_byte)
    if fingerprint:
        _append(out, Attr.FINGERPRINT, _pack_u32(_fingerprint(out), pad), pad_byte)
    out[2:4] = (len(out) - HEADER.size).to_bytes(2, "big")
    return bytes(out)


def is_stun(buf: bytes) -> bool:
    """Cheap demultiplexing test for a socket shared with other traffic (see module doc)."""
    return (
        len(buf) >= HEADER.size
        and buf[0] & 0xC0 == 0
        and buf[4:8] == _COOKIE_BYTES
        and int.from_bytes(buf[2:4], "big") == len(buf) - HEADER.size
        and len(buf) % 4 == 0
    )


def decode_header(buf: bytes) -> tuple[int, StunClass, int, bytes]:
    """(method, class, cookie, transaction id) from a header, checking nothing past it."""
    if len(buf) < HEADER.size:
        raise StunError(f"STUN message is {len(buf)} bytes, shorter than the 20-byte header")
    msg_type, _, cookie, txid = HEADER.unpack_from(buf)
    if msg_type & 0xC000:
        raise StunError(f"STUN message type {msg_type:#06x} does not start with two zero bits")
    return (*split_message_type(msg_type), cookie, txid)


def decode(buf: bytes, *, key: bytes | None = None) -> StunMessage:
    """Parse and check one STUN message; raise `StunError` saying what is wrong.

    A FINGERPRINT, when present, must be last and must match. With `key`, MESSAGE-INTEGRITY
    must be present and match. Attributes after MESSAGE-INTEGRITY, other than FINGERPRINT, are
    ignored (RFC 5389 §15.4); of repeated attributes only the first counts. Unknown attributes
    are kept as raw bytes; the caller decides about comprehension-required ones
    (`StunMessage.unknown_required`), since a server answers 420 and a client gives up.
    """
    method, cls, cookie, txid = decode_header(buf)
    length = int.from_bytes(buf[2:4], "big")
    if length % 4:
        raise StunError(f"STUN length field {length} is not a multiple of 4")
    if length != len(buf) - HEADER.size:
        raise StunError(f"STUN length field says {length} body bytes, datagram has {len(buf) - HEADER.size}")
    pad = cookie.to_bytes(4, "big") + txid
    attributes: dict[int, Any] = {}
    integrity_at: int | None = None
    pos = HEADER.size
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise StunError(f"attribute header at offset {pos} is truncated")
        attr_type, attr_len = ATTR_HEADER.unpack_from(buf, pos)
        start, end = pos + 4, pos + 4 + attr_len
        if end > len(buf):
            raise StunError(
                f"{attr_name(attr_type)} at offset {pos} says {attr_len} bytes, only {len(buf) - start} remain"
            )
        if integrity_at is not None and attr_type != Attr.FINGERPRINT:
            pos = end + (-attr_len % 4)
            continue
        spec = _SPECS.get(attr_type)
        if attr_type not in attributes:
            raw = bytes(buf[start:end])
            try:
                attributes[attr_type] = spec.unpack(raw, pad) if spec else raw
            except (ValueError, UnicodeDecodeError) as exc:
                raise StunError(f"bad {spec.name} at offset {pos}: {exc}") from None
        if attr_type == Attr.MESSAGE_INTEGRITY and integrity_at is None:
            integrity_at = pos
        elif attr_type == Attr.FINGERPRINT:
            if end + (-attr_len % 4) != len(buf):
                raise StunError(f"FINGERPRINT at offset {pos} is not the last attribute")
            expected = _fingerprint(buf[:pos])
            if attributes[attr_type] != expected:
                raise StunError(f"FINGERPRINT {attributes[attr_type]:#010x} does not match {expected:#010x}")
        pos = end + (-attr_len % 4)
    if key is not None:
        if integrity_at is None:
            raise StunError("MESSAGE-INTEGRITY is missing")
        if not hmac.compare_digest(attributes[Attr.MESSAGE_INTEGRITY], _integrity(buf[:integrity_at], key)):
            raise StunError("MESSAGE-INTEGRITY does not match the key")
    return StunMessage(method, cls, txid, attributes, cookie)
