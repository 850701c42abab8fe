"""NAT-PMP (RFC 6886) messages: the external-address query and the UDP and TCP mapping requests.

Sans-IO. Requests are built from plain values; `decode` takes one datagram from the gateway's
port 5351 and raises only `PortMapError` (a `RemoteProtocolError`). A response whose result code
is not SUCCESS decodes fine: what to do about it is the caller's business.

    request   0: version 0 | opcode 0                                          (2 bytes)
    request 1/2: version 0 | opcode 1 (UDP) or 2 (TCP) | reserved 16 | internal port 16 |
                 suggested external port 16 | lifetime 32                      (12 bytes)
    response 128: version 0 | opcode 128 | result 16 | epoch 32 | external IPv4 32  (12 bytes)
    response 129/130: version 0 | opcode 129 or 130 | result 16 | epoch 32 | internal port 16 |
                 external port 16 | lifetime 32                               (16 bytes)

Transports are named by their IANA protocol numbers (`UDP`, `TCP`), as PCP carries them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from meshvpn.errors import RemoteProtocolError

PORT = 5351
"""The gateway's NAT-PMP (and PCP) server port."""
VERSION = 0
OP_ADDRESS, OP_MAP_UDP, OP_MAP_TCP = 0, 1, 2
RESPONSE = 128
UDP, TCP = 17, 6
"""IANA protocol numbers of the two transports a mapping can forward."""
MAP_OPCODES = {UDP: OP_MAP_UDP, TCP: OP_MAP_TCP}

RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized or refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}


class PortMapError(RemoteProtocolError):
    """A gateway's NAT-PMP or PCP datagram that cannot be read."""


@dataclass(frozen=True)
class AddressResponse:
    """The gateway's answer to the external-address query."""

    result: int
    epoch: int
    """Seconds since the gateway's mapping table started: a drop means it forgot our mappings."""
    external: str


@dataclass(frozen=True)
class MapResponse:
    """The gateway's answer to a mapping request (lifetime 0: the mapping was deleted)."""

    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int
    protocol: int = UDP
    """`UDP` or `TCP`: which request this answers (its opcode)."""


def address_request() -> bytes:
    """The external-address query: also how we learn that the gateway speaks NAT-PMP."""
    return struct.pack("!BB", VERSION, OP_ADDRESS)


def map_request(internal_port: int, external_port: int, lifetime: int, protocol: int = UDP) -> bytes:
    """A `protocol` (UDP or TCP) mapping request; lifetime 0 with external port 0 deletes the
    mapping (RFC 6886 §3.4)."""
    if not (0 < internal_port < 65536 and 0 <= external_port < 65536 and 0 <= lifetime < 1 << 32):
        raise ValueError("NAT-PMP: port or lifetime out of range")
    if protocol not in MAP_OPCODES:
        raise ValueError(f"NAT-PMP: maps UDP or TCP, not protocol {protocol}")
    return struct.pack("!BBHHHI", VERSION, MAP_OPCODES[protocol], 0, internal_port, external_port, lifetime)


def result_text(code: int) -> str:
    return RESULTS.get(code, f"result {code}")


def decode(data: bytes) -> AddressResponse | MapResponse:
    """One NAT-PMP response from the gateway."""
    if len(data) < 4:
        raise PortMapError(f"NAT-PMP: {len(data)}-byte datagram is too short")
    version, opcode, result = struct.unpack_from("!BBH", data)
    if version != VERSION:
        raise PortMapError(f"NAT-PMP: version {version}, expected 0")
    if opcode == RESPONSE + OP_ADDRESS:
        if len(data) < 12:
            raise PortMapError(f"NAT-PMP: address response of {len(data)} bytes, expected 12")
        epoch, external = struct.unpack_from("!I4s", data, 4)
        return AddressResponse(result, epoch, str(ipaddress.IPv4Address(external)))
    if opcode in (RESPONSE + OP_MAP_UDP, RESPONSE + OP_MAP_TCP):
        if len(data) < 16:
            raise PortMapError(f"NAT-PMP: mapping response of {len(data)} bytes, expected 16")
        epoch, internal, external, lifetime = struct.unpack_from("!IHHI", data, 4)
        return MapResponse(result, epoch, internal, external, lifetime, UDP if opcode == RESPONSE + OP_MAP_UDP else TCP)
    if opcode & RESPONSE and len(data) >= 8:
        # An error answer to an opcode we never send still carries a result (e.g. unsupported).
        raise PortMapError(f"NAT-PMP: response to opcode {opcode - RESPONSE}: {result_text(result)}")
    raise PortMapError(f"NAT-PMP: unexpected opcode {opcode}")
