"""What the port-mapping machine (`core`) tells its shell: datagrams for the gateway, UPnP calls
to make, and the mappings it holds."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Optional, Union

from meshvpn.node.portmap import natpmp


class Protocol(enum.StrEnum):
    """A port-mapping protocol, in order of preference."""

    PCP = "pcp"
    NATPMP = "nat-pmp"
    UPNP = "upnp"


class Transport(enum.IntEnum):
    """What a mapping forwards, by IANA protocol number (PCP carries it; NAT-PMP has an opcode each)."""

    UDP = natpmp.UDP
    TCP = natpmp.TCP

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Mapping:
    """A port the gateway forwards to our port of `transport`."""

    protocol: Protocol
    external: tuple[str, int]
    lifetime: float
    """Seconds granted; 0: until deleted (UPnP IGD permanent mappings)."""
    granted: float
    transport: Transport = Transport.UDP

    @property
    def renew_at(self) -> float:
        return self.granted + self.lifetime / 2 if self.lifetime else math.inf

    @property
    def expires(self) -> float:
        return self.granted + self.lifetime if self.lifetime else math.inf


@dataclass(frozen=True)
class SendToGateway:
    """Send `data` to the gateway's port 5351 (NAT-PMP and PCP share it)."""

    data: bytes


@dataclass(frozen=True)
class UpnpDiscover:
    """Look for an IGD on the LAN; answer with `upnp_found`."""


@dataclass(frozen=True)
class UpnpMap:
    """AddPortMapping for our port of `transport`; answer with `upnp_mapped`."""

    internal_port: int
    external_port: int
    lifetime: int
    transport: Transport = Transport.UDP
    fallback: Optional[int] = None
    """Ask for `external_port` only if the gateway holds no mapping of it, else (or refused) for
    `fallback`: AddPortMapping replaces a mapping of the same client (IGD v1, 2.4.16), say a web
    server's on this host, and a port's owner must never lose it to us."""


@dataclass(frozen=True)
class UpnpUnmap:
    """DeletePortMapping; no answer needed."""

    external_port: int
    transport: Transport = Transport.UDP


@dataclass(frozen=True)
class MappingChanged:
    """The endpoint to announce for `transport` changed (None: we hold no mapping of it)."""

    mapping: Optional[Mapping]
    transport: Transport = Transport.UDP


Output = Union[SendToGateway, UpnpDiscover, UpnpMap, UpnpUnmap, MappingChanged]
