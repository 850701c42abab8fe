"""The peer table: everything the node keeps per peer, indexed the ways the data path looks.

The data path finds a peer three ways, each one dict lookup: by the raw bytes of an
overlay destination address (TUN → peer), by the receiver index of a transport
message (UDP → session), and by static public key (handshakes, probes, the coord).
The core owns the table and keeps the indexes consistent; the data path only reads
it and bumps counters.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter, deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import TYPE_CHECKING, Iterator, Optional, TypeVar

from meshvpn.control.messages import Message, PeerDelta, PeerInfo, PeerMap, PeerRemove, PeerUpdate
from meshvpn.keys import encode_key
from meshvpn.node.pathfinder import Path, PathFinder
from meshvpn.node.pathlog import PathLog
from meshvpn.node.peernames import SortedNames
from meshvpn.node.pings import Pings
from meshvpn.node.transports import MAIN_SOCKET, Transport
from meshvpn.session import KeyRing
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.cookie import CookieJar
    from meshvpn.node.handshakes import Attempt
    from meshvpn.node.probes import ProbeAllowance, SeenStamps
    from meshvpn.node.tcp.core import TcpCampaign
    from meshvpn.node.tcp.prediction import PredictionState
    from meshvpn.node.traversal import PeerTraversal

T = TypeVar("T")

PENDING_PACKETS = 16
"""Packets held per peer while its handshake or path is being set up; older ones drop."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where the data path sends a peer's messages: an endpoint, an optional prefix and the transport.

    Direct and LAN paths send the message as is; the relay path sends it to the relay
    with a relay envelope header (``prefix``) naming the peer, so the relay plugs in as
    one more kind of route without the data path knowing about it. The node sets the
    ``transport`` whenever a path or a transport changes; the shell sends with one ``match`` on it.
    """

    path: Path
    """The path this route realises (its kind is what status shows)."""
    endpoint: Endpoint
    """UDP destination of every message."""
    prefix: bytes = b""
    """Bytes written before each message (the relay envelope header, or nothing)."""
    transport: Transport = MAIN_SOCKET
    """What carries the messages: the main UDP socket, a pinned socket, a TCP stream or a TURN channel."""


@dataclass
class PeerCounters:
    """Traffic and drops of one peer, for ``meshvpn status``."""

    rx_bytes: int = 0
    """Inner (plaintext) bytes delivered to the TUN."""
    tx_bytes: int = 0
    """Inner bytes sealed and sent."""
    rx_packets: int = 0
    tx_packets: int = 0
    drops: Counter = field(default_factory=Counter)
    """Dropped packets by reason ("spoofed", "no session", "queue full", ...)."""
    handshakes: int = 0
    """Sessions established with the peer, one per completed handshake."""
    rekeys: int = 0
    """Of those, the ones that replaced a session still in use."""


@dataclass(eq=False)
class Peer:
    """One peer: identity from the coord, path state, sessions, counters, queued packets, punches and pings.

    Everything the node keeps about one peer hangs off this object, so removing the peer from the
    table forgets it in one step: the machines that keep per-peer state (handshakes, traversal,
    probes, TCP punching, TURN) keep it here, through a `PeerSlot` each. The TCP and TURN machines
    hold connections and channels as well, which they close when the peer departs
    (``NodeCore.departing``), before it leaves the table.
    """

    key: bytes
    """Static public key: the peer's identity."""
    info: PeerInfo
    """The coord's latest description (name, overlay address, endpoints)."""
    paths: PathFinder
    """Per-peer path selection (lan > direct > relay)."""
    overlay: bytes = b""
    """Raw overlay address (4 or 16 bytes): the key of the TUN-side lookup."""
    ring: KeyRing = field(default_factory=KeyRing)
    """Transport sessions; ``ring.current`` seals."""
    route: Optional[Route] = None
    """Where to send right now; None while no path is known."""
    counters: PeerCounters = field(default_factory=PeerCounters)
    last_handshake: Optional[float] = None
    """When the latest session was established (monotonic)."""
    pending: deque = field(default_factory=lambda: deque(maxlen=PENDING_PACKETS))
    """Inner packets waiting for a session and a route."""
    last_rx: float = 0.0
    """When authenticated traffic last arrived straight from ``last_rx_src`` (set per batch)."""
    last_rx_src: Optional[Endpoint] = None
    last_relay_rx: float = 0.0
    """When authenticated traffic last arrived from this peer through a relay (set per batch)."""
    last_relay_src: Optional[Endpoint] = None
    """The relay that traffic came through."""
    last_tx: float = 0.0
    """When the data path last sealed a packet for this peer."""
    synced_rx: float = 0.0
    """``last_rx`` as last reported to the path finder."""
    punch_requested_at: float = float("-inf")
    """When we last asked the coord to make this peer punch towards us."""
    punches_due: list = field(default_factory=list)
    """When the coord's synchronised punches towards this peer are due (its ``punch.at``)."""
    pings: Pings = field(default_factory=Pings)
    """``meshvpn ping`` probes not answered yet, with the route each went out on."""
    path_log: PathLog = field(default_factory=PathLog)
    """The recent path changes, with reasons and times, for ``meshvpn status``."""
    handshake: Optional[Attempt] = None
    """Our handshake in flight, if any (the handshake manager's ``attempts``)."""
    cookie: Optional[CookieJar] = None
    """The latest cookie the peer gave us under load (the handshake manager's ``cookies``)."""
    traversal: Optional[PeerTraversal] = None
    """Its NAT as reported, our re-samples towards it, birthday windows (the traversal's)."""
    probe_allowance: Optional[ProbeAllowance] = None
    """The probes and addresses we may still probe for it (the probe budget's)."""
    probe_key: Optional[bytes] = None
    """The box key of probes to and from it, computed once (the probe codec's)."""
    probe_sent: Optional[int] = None
    """The newest stamp of our probes to it (the probe codec's)."""
    probe_seen: Optional[SeenStamps] = None
    """The stamps of its probes taken, so replays are refused (the probe codec's)."""
    tcp: Optional[TcpCampaign] = None
    """TCP punching towards it: the campaign, its connections and a punched path (the TCP machine's)."""
    tcp_prediction: Optional[PredictionState] = None
    """Our TCP port samples for it and its sample we connected above (TCP port prediction's)."""
    turn_relayed: Optional[tuple[Endpoint, ...]] = None
    """Its TURN relayed addresses, which give it a TURN route (the TURN machine's)."""
    order: int = 0
    """When it joined the table, among the peers there (the table's order, which the timer keeps)."""
    indexes: set[int] = field(default_factory=set)
    """Its entries in ``PeerTable.by_index`` (sessions, a handshake in flight), so leaving frees only its own."""

    def __post_init__(self) -> None:
        self.overlay = ipaddress.ip_address(self.info.address).packed

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def address(self) -> str:
        return self.info.address

    @property
    def key_text(self) -> str:
        return encode_key(self.key)


