"""This node relaying for its network: a peer relay (`docs/relay.md`, "Peer relays").

A LAN party's host is often the best relay its guests have. When the coord says the node relays
(`relaying` in `registered`, later in `relays`), it runs the relay's own core,
`meshvpn.relay.core.RelayCore`, on its one UDP port: the same registrations, cookies, token
checks and rate limits as `meshvpn relay`, nothing copied. The tokens it accepts are minted by
the coord the node is pinned to, for this node's key, and only for members of its network (the
coord mints them for no one else), so it relays within its network only.

What goes to the relay core rather than the peer core: every RELAY_HELLO (a node never gets one
otherwise), and every RELAY envelope from an endpoint registered with it (members sending
through it). An envelope from anywhere else is relayed traffic *for* this node (from a server
relay) and goes on to the peer core as before, so the node still serves its own traffic. It
never sees plaintext: what it forwards is sealed between the two members, and it holds no
session of theirs.

When the node's native loop runs, it forwards the envelopes of registered members itself, from a
copy of the registrations (`meshvpn.node.datapath.native_relay`); the relay core still decides
everything: who is registered, the buckets (shared with the thread), expiry. A member the coord
removes from the network is unregistered at once, not when its token runs out.

Sans-IO: `now` is the node's monotonic clock; the relay core gets wall-clock time (tokens and
hellos carry it) through the node's wall offset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from meshvpn.config import ForwardLimits, RelayLimits
from meshvpn.control import messages as m
from meshvpn.ratelimit import TokenBucket
from meshvpn.relay.core import RelayCore
from meshvpn.relay.registry import BucketFactory
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.tcpinbox import udp_direct
from meshvpn.wire import Endpoint, MessageType

if TYPE_CHECKING:
    from meshvpn.node.core import NodeCore
    from meshvpn.node.peers import PeerTable
    from meshvpn.node.relay.core import RelaySet

_HELLO = MessageType.RELAY_HELLO
_ENVELOPE = MessageType.RELAY


class PeerRelay:
    """The relay core while the coord says this node relays; None of it otherwise."""

    def __init__(self, private_key: bytes, random_bytes: Callable[[int], bytes], wall_offset: float,
                 coord_public: Optional[bytes], limits: Optional[ForwardLimits] = None) -> None:
        self._private = private_key
        self._random_bytes = random_bytes
        self._wall = wall_offset
        self._coord_public = coord_public
        """The coord whose tokens count; without one (a node built without it) the node never relays."""
        self._limits = _relay_limits(limits or ForwardLimits())
        self.core: Optional[RelayCore] = None
        self.bucket: BucketFactory = TokenBucket
        """Makes the registrations' buckets: the native loop's shared bucket when it forwards."""

    @property
    def wall_offset(self) -> float:
        """The relay core's clock (Unix seconds) minus the node's."""
        return self._wall

    def set_limits(self, limits: ForwardLimits) -> None:
        """New limits (config ``peer_relay``, reloaded): the registrations keep their buckets' level."""
        self._limits = _relay_limits(limits)
        if self.core is not None:
            self.core.set_limits(self._limits)

    @property
    def relaying(self) -> bool:
        return self.core is not None

    def coord_message(self, msg: m.Message, now: float) -> None:
        """`registered` and `relays` say whether the node relays: start or stop the relay core;
        `peer_remove` and a delta's `removed`: those members leave the relay at once."""
        if isinstance(msg, (m.Registered, m.Relays)):
            wanted = bool(msg.relaying) and self._coord_public is not None
            if wanted and self.core is None:
                assert self._coord_public is not None
                self.core = RelayCore(self._private, self._coord_public, self._limits, self._random_bytes,
                                      now + self._wall, bucket=self.bucket)
            elif not wanted:
                self.core = None
        elif isinstance(msg, (m.PeerRemove, m.PeerDelta)) and self.core is not None:
            for key in (msg.key,) if isinstance(msg, m.PeerRemove) else msg.removed:
                self._member_left(key)

    def _member_left(self, key: bytes) -> None:
        """A member gone from the network relays nothing more through us, even with a token still good."""
        reg = self.core.registry.by_key.get(key) if self.core is not None else None
        if reg is not None:
            self.core.registry.unregister(reg)
            self.core.drops["member left"] += 1

    def takes(self, data: bytes, src: Endpoint) -> bool:
        """Whether a datagram from `src` is the relay's: a hello, or an envelope from a member registered here."""
        if self.core is None or len(data) < 2:
            return False
        return data[1] == _HELLO or (data[1] == _ENVELOPE and self.core.serves(src))

    def receive(self, data: bytes, src: Endpoint, now: float) -> None:
        if self.core is not None:
            self.core.receive(data, src, now + self._wall)

    def handle_timer(self, now: float) -> None:
        if self.core is not None:
            self.core.handle_timer(now + self._wall)

    def get_timer(self) -> Optional[float]:
        return None if self.core is None else self.core.get_timer() - self._wall

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        return [] if self.core is None else self.core.datagrams_to_send()

    def status(self) -> Optional[dict]:
        """The relay core's registrations and counters while relaying (`meshvpn status`)."""
        return None if self.core is None else self.core.status()


def _relay_limits(limits: ForwardLimits) -> RelayLimits:
    """The relay core's limits with the node's rates (its TCP queue limit never applies: UDP only)."""
    return RelayLimits(packets_per_second=limits.packets_per_second, burst=limits.burst)


def add_relay_status(status: dict, peers: PeerTable, relays: RelaySet, serving: PeerRelay) -> None:
    """`meshvpn status`: the relay that carries each relayed peer (``relay``; ``peer_relay`` when
    it is a member relaying for the network) and, while this node relays, its registrations and
    counters (``self.relaying``)."""
    by_name = {peer.name: peer for peer in peers}
    for entry in status["peers"]:
        peer = by_name.get(entry["name"])
        route = None if peer is None else peer.route
        link = relays.by_endpoint.get(route.endpoint) if route is not None and route.path.kind is PathKind.RELAY else None
        if link is not None:
            entry["relay"], entry["peer_relay"] = link.name, bool(link.info.peer)
    status["self"]["relaying"] = serving.status()


def follow_paths_to_peer_relays(core: NodeCore, relays: RelaySet, now: float) -> None:
    """Each peer relay is reached where our direct (UDP) path to its node goes, as well as at its
    public endpoint (`RelaySet.set_way`): that path answers, whatever family or LAN it is on
    (called when a path changes and when the relays are configured)."""
    for link in list(relays.links.values()):
        peer = core.peers.by_key.get(link.info.public_key) if link.info.peer else None
        route = None if peer is None else peer.route
        if route is not None and udp_direct(route.path) and route.path.endpoint is not None:
            relays.set_way(link, route.path.endpoint, now)


def reach_peer_relays(core: NodeCore, relays: RelaySet, now: float) -> None:
    """Seek a path to each node we are offered as a relay and have no route to yet: behind a
    random-port NAT the way to its port opens with our path to it (birthday probing), so a
    member need not have talked to the relay's node before (called on every coord message)."""
    for link in relays.links.values():
        peer = core.peers.by_key.get(link.info.public_key) if link.info.peer and not link.ready else None
        if peer is not None and peer.info.online and peer.route is None:
            core.punching.seek_path(peer, now, core.config.punch_request_interval)
