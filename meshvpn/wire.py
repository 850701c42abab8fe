"""meshvpn UDP wire format: the header, every message type, pure encode/decode.

Every message starts with ``version(1)=1 | type(1) | reserved(2)=0``; integers
are little endian except endpoint ports (network order).  ``docs/protocol.md``
draws each layout byte by byte.  Decoders raise only :class:`WireError` (a
:class:`~meshvpn.errors.RemoteProtocolError`), so a receive loop can catch one
type and drop.  Transport (DATA/KEEPALIVE) sealing lives in
:mod:`meshvpn.session`; this module only gives it the header layout and a
cheap dispatch helper, :func:`message_type`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple, Union

from nacl import bindings, exceptions

from meshvpn.errors import LocalProtocolError, RemoteProtocolError

VERSION = 1
HEADER = struct.Struct("<BBH")
HEADER_LEN = HEADER.size
KEY_LEN = 32
TAG_LEN = 16
MAC1_LEN = 16
MAC2_LEN = 16
"""The cookie MAC (``meshvpn.cookie``) that ends a RELAY_HELLO (zeros when the node has no cookie) and a
HANDSHAKE_INIT sent with a cookie (an initiation without one has no mac2 at all)."""
BOX_NONCE_LEN = 24
TX_ID_LEN = 8


class WireError(RemoteProtocolError):
    """A datagram does not follow the meshvpn wire format."""


class MessageType(enum.IntEnum):
    """The type byte of every meshvpn message."""

    HANDSHAKE_INIT = 1
    HANDSHAKE_RESP = 2
    DATA = 3
    KEEPALIVE = 4
    PROBE = 5
    PROBE_REPLY = 6
    RELAY = 7
    RELAY_HELLO = 8
    RELAY_HELLO_ACK = 9
    RELAY_COOKIE = 10
    HANDSHAKE_COOKIE = 11


_KNOWN_TYPES = frozenset(MessageType)
_RELAYABLE = frozenset(MessageType) - {
    MessageType.RELAY,
    MessageType.RELAY_HELLO,
    MessageType.RELAY_HELLO_ACK,
    MessageType.RELAY_COOKIE,
}


def header(kind: MessageType) -> bytes:
    """The 4-byte header that starts every message of type ``kind``."""
    return HEADER.pack(VERSION, kind, 0)


def message_type(buf: bytes | bytearray | memoryview) -> int:
    """Validate the 4-byte header and return the type byte; the per-packet dispatch."""
    if len(buf) < HEADER_LEN:
        raise WireError(f"message too short for a header: {len(buf)} bytes")
    if buf[0] != VERSION:
        raise WireError(f"unsupported version {buf[0]}")
    if buf[2] or buf[3]:
        raise WireError("reserved header bytes are not zero")
    kind = buf[1]
    if kind not in _KNOWN_TYPES:
        raise WireError(f"unknown message type {kind}")
    return kind


def _expect(buf: bytes | bytearray | memoryview, kind: MessageType, size: int, exact: bool) -> None:
    """Check header type and length for a fixed-layout message."""
    if message_type(buf) != kind:
        raise WireError(f"expected {kind.name}, got type {buf[1]}")
    if (len(buf) != size) if exact else (len(buf) < size):
        relation = "exactly" if exact else "at least"
        raise WireError(f"{kind.name} must be {relation} {size} bytes, got {len(buf)}")


# --- endpoints ---------------------------------------------------------------


class Endpoint(NamedTuple):
    """An address and port a node is reachable at: in packets, routes, the control schema and status.

    ``host`` is an IPv4 or IPv6 address in its canonical text form (a DNS name is a configured
    `meshvpn.config.Address` until a shell resolves it); text is ``host:port`` or ``[v6]:port``.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_FAMILY_LEN = {4: 4, 6: 16}
