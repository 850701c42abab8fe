"""The few rtnetlink messages a node watches: links, IPv4 and IPv6 addresses, IPv4 routes (sans-IO).

The kernel tells a socket of the ``NETLINK_ROUTE`` family about every link, address and route
change of its network namespace (rtnetlink(7)). One read holds several messages, each a
16-byte ``nlmsghdr`` and a body; a body is a fixed header followed by 4-byte aligned
attributes (``rtattr``: length, type, value):

    nlmsghdr   len u32 | type u16 | flags u16 | seq u32 | pid u32
    ifinfomsg  family u8 | pad u8 | type u16 | index i32 | flags u32 | change u32   + IFLA_* attrs
    ifaddrmsg  family u8 | prefixlen u8 | flags u8 | scope u8 | index u32          + IFA_* attrs
    rtmsg      family, dst_len, src_len, tos, table, protocol, scope, type (u8 each) | flags u32 + RTA_*

Only what the node decides on is kept (:class:`LinkChange`, :class:`AddressChange`,
:class:`RouteChange`); other message types are skipped. IPv6 addresses are watched because a
node announces its global ones to its peers (`meshvpn.node.ipv6`): one that comes or goes is a
network change like an IPv4 one. Their flags (tentative, deprecated...) come in the
``IFA_FLAGS`` attribute when the kernel has more than the header's eight bits. Malformed input raises
:class:`~meshvpn.errors.RemoteProtocolError` only, like every decoder here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from meshvpn.errors import RemoteProtocolError

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR
"""The multicast groups a watcher joins: link, IPv4 and IPv6 address, and IPv4 route changes."""

NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x08, 0x20, 0x40
IFA_F_UNUSABLE = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE
"""Flags of an address the kernel would not (or should not) send from: not one to announce."""
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_FLAGS = 1, 2, 3, 8
RTA_OIF, RTA_GATEWAY, RTA_TABLE = 4, 5, 15
RT_TABLE_MAIN = 254
AF_INET, AF_INET6 = 2, 10
_SIZES = {AF_INET: (4, 32), AF_INET6: (16, 128)}
"""Address bytes and longest prefix per family."""

_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_ATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class LinkChange:
    """A link appeared, changed flags or went away."""

    index: int
    name: Optional[str]
    up: bool
    """Administratively up and with carrier (IFF_UP and IFF_LOWER_UP); False for a removed link."""
    removed: bool = False


@dataclass(frozen=True)
class AddressChange:
    """An IPv4 or IPv6 address was added to (or changed on) or removed from a link."""

    index: int
    address: str
    prefixlen: int
    label: Optional[str]
    """The interface name (the kernel labels IPv4 addresses with it, not IPv6 ones)."""
    removed: bool = False
    flags: int = 0
    """IFA_F_* flags (IFA_FLAGS when present, else the header's): tentative, deprecated..."""


@dataclass(frozen=True)
class RouteChange:
    """An IPv4 route of the main table was added or removed."""

    dst_len: int
    """0 for a default route."""
    gateway: Optional[str]
    oif: Optional[int]
    removed: bool = False

    @property
    def default(self) -> bool:
        return self.dst_len == 0


Change = Union[LinkChange, AddressChange, RouteChange]


class Overrun(RemoteProtocolError):
    """The kernel dropped notifications (the socket's buffer overflowed): assume anything changed."""


def decode(data: bytes) -> list[Change]:
    """Every change in one read from a rtnetlink socket, in order; other message types are skipped."""
    return [change for change in map(_body, _messages(data)) if change is not None]


def _messages(data: bytes) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    at = 0
    while len(view) - at >= _HEADER.size:
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(view, at)
        if length < _HEADER.size or length > len(view) - at:
            raise RemoteProtocolError(f"netlink message of {length} bytes at {at} in {len(view)}")
        if kind == NLMSG_OVERRUN:
            raise Overrun("netlink overrun")
        yield kind, view[at + _HEADER.size : at + length]
        at += _align(length)
    if at < len(view) and any(view[at:]):
        raise RemoteProtocolError(f"{len(view) - at} trailing bytes after the last netlink message")


def _body(message: tuple[int, memoryview]) -> Optional[Change]:
    kind, body = message
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        return _link(body, kind == RTM_DELLINK)
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        return _address(body, kind == RTM_DELADDR)
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        return _route(body, kind == RTM_DELROUTE)
    return None


def _link(body: memoryview, removed: bool) -> LinkChange:
    _need(body, _IFINFO.size, "ifinfomsg")
    _family, _type, index, flags, _change = _IFINFO.unpack_from(body)
    attrs = _attributes(body[_IFINFO.size :])
    up = not removed and flags & IFF_UP != 0 and flags & IFF_LOWER_UP != 0
    return LinkChange(index, _text(attrs.get(IFLA_IFNAME)), up, removed)


def _address(body: memoryview, removed: bool) -> Optional[AddressChange]:
    _need(body, _IFADDR.size, "ifaddrmsg")
    family, prefixlen, flags, _scope, index = _IFADDR.unpack_from(body)
    if family not in _SIZES:
        return None
    size, longest = _SIZES[family]
    attrs = _attributes(body[_IFADDR.size :])
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None or len(raw) != size or prefixlen > longest:
        raise RemoteProtocolError(f"address message of family {family} without a {size}-byte address")
    extended = attrs.get(IFA_FLAGS)
    if extended is not None and len(extended) == 4:
        flags = struct.unpack("=I", extended)[0]
    return AddressChange(index, ipaddress.ip_address(bytes(raw)).compressed, prefixlen,
                         _text(attrs.get(IFA_LABEL)), removed, flags)


def _route(body: memoryview, removed: bool) -> Optional[RouteChange]:
    _need(body, _RTMSG.size, "rtmsg")
    family, dst_len, _src_len, _tos, table, *_rest = _RTMSG.unpack_from(body)
    if family != AF_INET:
        return None
    attrs = _attributes(body[_RTMSG.size :])
    table_attr = attrs.get(RTA_TABLE)
    if table_attr is not None and len(table_attr) == 4:
        table = struct.unpack("=I", table_attr)[0]
    if table != RT_TABLE_MAIN:
        return None
    gateway = attrs.get(RTA_GATEWAY)
    oif = attrs.get(RTA_OIF)
    return RouteChange(
        dst_len,
        str(ipaddress.IPv4Address(bytes(gateway))) if gateway is not None and len(gateway) == 4 else None,
        struct.unpack("=i", oif)[0] if oif is not None and len(oif) == 4 else None,
        removed,
    )


def _attributes(data: memoryview) -> dict[int, memoryview]:
    """Attribute type → value; the first of a repeated type wins (nested flags masked off)."""
    attrs: dict[int, memoryview] = {}
    at = 0
    while len(data) - at >= _ATTR.size:
        length, kind = _ATTR.unpack_from(data, at)
        if length < _ATTR.size or length > len(data) - at:
            raise RemoteProtocolError(f"netlink attribute of {length} bytes at {at} in {len(data)}")
        attrs.setdefault(kind & 0x3FFF, data[at + _ATTR.size : at + length])
        at += _align(length)
    return attrs


def _text(value: Optional[memoryview]) -> Optional[str]:
    if value is None:
        return None
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


def _need(body: memoryview, size: int, what: str) -> None:
    if len(body) < size:
        raise RemoteProtocolError(f"{what} of {len(body)} bytes, need {size}")


def _align(length: int) -> int:
    return (length + 3) & ~3


# ---- building messages: the tests' and the fuzzer's seeds ------------------------------


def attribute(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    raw = _ATTR.pack(_ATTR.size + len(value), kind) + value
    return raw + bytes(_align(len(raw)) - len(raw))


def message(kind: int, body: bytes) -> bytes:
    """One netlink message around `body` (sequence and port 0, as the kernel's notifications)."""
    raw = _HEADER.pack(_HEADER.size + len(body), kind, 0, 0, 0) + body
    return raw + bytes(_align(len(raw)) - len(raw))


def link_message(index: int, name: str, up: bool, removed: bool = False) -> bytes:
    flags = IFF_UP | IFF_LOWER_UP if up else 0
    body = _IFINFO.pack(0, 1, index, flags, 0) + attribute(IFLA_IFNAME, name.encode() + b"\0")
    return message(RTM_DELLINK if removed else RTM_NEWLINK, body)


def address_message(index: int, address: str, prefixlen: int, label: str, removed: bool = False) -> bytes:
    packed = ipaddress.IPv4Address(address).packed
    body = (_IFADDR.pack(AF_INET, prefixlen, 0, 0, index) + attribute(IFA_ADDRESS, packed)
            + attribute(IFA_LOCAL, packed) + attribute(IFA_LABEL, label.encode() + b"\0"))
    return message(RTM_DELADDR if removed else RTM_NEWADDR, body)


def address6_message(index: int, address: str, prefixlen: int, flags: int = 0, removed: bool = False) -> bytes:
    """As the kernel sends an IPv6 address: IFA_ADDRESS only, no label, the flags in IFA_FLAGS too."""
    body = (_IFADDR.pack(AF_INET6, prefixlen, flags & 0xFF, 0, index)
            + attribute(IFA_ADDRESS, ipaddress.IPv6Address(address).packed) + attribute(IFA_FLAGS, struct.pack("=I", flags)))
    return message(RTM_DELADDR if removed else RTM_NEWADDR, body)


def route_message(dst_len: int, gateway: Optional[str], oif: int, removed: bool = False,
                  table: int = RT_TABLE_MAIN) -> bytes:
    body = _RTMSG.pack(AF_INET, dst_len, 0, 0, table, 3, 0, 1, 0) + attribute(RTA_TABLE, struct.pack("=I", table))
    if gateway is not None:
        body += attribute(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
    body += attribute(RTA_OIF, struct.pack("=i", oif))
    return message(RTM_DELROUTE if removed else RTM_NEWROUTE, body)
