"""A simulated host's own network as rtnetlink tells it, judged by the daemon's rules.

The daemon hears a move or a link outage as netlink messages (`meshvpn.node.netwatch`) and
`meshvpn.node.netchange.NetChanges` decides what they mean: whether the connections of the old
network are lost, and whether the coord link must reconnect at once (its address vanished, the
gateway moved, or it has no connection). The pairs harness tells a node of its changes when the
new network is usable, each as the burst of messages the kernel sends, and does what the rules
say; the daemon acts `NetChangeConfig.debounce` (0.15 s) after a burst's last message, which the
sim leaves out so that its timelines start at the change.
"""

from __future__ import annotations

from typing import Optional

from meshvpn.node.netchange import NetChanges, NetworkChanged
from meshvpn.node.netlink import AddressChange, Change, LinkChange, RouteChange

INTERFACE = (2, "eth0")
"""The host's one interface: its index and name."""
PREFIX = 24


def gateway_of(address: str) -> str:
    """The LAN's router: `.1` of the host's /24, as the sites number them."""
    return address.rsplit(".", 1)[0] + ".1"


class HostNetwork:
    """What the daemon's netlink watcher knows of one simulated host, and its verdict on each burst."""

    def __init__(self, address: str) -> None:
        index, name = INTERFACE
        self.changes = NetChanges(ignore=("mesh0",))
        self.changes.seed({index: name}, [(name, address)], gateway_of(address))
        self.address = address

    def moved(self, address: str, coord_local: Optional[str], now: float) -> NetworkChanged:
        """The host left its LAN and came up on another, with `address`: the kernel's burst."""
        index, name = INTERFACE
        old, self.address = self.address, address
        return self._burst([
            AddressChange(index, old, PREFIX, name, removed=True),
            LinkChange(index, name, up=False),
            LinkChange(index, name, up=True),
            AddressChange(index, address, PREFIX, name),
            RouteChange(0, gateway_of(address), index),
        ], coord_local, now)

    def link_back(self, coord_local: Optional[str], now: float) -> NetworkChanged:
        """The link went down and came back with its address and routes."""
        index, name = INTERFACE
        return self._burst([LinkChange(index, name, up=False), LinkChange(index, name, up=True)], coord_local, now)

    def _burst(self, changes: list[Change], coord_local: Optional[str], now: float) -> NetworkChanged:
        self.changes.coord_local = coord_local
        for change in changes:
            self.changes.observe(change, now)
        self.changes.handle_timer(self.changes.get_timer())
        (action,) = self.changes.next_actions()
        return action