_PORT = struct.Struct("!H")


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """``family(1: 4|6) | address(4|16) | port(2, network order)``."""
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {endpoint.host!r}") from exc
    if not 0 <= endpoint.port <= 0xFFFF:
        raise LocalProtocolError(f"port out of range: {endpoint.port}")
    return bytes((address.version,)) + address.packed + _PORT.pack(endpoint.port)


def decode_endpoint(buf: bytes | memoryview, offset: int = 0) -> tuple[Endpoint, int]:
    """Decode an endpoint at ``offset``; return it and the offset just past it."""
    if offset >= len(buf):
        raise WireError("endpoint missing")
    family = buf[offset]
    size = _FAMILY_LEN.get(family)
    if size is None:
        raise WireError(f"unknown address family {family}")
    end = offset + 1 + size + _PORT.size
    if len(buf) < end:
        raise WireError("endpoint truncated")
    packed = bytes(buf[offset + 1 : offset + 1 + size])
    address = ipaddress.IPv4Address(packed) if family == 4 else ipaddress.IPv6Address(packed)
    (port,) = _PORT.unpack_from(buf, offset + 1 + size)
    return Endpoint(str(address), port), end


# --- handshake messages (Noise IK, see meshvpn.noise) -------------------------

_MAC1_LABEL = b"mac1----"
_INITIATION = struct.Struct(f"<BBHI{KEY_LEN}s{KEY_LEN + TAG_LEN}s{12 + TAG_LEN}s")
_RESPONSE = struct.Struct(f"<BBHII{KEY_LEN}s{TAG_LEN}s")
INITIATION_LEN = _INITIATION.size + MAC1_LEN
"""An initiation without a cookie: what nodes before the node's cookie send, and take only."""
INITIATION_WITH_MAC2_LEN = INITIATION_LEN + MAC2_LEN
"""An initiation stamped with the responder's cookie (``meshvpn.cookie``): mac2 over the 132 bytes before it."""
RESPONSE_LEN = _RESPONSE.size + MAC1_LEN


def mac1_key(receiver_public: bytes) -> bytes:
    """Key for mac1 on messages sent to ``receiver_public``: BLAKE2b-256("mac1----" || key)."""
    return hashlib.blake2b(_MAC1_LABEL + receiver_public, digest_size=32).digest()


def _mac1(key: bytes, covered: bytes | memoryview) -> bytes:
    return hashlib.blake2b(covered, key=key, digest_size=MAC1_LEN).digest()


def _check_mac1(buf: bytes | bytearray | memoryview, key: bytes) -> None:
    """Reject a message whose trailing mac1 is not keyed with ``key`` (cheap junk filter)."""
    view = memoryview(buf)
    if not hmac.compare_digest(_mac1(key, view[:-MAC1_LEN]), view[-MAC1_LEN:]):
        raise WireError("bad mac1")


def _pack_with_mac1(layout: struct.Struct, kind: MessageType, key: bytes, *fields: object) -> bytes:
    body = layout.pack(VERSION, kind, 0, *fields)
    return body + _mac1(key, body)


def _unpack_with_mac1(
    layout: struct.Struct, kind: MessageType, buf: bytes | bytearray | memoryview, key: bytes
) -> tuple:
    """Check length and mac1 before anything else, then return the fields after the header."""
    _expect(buf, kind, layout.size + MAC1_LEN, exact=True)
    _check_mac1(buf, key)
    return layout.unpack_from(buf)[3:]


