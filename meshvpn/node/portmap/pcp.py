"""PCP (RFC 6887) messages: ANNOUNCE (does the gateway speak PCP?) and MAP for one UDP or TCP port.

Sans-IO. `decode` takes one datagram from the gateway's port 5351 and raises only
`PortMapError`; options after the opcode payload are checked for length and skipped.

    common header, request:  version 2 | R=0, opcode 7 | reserved 16 | requested lifetime 32 |
                             client IP 128                                    (24 bytes)
    common header, response: version 2 | R=1, opcode 7 | reserved 8 | result 8 | lifetime 32 |
                             epoch 32 | reserved 96                           (24 bytes)
    MAP payload:             nonce 96 | protocol 8 | reserved 24 | internal port 16 |
                             external port 16 | external IP 128               (36 bytes)

IPv4 addresses travel as IPv4-mapped IPv6 (::ffff:a.b.c.d).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from meshvpn.node.portmap.natpmp import TCP, UDP, PortMapError

VERSION = 2
OP_ANNOUNCE, OP_MAP = 0, 1
RESPONSE_BIT = 0x80
HEADER = 24
MAP_PAYLOAD = 36
NONCE_SIZE = 12
MAX_SIZE = 1100

RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "no resources",
    9: "unsupported protocol",
    10: "user exceeded quota",
    11: "cannot provide external",
    12: "address mismatch",
    13: "excessive remote peers",
}


@dataclass(frozen=True)
class Response:
    """A PCP response: its common header and, for MAP, the mapping (else None fields)."""

    opcode: int
    result: int
    lifetime: int
    epoch: int
    nonce: bytes | None = None
    protocol: int | None = None
    """`UDP` or `TCP` for MAP: which of our mappings this answers (with the nonce)."""
    internal_port: int | None = None
    external_port: int | None = None
    external: str | None = None


def _ip16(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    return (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed


def _ip_text(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else ip.compressed


def _header(opcode: int, lifetime: int, client: str) -> bytes:
    if not 0 <= lifetime < 1 << 32:
        raise ValueError("PCP: lifetime out of range")
    return struct.pack("!BBHI16s", VERSION, opcode, 0, lifetime, _ip16(client))


def announce_request(client: str) -> bytes:
    """ANNOUNCE from `client` (our address towards the gateway): a PCP server answers SUCCESS."""
    return _header(OP_ANNOUNCE, 0, client)


def map_request(client: str, nonce: bytes, internal_port: int, external_port: int, lifetime: int,
                external: str = "0.0.0.0", protocol: int = UDP) -> bytes:
    """MAP our `protocol` (UDP or TCP) `internal_port`; lifetime 0 with the same nonce deletes it
    (RFC 6887 §15)."""
    if len(nonce) != NONCE_SIZE or not (0 < internal_port < 65536 and 0 <= external_port < 65536):
        raise ValueError("PCP: bad nonce or port")
    if protocol not in (UDP, TCP):
        raise ValueError(f"PCP: we map UDP or TCP, not protocol {protocol}")
    payload = struct.pack("!12sB3xHH16s", nonce, protocol, internal_port, external_port, _ip16(external))
    return _header(OP_MAP, lifetime, client) + payload


def result_text(code: int) -> str:
    return RESULTS.get(code, f"result {code}")


def decode(data: bytes) -> Response:
    """One PCP response from the gateway."""
    if len(data) < HEADER or len(data) > MAX_SIZE or len(data) % 4:
        raise PortMapError(f"PCP: a response of {len(data)} bytes (24 to 1100, a multiple of 4)")
    version, r_opcode, _, result, lifetime, epoch = struct.unpack_from("!BBBBII", data)
    if version != VERSION:
        raise PortMapError(f"PCP: version {version}, expected 2")
    if not r_opcode & RESPONSE_BIT:
        raise PortMapError("PCP: a request, not a response")
    opcode = r_opcode & ~RESPONSE_BIT
    if opcode == OP_ANNOUNCE:
        _check_options(data, HEADER)
        return Response(opcode, result, lifetime, epoch)
    if opcode != OP_MAP:
        raise PortMapError(f"PCP: unexpected opcode {opcode}")
    if len(data) < HEADER + MAP_PAYLOAD:
        if result:  # an error answer may come without the payload
            return Response(opcode, result, lifetime, epoch)
        raise PortMapError(f"PCP: MAP response of {len(data)} bytes, expected at least 60")
    nonce, protocol, internal, external_port, external = struct.unpack_from("!12sB3xHH16s", data, HEADER)
    if protocol not in (UDP, TCP) and not result:
        raise PortMapError(f"PCP: MAP response for protocol {protocol}, we ask for UDP or TCP")
    _check_options(data, HEADER + MAP_PAYLOAD)
    return Response(opcode, result, lifetime, epoch, nonce, protocol, internal, external_port, _ip_text(external))


def _check_options(data: bytes, at: int) -> None:
    """Options are (code 8, reserved 8, length 16, data padded to 4); each must fit."""
    while at < len(data):
        if len(data) - at < 4:
            raise PortMapError("PCP: truncated option header")
        (length,) = struct.unpack_from("!H", data, at + 2)
        at += 4 + (length + 3) // 4 * 4
        if at > len(data):
            raise PortMapError("PCP: option longer than the datagram")
