"""Broadcast, multicast and access rules of one node: the cores of `meshvpn.lan`, composed.

Why one object: the data path hands over only what its hot loop does not do itself (a packet
from the TUN with no peer behind its destination, and, while rules are active or a run held a
broadcast or multicast, what arrives from peers), so the unicast path costs nothing more. This
object decides the rest and keeps the counters for ``meshvpn status`` and metrics.

* **Out**: IGMP from the kernel (MLD in an IPv6 overlay) goes to the membership table (the node is
  its TUN's querier), and IPv6's Neighbor Discovery stays on the node; a broadcast or multicast
  packet this node's applications sent goes, under the ``lan.fanout`` budget, to every online
  peer, or for a group to the peers that joined it (`PeerInfo.groups`, `PeerInfo.groups6`).
  Only packets sent from this node's overlay address are fanned out, so nothing loops.
* **In**: a packet from a peer passes the access filter (`meshvpn.lan.access`), with the rules
  of `registered` or of a later `access` message and the peer map's names.
* **Groups**: a change of this node's groups updates the destinations the data path accepts
  and, when the coord takes them, goes to the coord in a `groups` message.

Sans-IO: ``now`` is an argument; outputs (`SendCoord`, `WriteTun`) are drained by the node.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Iterable, Optional

from meshvpn.config import FanoutConfig
from meshvpn.control import messages as m
from meshvpn.lan import icmperrors, igmp, mld, packets
from meshvpn.lan.access import AccessFilter
from meshvpn.lan.fanout import Fanout
from meshvpn.lan.groups import LocalGroups, PeerGroups, recipients
from meshvpn.lan.packets import BadPacket, Cast, Drop, Overlay
from meshvpn.lan.packets6 import PROTO_ICMPV6, parse_any
from meshvpn.lan.sources import SourceNames
from meshvpn.node import events as ev
from meshvpn.node.destinations import LocalDestinations
from meshvpn.node.peers import Peer, PeerTable, named_keys

_PEER_CHANGES = (m.PeerMap, m.PeerUpdate, m.PeerRemove, m.PeerDelta)
_KIND = {Cast.BROADCAST: "broadcast", Cast.LIMITED_BROADCAST: "broadcast", Cast.MULTICAST: "multicast"}


def _address(address: str) -> Optional[int]:
    """A peer's overlay address of either family as the access rules compare it."""
    try:
        return int(ipaddress.ip_address(address))
    except ValueError:
        return None


def _dotted(groups: Iterable[int]) -> list[str]:
    """Groups as text: a group of an IPv4 overlay is below 2**32, one of an IPv6 overlay (ff00::/8) far above."""
    return [str(ipaddress.ip_address(group)) for group in sorted(groups)]


