"""Multicast membership: the groups this node's applications joined, and the groups peers joined.

`LocalGroups` is the querier on the node's TUN, as the router of a LAN (RFC 3376 section 6,
RFC 2236 section 3; for IPv6, MLD's RFC 3810 section 7 with the same timers): a report keeps a group for the Group Membership Interval (260 s); a leave
cuts that to the Last Member Query Time (2 s) and sends group-specific queries, so a group with
another member left is reported again; general queries go out at start-up (twice, 31.25 s
apart) and then every 125 s, so the kernel repeats its reports. `take_change()` hands the new
set to tell peers, once per change.

`PeerGroups` holds what each peer last said it joined. `recipients` gives the peers one packet
goes to: every peer for a broadcast or all-hosts, a group's members for multicast; never the
peer it came from, and never this node (packets received from peers are not fanned out again).
Groups are addresses as ints: 32-bit in an IPv4 overlay, 128-bit in an IPv6 one.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable

from meshvpn.lan import igmp
from meshvpn.lan.packets import ALL_HOSTS, ALL_NODES6, Cast

Peer = Hashable


class LocalGroups:
    """Groups joined on this node's overlay interface, learned from its IGMP (or MLD) reports."""

    def __init__(self, now: float, query: Callable[[int], bytes] = igmp.query):
        self._query = query
        """Builds the query for a group (0: general): `igmp.query`, or `meshvpn.lan.mld.query` for IPv6."""
        self._expires: dict[int, float] = {}
        self._queries: list[tuple[float, int]] = [(now, 0)]
        """Queries due, as (when, group); group 0 is a general query."""
        self._startup_left = igmp.STARTUP_QUERY_COUNT - 1
        self._announced: frozenset[int] = frozenset()

    @property
    def groups(self) -> frozenset[int]:
        return frozenset(self._expires)

    def __contains__(self, group: object) -> bool:
        return group in self._expires

    def report(self, report: igmp.Report, now: float) -> None:
        """Take a report or leave that the kernel sent out of the TUN."""
        for group in report.joined:
            self._expires[group] = now + igmp.GROUP_MEMBERSHIP_INTERVAL
        for group in report.left & self._expires.keys():
            self._expires[group] = min(self._expires[group], now + igmp.LAST_MEMBER_QUERY_TIME)
            for n in range(igmp.ROBUSTNESS):
                self._queries.append((now + n * igmp.LAST_MEMBER_QUERY_INTERVAL, group))

    def handle_timer(self, now: float) -> None:
        for group, expires in list(self._expires.items()):
            if expires <= now:
                del self._expires[group]

    def get_timer(self) -> float | None:
        times = [when for when, _ in self._queries] + list(self._expires.values())
        return min(times, default=None)

    def packets_to_send(self, now: float) -> list[bytes]:
        """Queries due by `now`, as IP packets to write to the TUN."""
        due = [group for when, group in self._queries if when <= now]
        self._queries = [(when, group) for when, group in self._queries if when > now]
        if 0 in due:
            interval = igmp.STARTUP_QUERY_INTERVAL if self._startup_left > 0 else igmp.QUERY_INTERVAL
            self._startup_left -= 1
            self._queries.append((now + interval, 0))
        return [self._query(group) for group in due if group == 0 or group in self._expires]

    def take_change(self) -> frozenset[int] | None:
        """The joined set if it changed since the last call, else None."""
        if self._announced == self.groups:
            return None
        self._announced = self.groups
        return self._announced


class PeerGroups:
    """The groups each peer said it joined."""

    def __init__(self) -> None:
        self._by_peer: dict[Peer, frozenset[int]] = {}
        self._by_group: dict[int, set[Peer]] = {}

    def set(self, peer: Peer, groups: Iterable[int]) -> None:
        """Replace what `peer` joined with `groups` (its whole current set)."""
        self.remove(peer)
        joined = frozenset(groups)
        if joined:
            self._by_peer[peer] = joined
        for group in joined:
            self._by_group.setdefault(group, set()).add(peer)

    def remove(self, peer: Peer) -> None:
        for group in self._by_peer.pop(peer, ()):
            members = self._by_group[group]
            members.discard(peer)
            if not members:
                del self._by_group[group]

    def peers(self) -> list[Peer]:
        """The peers that joined some group."""
        return list(self._by_peer)

    def of(self, peer: Peer) -> frozenset[int]:
        return self._by_peer.get(peer, frozenset())

    def members(self, group: int) -> frozenset[Peer]:
        return frozenset(self._by_group.get(group, ()))


def recipients(cast: Cast, dst: int, peers: Iterable[Peer], groups: PeerGroups,
               origin: Peer | None = None) -> list[Peer]:
    """The peers a broadcast or multicast packet goes to, in the order of `peers`, never `origin`."""
    if cast in (Cast.BROADCAST, Cast.LIMITED_BROADCAST) or (cast is Cast.MULTICAST and dst in (ALL_HOSTS, ALL_NODES6)):
        return [peer for peer in peers if peer != origin]
    if cast is Cast.MULTICAST:
        members = groups.members(dst)
        return [peer for peer in peers if peer in members and peer != origin]
    return []