@dataclass(frozen=True, slots=True)
class HandshakeInitiation:
    """Noise IK message 1: ``e, es, s, ss`` plus an encrypted TAI64N timestamp."""

    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes

    def encode(self, key: bytes) -> bytes:
        """Serialize and append mac1 computed with ``key`` (:func:`mac1_key` of the responder)."""
        return _pack_with_mac1(
            _INITIATION, MessageType.HANDSHAKE_INIT, key,
            self.sender_index, self.ephemeral, self.encrypted_static, self.encrypted_timestamp,
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, key: bytes) -> HandshakeInitiation:
        """Parse after checking length and mac1 (keyed with our own :func:`mac1_key`); a mac2 is left to the caller."""
        if len(buf) == INITIATION_WITH_MAC2_LEN:
            buf = memoryview(buf)[:INITIATION_LEN]
        return cls(*_unpack_with_mac1(_INITIATION, MessageType.HANDSHAKE_INIT, buf, key))


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """Noise IK message 2: ``e, ee, se`` plus an empty authenticated payload."""

    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes

    def encode(self, key: bytes) -> bytes:
        """Serialize and append mac1 computed with ``key`` (:func:`mac1_key` of the initiator)."""
        return _pack_with_mac1(
            _RESPONSE, MessageType.HANDSHAKE_RESP, key,
            self.sender_index, self.receiver_index, self.ephemeral, self.encrypted_nothing,
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, key: bytes) -> HandshakeResponse:
        """Parse after checking length and mac1 (keyed with our own :func:`mac1_key`)."""
        return cls(*_unpack_with_mac1(_RESPONSE, MessageType.HANDSHAKE_RESP, buf, key))


# --- transport messages (sealed and opened by meshvpn.session) ---------------

TRANSPORT_HEADER = struct.Struct("<BBHIQ")
"""``version | type | reserved | receiver_index u32 | counter u64``: the AEAD associated data."""
TRANSPORT_HEADER_LEN = TRANSPORT_HEADER.size
KEEPALIVE_LEN = TRANSPORT_HEADER_LEN + TAG_LEN
_RECEIVER_INDEX = struct.Struct("<I")


def transport_receiver_index(buf: bytes | bytearray | memoryview) -> int:
    """The receiver index of a DATA or KEEPALIVE message, to find its session."""
    kind = message_type(buf)
    if kind != MessageType.DATA and kind != MessageType.KEEPALIVE:
        raise WireError(f"not a transport message: type {kind}")
    if len(buf) < KEEPALIVE_LEN:
        raise WireError(f"transport message too short: {len(buf)} bytes")
    return _RECEIVER_INDEX.unpack_from(buf, HEADER_LEN)[0]


# --- relay envelope -----------------------------------------------------------

RELAY_PREFIX_LEN = HEADER_LEN + KEY_LEN


class Relayed(NamedTuple):
    """A relay envelope: the other node's key and the inner message (not copied)."""

    node_key: bytes
    inner: memoryview


def encode_relay(node_key: bytes, inner: bytes | memoryview) -> bytes:
    """Wrap ``inner`` for (or from) the node ``node_key``."""
    if len(node_key) != KEY_LEN:
        raise LocalProtocolError("relay node key must be 32 bytes")
    return header(MessageType.RELAY) + node_key + inner


def decode_relay(buf: bytes | bytearray | memoryview) -> Relayed:
    """Split a RELAY message; the inner message's header is validated, not its body."""
    _expect(buf, MessageType.RELAY, RELAY_PREFIX_LEN + HEADER_LEN, exact=False)
    view = memoryview(buf)
    inner = view[RELAY_PREFIX_LEN:]
    if message_type(inner) not in _RELAYABLE:
        raise WireError(f"type {inner[1]} cannot travel inside a relay envelope")
    return Relayed(bytes(view[HEADER_LEN:RELAY_PREFIX_LEN]), inner)


def relay_prefix(node_key: bytes) -> bytes:
    """The first RELAY_PREFIX_LEN bytes of every envelope for (or from) ``node_key``."""
    return header(MessageType.RELAY) + node_key


def readdress_relay(buf: bytes | bytearray | memoryview, node_key: bytes) -> bytes:
    """The same envelope with the node key replaced; the relay's one copy per forward."""
    return relay_prefix(node_key) + memoryview(buf)[RELAY_PREFIX_LEN:]


# --- sealed envelopes: probes and relay hellos --------------------------------


_U64 = struct.Struct("<Q")
_PROBE_HEAD = TX_ID_LEN + _U64.size