class PeerSlot(MutableMapping[bytes, T]):
    """One machine's per-peer state by peer key, kept on the peers themselves (``Peer.<name>``).

    The machine keeps its mapping (``attempts[key]``, ``get``, ``pop``, iteration) and its own
    tests, which give it a plain dict; the node core gives it a slot, so the state lives on the
    peer and leaves with it. A key with no peer in the table has nowhere to keep state: a write
    for it is dropped, as the peer's removal would have dropped it. The slot remembers which
    peers it wrote, so going through its states costs as many as there are, not the whole table.
    """

    def __init__(self, peers: PeerTable, name: str) -> None:
        self._peers = peers
        self._name = name
        self._held: dict[Peer, None] = {}
        """The peers this slot wrote a state on (some may have had it deleted since); a peer that
        leaves the table leaves here too."""
        peers.slots.append(self._held)

    def __getitem__(self, key: bytes) -> T:
        peer = self._peers.by_key.get(key)
        value = None if peer is None else getattr(peer, self._name)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: T) -> None:
        peer = self._peers.by_key.get(key)
        if peer is not None:
            setattr(peer, self._name, value)
            self._held[peer] = None

    def __delitem__(self, key: bytes) -> None:
        self[key]  # KeyError when there is nothing to delete
        peer = self._peers.by_key[key]
        setattr(peer, self._name, None)
        self._held.pop(peer, None)

    def __iter__(self) -> Iterator[bytes]:
        return iter([key for key, _ in self.items()])

    def __len__(self) -> int:
        return len(self.items())

    def items(self) -> list[tuple[bytes, T]]:  # type: ignore[override]
        """(key, state) of every peer with state in the table's order, as a list: safe to change while read."""
        name = self._name
        for peer in [peer for peer in self._held if getattr(peer, name) is None]:
            del self._held[peer]
        return [(peer.key, getattr(peer, name)) for peer in sorted(self._held, key=attrgetter("order"))]

    def values(self) -> list[T]:  # type: ignore[override]
        return [value for _, value in self.items()]


def named_keys(msg: Message) -> Optional[tuple[bytes, ...]]:
    """The keys of the peers a coord message (made `PeerTable.completed`) may change, so who follows
    the peer map looks at those and not at every peer: None for all of them (a whole ``peer_map``),
    () for none (a part of a map that is not its last, which the core only collects, or another message)."""
    if isinstance(msg, PeerMap):
        return None if msg.part is None or msg.last else ()
    if isinstance(msg, PeerUpdate):
        return (msg.peer.key,)
    if isinstance(msg, PeerRemove):
        return (msg.key,)
    if isinstance(msg, PeerDelta):
        return msg.removed + tuple(info.key for info in msg.peers)
    return ()