class LanParty:
    """What one node does with broadcast, multicast and access rules (see the module docstring)."""

    def __init__(self, limits: FanoutConfig, destinations: LocalDestinations) -> None:
        self.limits = limits
        self.destinations = destinations
        self.overlay: Optional[Overlay] = None
        """Set once the coord registered this node (IPv4 or IPv6); nothing is fanned out before."""
        self.local: Optional[LocalGroups] = None
        self.fanout: Optional[Fanout] = None
        self.peer_groups = PeerGroups()
        self.access = AccessFilter()
        self.sent: Counter[str] = Counter()
        """Packets fanned out, by kind (broadcast, multicast), and ``copies`` sealed for them."""
        self.received: Counter[str] = Counter()
        """Broadcast and multicast packets from peers written to the TUN, by kind."""
        self.dropped: Counter[str] = Counter()
        """Outbound packets not fanned out, by `meshvpn.lan.packets.Drop` value (the budget's are the fanout's)."""
        self.touched = False
        """A TUN packet changed the membership: the shell must drain outputs and re-arm the timer."""
        self._names = SourceNames()
        """Each peer's name and overlay address, which the rules' sources are resolved with."""
        self._rules: Optional[m.AccessInfo] = None
        self._coord_takes_groups = False
        self._joined: frozenset[int] = frozenset()
        self._out: list[ev.Output] = []

    # ---- control -----------------------------------------------------------------------

    def coord_message(self, msg: m.Message, peers: PeerTable, now: float) -> None:
        """After the core took `msg`: registration, live rules and peers' groups."""
        if isinstance(msg, m.Registered):
            self._registered(msg, now)
            self._configure_access()
        elif isinstance(msg, m.Access):
            self._rules = msg.access
            self._configure_access()
        elif isinstance(msg, _PEER_CHANGES):
            moved = self._follow_peers(peers, named_keys(msg))
            if self._rules is not None and any(name in rule.sources for rule in self._rules.rules for name in moved):
                self._configure_access()  # else the rules' sources are what they were, and so are its flows

    def _registered(self, msg: m.Registered, now: float) -> None:
        try:
            self.overlay = Overlay.of(msg.address, msg.network.cidr)
        except ValueError:
            pass
        if self.overlay is not None and self.local is None:
            self.local = LocalGroups(now, mld.query if self.overlay.version == 6 else igmp.query)
            self.fanout = Fanout(self.limits, now)
        self._rules = msg.access
        self._coord_takes_groups = bool(msg.lan_party)
        if self._coord_takes_groups and self._joined:
            self._out.append(ev.SendCoord(self._groups_message()))

    def _groups_message(self) -> m.Groups:
        """This node's groups for the coord: IPv6 ones in `groups6`, which an older coord ignores."""
        if self.overlay is not None and self.overlay.version == 6:
            return m.Groups((), tuple(_dotted(self._joined)))
        return m.Groups(tuple(_dotted(self._joined)))

    def _follow_peers(self, peers: PeerTable, keys: Optional[tuple[bytes, ...]]) -> set[str]:
        """Rules name peers, and peers' groups come with their info: both follow the peer map, one
        changed peer at a time (`named_keys`; None: every peer and every one gone). Returns the
        names whose address moved, which the rules may name."""
        if keys is None:
            gone = {*self._names.keys(), *self.peer_groups.peers()}.difference(peers.by_key)
            keys = (*peers.by_key, *gone)
        moved: set[str] = set()
        for key in keys:
            peer = peers.by_key.get(key)
            info = peer.info if peer is not None else None
            groups = () if info is None else (*(info.groups or ()), *(info.groups6 or ()))
            self.peer_groups.set(key, {_address(group) for group in groups} - {None})
            address = None if info is None else _address(info.address)
            moved |= self._names.set(key, None if address is None else (peer.name, address))
        return moved

    def _configure_access(self) -> None:
        broadcast = self.overlay.broadcast if self.overlay is not None else packets.LIMITED_BROADCAST
        self.access.configure(self._rules, self._names.addresses, broadcast)

    # ---- the data path -----------------------------------------------------------------

    def from_tun(self, packet: bytes, peers: PeerTable, now: float) -> Optional[list[Peer]]:
        """The peers to seal a copy of a TUN packet for that no peer's address matched; None when
        it is no broadcast, multicast or IGMP packet (the data path counts it as before)."""
        if self.overlay is None or not packet or packet[0] >> 4 != self.overlay.version:
            return None
        try:
            header = parse_any(packet)
            if header.proto == packets.PROTO_IGMP and header.version == 4:
                self._membership(igmp.parse_report(packet), now)
                return []
            if header.proto == PROTO_ICMPV6 and header.sport in mld.CONTROL and header.version == 6:
                self._membership(mld.parse_report(packet), now)  # ND and MLD never leave the node
                return []
        except BadPacket:
            self.dropped[Drop.MALFORMED.value] += 1
            return []
        cast = packets.outbound(header, self.overlay)
        if isinstance(cast, Drop):
            self.dropped[cast.value] += 1
            return []
        if cast is Cast.UNICAST or cast is Cast.SELF:
            return None
        online = [peer.key for peer in peers if peer.info.online]
        chosen = self.fanout.admit(len(packet), recipients(cast, header.dst, online, self.peer_groups), now)
        if chosen:
            self.sent[_KIND[cast]] += 1
            self.sent["copies"] += len(chosen)
        return [peers.by_key[key] for key in chosen]

    def track(self, packet, start: int, end: int, now: float) -> None:
        """Note a packet this node sends (the data path calls this for each while rules are
        active), so the access filter lets its replies in."""
        try:
            self.access.outbound(parse_any(memoryview(packet)[start:end]), now)
        except BadPacket:
            pass

    def inbound(self, packet: memoryview, now: float) -> bool:
        """Whether to write a packet a peer sent (already checked for source and destination) to the TUN."""
        try:
            header = parse_any(packet)
        except BadPacket:
            self.dropped[Drop.MALFORMED.value] += 1
            return False
        ours = self.overlay is not None and header.version == self.overlay.version
        kind = _KIND.get(packets.classify(header, self.overlay)) if ours else None
        if kind is not None and header.ttl == 0:
            self.dropped[Drop.TTL.value] += 1
            return False
        quote = icmperrors.quoted(packet, header) if self.access.active else None
        if not self.access.inbound(header, now, quote):
            return False
        if kind is not None:
            self.received[kind] += 1
        return True

    def _membership(self, report: Optional[igmp.Report], now: float) -> None:
        if report is not None and self.local is not None:
            self.local.report(report, now)
            self._follow_groups()
            self.touched = True

    def _follow_groups(self) -> None:
        joined = self.local.take_change()
        if joined is None:
            return
        for group in joined - self._joined:
            self.destinations.join(str(ipaddress.ip_address(group)))
        for group in self._joined - joined:
            self.destinations.leave(str(ipaddress.ip_address(group)))
        self._joined = joined
        if self._coord_takes_groups:
            self._out.append(ev.SendCoord(self._groups_message()))

    # ---- timers and outputs ----------------------------------------------------------

    def get_timer(self) -> Optional[float]:
        timers = (self.local.get_timer() if self.local is not None else None, self.access.get_timer())
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Queries due go to the TUN; groups expire; the filter forgets old flows."""
        self.access.handle_timer(now)
        if self.local is None:
            return
        self.local.handle_timer(now)
        queries = self.local.packets_to_send(now)
        if queries:
            self._out.append(ev.WriteTun(queries))
        self._follow_groups()

    def outputs(self) -> list[ev.Output]:
        out, self._out = self._out, []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def add_status(self, status: dict, peers: PeerTable) -> None:
        """Into ``meshvpn status``: this node's `lan` and each peer's `groups`."""
        status["self"]["lan"] = self.status()
        groups = {peer.name: _dotted(self.peer_groups.of(peer.key)) for peer in peers}
        for entry in status["peers"]:
            entry["groups"] = groups.get(entry["name"], [])

    def status(self) -> dict:
        """Groups joined, packets fanned out and received, drops by reason; rules in force."""
        dropped = Counter(self.dropped)
        if self.fanout is not None:
            dropped.update(self.fanout.dropped)
        dropped.update({f"access {reason}": count for reason, count in self.access.dropped.items()})
        return {
            "groups": _dotted(self._joined),
            "sent": {"broadcast": self.sent["broadcast"], "multicast": self.sent["multicast"],
                     "copies": self.sent["copies"]},
            "received": {"broadcast": self.received["broadcast"], "multicast": self.received["multicast"]},
            "dropped": dict(sorted(dropped.items())),
            "access_rules": None if self._rules is None else len(self._rules.rules),
        }