class PathProbe(NamedTuple):
    """PROBE: the endpoint the probe was sent to; PROBE_REPLY: the endpoint it came from.

    ``stamp`` is the sender's wall clock in microseconds, made strictly increasing per
    receiver: the receiver takes each stamp once and only near its own clock, so a
    captured probe or reply cannot be played again (``meshvpn.node.probes``).
    """

    tx_id: bytes
    endpoint: Endpoint
    stamp: int

    def pack(self) -> bytes:
        if len(self.tx_id) != TX_ID_LEN:
            raise LocalProtocolError("probe tx_id must be 8 bytes")
        if not 0 <= self.stamp < 1 << 64:
            raise LocalProtocolError("probe stamp must fit in 64 bits")
        return self.tx_id + _U64.pack(self.stamp) + encode_endpoint(self.endpoint)

    @classmethod
    def unpack(cls, plain: bytes) -> PathProbe:
        if len(plain) < _PROBE_HEAD:
            raise WireError("probe truncated")
        endpoint, end = decode_endpoint(plain, _PROBE_HEAD)
        if end != len(plain):
            raise WireError("trailing bytes after probe endpoint")
        return cls(plain[:TX_ID_LEN], endpoint, _U64.unpack_from(plain, TX_ID_LEN)[0])


class RelayHello(NamedTuple):
    """A node's proof of key possession to a relay; ``token`` is opaque (may be empty).

    The token travels in clear before the box (the relay checks it before any Diffie-Hellman:
    it is sealed by the coord for that relay alone), the timestamp inside the box, and the
    hello ends with a cookie MAC (`MAC2_LEN`)::

        header | sender_public (32) | token_len (1) | token | nonce (24) | box(type | ts) | mac2 (16)
    """

    timestamp_ms: int
    token: bytes = b""

    def pack(self) -> bytes:
        return _U64.pack(self.timestamp_ms) + self.token

    @classmethod
    def unpack(cls, plain: bytes) -> RelayHello:
        if len(plain) < _U64.size:
            raise WireError("relay hello truncated")
        return cls(_U64.unpack_from(plain)[0], plain[_U64.size :])


class RelayHelloAck(NamedTuple):
    """The relay's answer, echoing the hello's timestamp."""

    timestamp_ms: int

    def pack(self) -> bytes:
        return _U64.pack(self.timestamp_ms)

    @classmethod
    def unpack(cls, plain: bytes) -> RelayHelloAck:
        if len(plain) != _U64.size:
            raise WireError("relay hello ack must carry exactly a u64 timestamp")
        return cls(_U64.unpack(plain)[0])


SealedPayload = Union[PathProbe, RelayHello, RelayHelloAck]
_SEALED_PAYLOADS: dict[int, type] = {
    MessageType.PROBE: PathProbe,
    MessageType.PROBE_REPLY: PathProbe,
    MessageType.RELAY_HELLO: RelayHello,
    MessageType.RELAY_HELLO_ACK: RelayHelloAck,
}
SEALED_PREFIX_LEN = HEADER_LEN + KEY_LEN + BOX_NONCE_LEN
PROBE_MAX_LEN = SEALED_PREFIX_LEN + TAG_LEN + 1 + _PROBE_HEAD + 1 + _FAMILY_LEN[6] + _PORT.size
"""The longest PROBE or PROBE_REPLY (an IPv6 endpoint): the most a node keeps of a probe it cannot open yet."""


class Sealed(NamedTuple):
    """A sealed envelope before opening: the sender's key tells which shared key opens it."""

    kind: int
    sender_public: bytes
    nonce: bytes
    box: bytes
    token: bytes = b""
    """RELAY_HELLO only: the relay token, in clear."""
    mac2: bytes = b""
    """RELAY_HELLO only: the trailing cookie MAC."""


def box_key(local_private: bytes, remote_public: bytes) -> bytes:
    """The static-static ``crypto_box`` key; a degenerate remote key is the remote's fault."""
    try:
        return bindings.crypto_box_beforenm(remote_public, local_private)
    except (exceptions.RuntimeError, exceptions.ValueError) as exc:
        raise WireError("unusable public key") from exc


