"""What a change of the host's own network means for the node (sans-IO; the shell is ``netwatch``).

The rules, applied to each :mod:`meshvpn.node.netlink` change:

* Changes on an ignored interface (the node's own TUN) never matter: assigning the overlay
  address would otherwise look like a network change.
* A usable IPv4 address (not loopback, not link-local) added or removed matters.
* An IPv6 address beyond the link (not loopback, link-local or multicast) matters when it comes,
  once duplicate address detection let it be used, when it goes, and when it turns unusable
  (deprecated); the kernel's repeats of a known one (a router advertisement renewing its
  lifetime) do not. The node announces these addresses to its peers (`meshvpn.node.ipv6`).
* A default route of the main table added or removed matters.
* A link that goes down, or comes up after being seen down (or appears for the first time),
  matters; flag changes that leave it as it was do not.
* A kernel overrun (notifications lost) matters: anything may have changed.

A change that matters arms the debounce: the node acts ``debounce`` seconds after the last
change of a burst (moving to another network is several messages: address gone, link down,
link up, address added, default route), and at the latest ``settle_max`` after the first.
It then gets one :class:`NetworkChanged`: re-discover endpoints, re-probe every peer, and
reconnect the coord link if the address it came from vanished or the default gateway is a new one
(or if it is down: the new network may be the one it was waiting for); if instead a link came up
or a default route came back under the link's connection, the link checks that it carries again
(`meshvpn.node.tcpresume`: TCP backed off through the outage), and so do the TCP paths and relay
streams whenever no connection was lost (``back``), whether or not the coord link had one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional

from meshvpn.node.netlink import IFA_F_UNUSABLE, AddressChange, Change, LinkChange, RouteChange


@dataclass(frozen=True)
class NetChangeConfig:
    """How long a burst of changes is gathered before the node acts."""

    debounce: float = 0.15
    """Quiet time after the last change that matters."""
    settle_max: float = 0.6
    """Act at the latest this long after the first change of a burst, even if changes go on."""


@dataclass(frozen=True)
class NetworkChanged:
    """The host's network changed in a way that matters: what the shell must redo."""

    reasons: tuple[str, ...]
    """What happened, in order, for the log (``eth0 down``, ``10.1.0.11 removed from eth0``...)."""
    vanished: frozenset[str]
    """Addresses removed in the burst and not back at its end."""
    connections_lost: bool
    """An address vanished or the default gateway changed: TCP connections of the old network are dead."""
    reconnect_coord: bool
    """The coord link's local address vanished or the default gateway changed (its TCP connection is dead),
    or there is no connection (a reconnect waiting out its backoff should try the new network now)."""
    first_at: float
    """When the first change of the burst was seen (the node's clock)."""
    resumed: bool = False
    """A link came up or a default route was added, and the coord link keeps its connection: what
    it wrote while the network was gone waits for TCP's backed-off retransmission."""
    back: bool = False
    """A link came up or a default route was added, and no connection was lost: every standing TCP
    connection (TCP paths, relay streams; the coord link's is `resumed`) may wait likewise."""


