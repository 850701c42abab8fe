"""Services in access rules: `any`, `icmp`, `tcp`, `udp`, `tcp/22`, `udp/27015-27030`.

The coord reads them from its config, sends them to nodes in the control schema, and nodes
match packets against them; this module is the one parser all three use. `parse_service`
raises only ValueError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshvpn.lan.packets import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from meshvpn.lan.packets6 import PROTO_ICMPV6

PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}
_FORM = re.compile(r"(any|icmp|tcp|udp)(?:/([0-9]{1,5})(?:-([0-9]{1,5}))?)?")


@dataclass(frozen=True, slots=True)
class Service:
    """A protocol (None: any) and, for tcp/udp, an inclusive destination port range."""

    proto: int | None
    low: int = 0
    high: int = 65535

    def __str__(self) -> str:
        if self.proto is None:
            return "any"
        name = next(key for key, number in PROTOCOLS.items() if number == self.proto)
        if (self.low, self.high) == (0, 65535):
            return name
        return f"{name}/{self.low}" if self.low == self.high else f"{name}/{self.low}-{self.high}"

    @property
    def all_ports(self) -> bool:
        return (self.low, self.high) == (0, 65535)

    def matches(self, proto: int, port: int | None) -> bool:
        """Whether a packet of `proto` to `port` (None: not known, as in a later fragment) is covered;
        `icmp` is ICMP in an IPv4 network and ICMPv6 in an IPv6 one."""
        if self.proto is None:
            return True
        if proto != self.proto and not (self.proto == PROTO_ICMP and proto == PROTO_ICMPV6):
            return False
        if self.proto == PROTO_ICMP or self.all_ports:
            return True
        return port is not None and self.low <= port <= self.high


def parse_service(text: object) -> Service:
    """Parse one service; raise ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a service such as udp/27015, got {type(text).__name__}")
    match = _FORM.fullmatch(text)
    if match is None:
        raise ValueError(f"bad service {text[:40]!r}: expected any, icmp, tcp, udp, tcp/PORT or udp/LOW-HIGH")
    name, low, high = match.groups()
    if low is None:
        return Service(PROTOCOLS.get(name))
    if name in ("any", "icmp"):
        raise ValueError(f"bad service {text!r}: {name} has no ports")
    first, last = int(low), int(high if high is not None else low)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"bad port range in {text!r}: need 1 <= LOW <= HIGH <= 65535")
    return Service(PROTOCOLS[name], first, last)