def seal(
    kind: MessageType, sender_public: bytes, nonce: bytes, key: bytes, payload: SealedPayload
) -> bytes:
    """Encode a PROBE, PROBE_REPLY, RELAY_HELLO or RELAY_HELLO_ACK; ``nonce`` is 24 random bytes."""
    if not isinstance(payload, _SEALED_PAYLOADS.get(kind, ())):
        raise LocalProtocolError(f"{type(payload).__name__} cannot be sent as type {kind}")
    if len(sender_public) != KEY_LEN or len(nonce) != BOX_NONCE_LEN:
        raise LocalProtocolError("sealed envelope needs a 32-byte key and a 24-byte nonce")
    # The type byte leads the plaintext too: the header is outside the box, and a
    # PROBE must not authenticate as a PROBE_REPLY (or a hello as its ack).
    if isinstance(payload, RelayHello):
        if len(payload.token) > 0xFF:
            raise LocalProtocolError("relay token longer than 255 bytes")
        box = bindings.crypto_box_afternm(bytes((kind,)) + _U64.pack(payload.timestamp_ms), nonce, key)
        clear = bytes((len(payload.token),)) + payload.token
        return header(kind) + sender_public + clear + nonce + box + bytes(MAC2_LEN)
    box = bindings.crypto_box_afternm(bytes((kind,)) + payload.pack(), nonce, key)
    return header(kind) + sender_public + nonce + box


def decode_sealed(buf: bytes | bytearray | memoryview) -> Sealed:
    """Split a sealed envelope without opening it."""
    kind = message_type(buf)
    if kind not in _SEALED_PAYLOADS:
        raise WireError(f"type {kind} is not a sealed envelope")
    if len(buf) < SEALED_PREFIX_LEN + TAG_LEN:
        raise WireError(f"sealed envelope too short: {len(buf)} bytes")
    view = memoryview(buf)
    if kind == MessageType.RELAY_HELLO:
        return _decode_hello(view)
    return Sealed(
        kind,
        bytes(view[HEADER_LEN : HEADER_LEN + KEY_LEN]),
        bytes(view[HEADER_LEN + KEY_LEN : SEALED_PREFIX_LEN]),
        bytes(view[SEALED_PREFIX_LEN:]),
    )


def _decode_hello(view: memoryview) -> Sealed:
    token_end = HEADER_LEN + KEY_LEN + 1 + view[HEADER_LEN + KEY_LEN]
    box_start = token_end + BOX_NONCE_LEN
    if len(view) < box_start + TAG_LEN + MAC2_LEN:
        raise WireError(f"relay hello too short: {len(view)} bytes")
    return Sealed(
        MessageType.RELAY_HELLO,
        bytes(view[HEADER_LEN : HEADER_LEN + KEY_LEN]),
        bytes(view[token_end:box_start]),
        bytes(view[box_start:-MAC2_LEN]),
        bytes(view[HEADER_LEN + KEY_LEN + 1 : token_end]),
        bytes(view[-MAC2_LEN:]),
    )


def open_sealed(sealed: Sealed, key: bytes) -> SealedPayload:
    """Authenticate and decrypt with the :func:`box_key` for ``sealed.sender_public``."""
    try:
        plain = bindings.crypto_box_open_afternm(sealed.box, sealed.nonce, key)
    except exceptions.CryptoError as exc:
        raise WireError(f"type {sealed.kind} envelope failed authentication") from exc
    if not plain or plain[0] != sealed.kind:
        raise WireError(f"type {sealed.kind} envelope sealed as another type")
    if sealed.kind == MessageType.RELAY_HELLO:
        if len(plain) != 1 + _U64.size:
            raise WireError("relay hello must seal exactly a u64 timestamp")
        return RelayHello(_U64.unpack_from(plain, 1)[0], sealed.token)
    return _SEALED_PAYLOADS[sealed.kind].unpack(plain[1:])