class NetChanges:
    """Gathers netlink changes into one :class:`NetworkChanged` per burst."""

    def __init__(self, ignore: Iterable[str], config: Optional[NetChangeConfig] = None) -> None:
        self.config = config or NetChangeConfig()
        self.ignore = set(ignore)
        """Interface names whose changes never matter (the TUN)."""
        self.coord_local: Optional[str] = None
        """The local address of the coord link's connection, when it has one."""
        self._names: dict[int, str] = {}
        self._up: dict[int, bool] = {}
        self._addresses: dict[str, int] = {}
        self._usable6: dict[str, bool] = {}
        """Whether each known IPv6 address may be used (announced), as last heard."""
        self._gateway: Optional[str] = None
        self._reasons: list[str] = []
        self._removed: set[str] = set()
        self._gateway_moved = False
        self._back = False
        """A link came up or a default route was added in this burst."""
        self._first: Optional[float] = None
        self._last: Optional[float] = None
        self._actions: list[NetworkChanged] = []

    def seed(self, names: dict[int, str], addresses: Iterable[tuple[str, str]], gateway: Optional[str],
             addresses6: Iterable[tuple[str, str, int]] = ()) -> None:
        """What the host had when watching began: interface names by index, (interface, address), the
        gateway, and (interface, IPv6 address, IFA_F_* flags)."""
        self._names.update(names)
        by_name = {name: index for index, name in names.items()}
        for interface, address in addresses:
            self._addresses[address] = by_name.get(interface, -1)
        for interface, address, flags in addresses6:
            self._addresses[address] = by_name.get(interface, -1)
            self._usable6[address] = not flags & IFA_F_UNUSABLE
        self._gateway = gateway

    # ---- inbox --------------------------------------------------------------------

    def observe(self, change: Change, now: float) -> None:
        """One decoded netlink change."""
        if isinstance(change, LinkChange):
            reason = self._link(change)
        elif isinstance(change, AddressChange):
            reason = self._address(change)
        else:
            reason = self._route(change)
        if reason is not None:
            self._matters(reason, now)

    def overrun(self, now: float) -> None:
        """Notifications were lost: treat it as a change that matters."""
        self._matters("netlink overrun", now)

    def handle_timer(self, now: float) -> None:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        vanished = frozenset(a for a in self._removed if a not in self._addresses)
        lost = self._gateway_moved or bool(vanished)
        reconnect = self._gateway_moved or self.coord_local is None or self.coord_local in vanished
        self._actions.append(NetworkChanged(tuple(self._reasons), vanished, lost, reconnect, self._first,
                                            resumed=self._back and not reconnect, back=self._back and not lost))
        self._reasons, self._removed, self._gateway_moved, self._back = [], set(), False, False
        self._first = self._last = None

    # ---- outbox -------------------------------------------------------------------

    def get_timer(self) -> Optional[float]:
        if self._first is None:
            return None
        return min(self._last + self.config.debounce, self._first + self.config.settle_max)

    def next_actions(self) -> list[NetworkChanged]:
        out, self._actions = self._actions, []
        return out

    # ---- rules ----------------------------------------------------------------------

    def _matters(self, reason: str, now: float) -> None:
        self._reasons.append(reason)
        if self._first is None:
            self._first = now
        self._last = now

    def _name(self, index: Optional[int]) -> str:
        return self._names.get(index, f"#{index}") if index is not None else "?"

    def _link(self, change: LinkChange) -> Optional[str]:
        known = change.index in self._names
        if change.name is not None:
            self._names[change.index] = change.name
        name = self._name(change.index)
        if name in self.ignore:
            return None
        before = self._up.get(change.index)
        self._up[change.index] = change.up
        if change.removed:
            self._names.pop(change.index, None)
            self._up.pop(change.index, None)
            return f"{name} removed"
        if before == change.up or (before is None and change.up and known):
            return None
        self._back |= change.up
        return f"{name} {'up' if change.up else 'down'}"

    def _address(self, change: AddressChange) -> Optional[str]:
        if change.label is not None and change.index not in self._names:
            self._names[change.index] = change.label.split(":", 1)[0]
        name = self._name(change.index)
        address = ipaddress.ip_address(change.address)
        if (name in self.ignore or address.is_loopback or address.is_link_local or address.is_unspecified
                or address.is_multicast):
            return None
        if change.removed:
            self._addresses.pop(change.address, None)
            self._usable6.pop(change.address, None)
            self._removed.add(change.address)
            return f"{change.address} removed from {name}"
        self._addresses[change.address] = change.index
        if address.version == 6:
            return self._address6(change, name)
        return f"{change.address} added on {name}"

    def _address6(self, change: AddressChange, name: str) -> Optional[str]:
        """A new or changed IPv6 address matters when it became usable or stopped being so."""
        usable = not change.flags & IFA_F_UNUSABLE
        before = self._usable6.get(change.address)
        self._usable6[change.address] = usable
        if before == usable or (before is None and not usable):
            return None
        return f"{change.address} {'added on' if usable else 'unusable on'} {name}"

    def _route(self, change: RouteChange) -> Optional[str]:
        name = self._name(change.oif)
        if not change.default or name in self.ignore:
            return None
        if change.removed:
            return f"default route via {change.gateway or name} removed"
        if change.gateway is not None and self._gateway is not None and change.gateway != self._gateway:
            self._gateway_moved = True
        if change.gateway is not None:
            self._gateway = change.gateway
        self._back = True
        return f"default route via {change.gateway or name}"