class PeerTable:
    """Peers by key, by overlay address and by local session index."""

    def __init__(self) -> None:
        self.by_key: dict[bytes, Peer] = {}
        self.by_overlay: dict[bytes, Peer] = {}
        self.by_index: dict[int, Peer] = {}
        """Local index (ours, chosen at handshake) → peer, for sessions and initiations; written
        through `index` and `unindex`, which keep each peer's own list (`Peer.indexes`)."""
        self.unknown_changes = 0
        """Field-level changes the coord sent for peers not in the table, dropped (the coord sends
        a peer the node may not have whole, so none are expected)."""
        self.touched: set[Peer] = set()
        """Peers a machine of the core changed since the core's timer last looked (`meshvpn.node.peertimers`)."""
        self.trafficked: set[Peer] = set()
        """Peers the data path carried traffic for since the core's timer last fired: their traffic
        times moved, which their path finders learn on the timer (`meshvpn.node.recovery`)."""
        self.routed: dict[Peer, None] = {}
        """The peers that have a route (``set_route``): the node gives their routes a new transport
        when one changes, at a cost of the peers in use, not of the whole table."""
        self.changed: Optional[set[Peer]] = None
        """Peers whose route, address or membership changed, and those the peer timers took from
        ``touched``, since the native thread's tables last looked (`meshvpn.node.datapath.native_tables`);
        None while no native thread runs."""
        self.slots: list[dict[Peer, None]] = []
        """The peers each `PeerSlot` of the table holds state on."""
        self._joined = itertools.count()
        self.names_version = 0
        """Moves whenever a peer joins, leaves, or changes name or overlay address: who announces
        the names (``Node._note_peer_map``) looks again only then, not at every coord message."""
        self.names = SortedNames()
        """Every peer's (name, overlay address), sorted: what that announcement lists, kept in step here."""

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.by_key.values())

    def __len__(self) -> int:
        return len(self.by_key)

    def named(self, keys: Optional[tuple[bytes, ...]]) -> list[Peer]:
        """The peers of `keys` (`named_keys`; None: every peer) that are in the table, in its order."""
        if keys is None:
            return list(self.by_key.values())
        return sorted({peer for key in keys if (peer := self.by_key.get(key)) is not None}, key=attrgetter("order"))

    def add(self, peer: Peer) -> None:
        peer.order = next(self._joined)
        self.by_key[peer.key] = peer
        self.by_overlay[peer.overlay] = peer
        self.touched.add(peer)
        self.names_version += 1
        self.names.add((peer.name, peer.address))

    def set_route(self, peer: Peer, route: Optional[Route]) -> None:
        """Where the data path sends the peer's messages from now on (None: nowhere)."""
        peer.route = route
        if self.changed is not None:
            self.changed.add(peer)
        if route is None:
            self.routed.pop(peer, None)
        else:
            self.routed[peer] = None

    def completed(self, msg: Message) -> Message:
        """`msg`, but a `peer_delta`'s field-level changes become the changed peers' whole infos,
        so every machine of the node takes it as a delta of format 1."""
        if not isinstance(msg, PeerDelta) or not msg.changed:
            return msg
        whole = [change.apply(self.by_key[change.key].info) for change in msg.changed if change.key in self.by_key]
        self.unknown_changes += len(msg.changed) - len(whole)
        return replace(msg, peers=msg.peers + tuple(whole), changed=None)

    def readdress(self, peer: Peer, info: PeerInfo) -> None:
        """Take the coord's new description; the overlay index follows a changed address."""
        if self.by_overlay.get(peer.overlay) is peer:
            del self.by_overlay[peer.overlay]
        if (info.name, info.address) != (peer.name, peer.address):
            self.names_version += 1
            self.names.remove((peer.name, peer.address))
            self.names.add((info.name, info.address))
        peer.info = info
        peer.overlay = ipaddress.ip_address(info.address).packed
        self.by_overlay[peer.overlay] = peer
        if self.changed is not None:
            self.changed.add(peer)

    def remove(self, key: bytes) -> Optional[Peer]:
        peer = self.by_key.pop(key, None)
        if peer is None:
            return None
        self.names_version += 1
        self.names.remove((peer.name, peer.address))
        if self.by_overlay.get(peer.overlay) is peer:
            del self.by_overlay[peer.overlay]
        self.touched.discard(peer)
        self.trafficked.discard(peer)
        if self.changed is not None:
            self.changed.add(peer)
        self.routed.pop(peer, None)
        for held in self.slots:
            held.pop(peer, None)
        for index in peer.indexes:
            if self.by_index.get(index) is peer:
                del self.by_index[index]
        peer.indexes.clear()
        return peer

    def index(self, index: int, peer: Peer) -> None:
        """Messages to our local ``index`` are ``peer``'s from now on."""
        self.by_index[index] = peer
        peer.indexes.add(index)

    def unindex(self, index: int, peer: Peer) -> None:
        """``index`` no longer names ``peer``'s session or handshake (a no-op if it names another's)."""
        peer.indexes.discard(index)
        if self.by_index.get(index) is peer:
            del self.by_index[index]

    def find(self, query: str) -> Optional[Peer]:
        """A peer by name, overlay address or base64 public key (what ``meshvpn ping`` takes)."""
        for peer in self.by_key.values():
            if query in (peer.name, peer.address, peer.key_text):
                return peer
        return None
