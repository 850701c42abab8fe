"""The inner destinations a node accepts from its peers: its own overlay address, the overlay
network's broadcast address, 255.255.255.255, 224.0.0.1 (in an IPv6 overlay ff02::1) and the
multicast groups it joined.

Why: a decrypted packet goes to the TUN, and the kernel delivers or forwards it by its
destination.  A peer that could send to the node's LAN, a docker bridge or another peer through
the tunnel would use the node as a router into places the mesh never offered.  The data path
(``meshvpn.node.datapath.fastpath.open_run``) therefore keeps only packets whose destination is one of
:meth:`LocalDestinations.accepted`: a few raw addresses back to back, the node's own first
(the common case costs one comparison); the rest count as ``not_for_me``.  This is the
destination rule of ``meshvpn.lan.packets.inbound`` in the form the hot loop takes; the node's
multicast membership (``meshvpn.node.lanparty``) calls :meth:`LocalDestinations.join` and
:meth:`LocalDestinations.leave` as its groups change.  Sans-IO.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from meshvpn.lan.packets import ALL_HOSTS, ALL_NODES6, LIMITED_BROADCAST

_LINK_WIDE = {4: tuple(ipaddress.IPv4Address(a).packed for a in (LIMITED_BROADCAST, ALL_HOSTS)),
              6: (ipaddress.IPv6Address(ALL_NODES6).packed,)}
"""255.255.255.255 and 224.0.0.1, or IPv6's all-nodes ff02::1: never forwarded by the kernel, always
this node's to take (of its overlay's family)."""


class LocalDestinations:
    """The addresses packets from peers may be sent to, packed per address length."""

    def __init__(self) -> None:
        self._own: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
        self._broadcast: Optional[ipaddress.IPv4Address] = None
        self._groups: dict[bytes, None] = {}
        self._packed: dict[int, bytes] = {4: b"", 16: b""}

    def set_overlay(self, address: str, network: str) -> None:
        """The coord registered us as ``address`` in ``network`` (a CIDR)."""
        self._own = ipaddress.ip_address(address)
        net = ipaddress.ip_network(network, strict=False)
        self._broadcast = net.broadcast_address if net.version == 4 and net.prefixlen < 31 else None
        self._pack()

    def join(self, group: str) -> None:
        """Accept packets to the multicast ``group`` too (the hook for joined groups)."""
        address = ipaddress.ip_address(group)
        if not address.is_multicast:
            raise ValueError(f"{group} is not a multicast address")
        self._groups[address.packed] = None
        self._pack()

    def leave(self, group: str) -> None:
        """Stop accepting packets to the multicast ``group``."""
        self._groups.pop(ipaddress.ip_address(group).packed, None)
        self._pack()

    def accepted(self, length: int) -> bytes:
        """Accepted destinations of ``length`` bytes (4 or 16) back to back, ours first; empty before registration."""
        return self._packed.get(length, b"")

    def _pack(self) -> None:
        if self._own is None:
            self._packed = {4: b"", 16: b""}
            return
        addresses = [self._own.packed]
        if self._broadcast is not None:
            addresses.append(self._broadcast.packed)
        addresses += _LINK_WIDE[self._own.version]
        addresses += [group for group in self._groups if group not in addresses]
        self._packed = {size: b"".join(a for a in addresses if len(a) == size) for size in (4, 16)}
