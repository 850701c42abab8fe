"""The node's protocol core: peers, handshakes, path probes and coord messages, without I/O.

aioquic style.  Inputs are calls that take ``now`` (monotonic seconds):
``coord_message`` for every control message from the coord, ``datagram_received``
for every UDP message that is not transport data (handshakes, probes, relay
envelopes around them), ``packet_from_tun`` for a packet the data path could not
send (no session or no route yet), ``ping`` for ``meshvpn ping``, and
``handle_timer``.  Outputs are pulled: ``datagrams_to_send``,
``coord_messages_to_send``, ``next_event`` and ``get_timer``.

Rules:

* Handshakes start on demand: the first packet for a peer is queued (a few per
  peer, the oldest dropped), starts a handshake, and, when the peer has no path,
  starts punching and asks the coord (``punch_request``) to make the peer punch back.
* An initiation is sent only once the peer has a route; a queued packet leaves once
  the peer has both a session and a route.  The initiator confirms a new session
  with a keepalive at once, so the responder can start sealing with it.
* The side whose session is due (REKEY_AFTER_TIME for the initiator, shortly before
  REJECT_AFTER_TIME for the responder) starts a new handshake, but only if the session
  carried traffic: idle peers let their sessions expire.
* Punching (the coord's ``punch``, our punch requests, hard NATs) is the `punching`
  component's (:mod:`meshvpn.node.punching`); a probe from a peer we have no path to
  starts punching back, so one side's punch still opens both directions.
* Whatever the NATs, a peer without a path that sends us a handshake, is punched at by the
  coord or has traffic queued gets the relay by ``relay_after`` (``PathFinder.want_path``),
  even while the traversal strategy holds its probes back.
* Datagrams for a ``pinned`` endpoint leave from the socket its probe arrived on, or our
  probes from our latest port sample's socket (``socket_for``, :mod:`meshvpn.node.pins`).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.control.mapparts import PeerMapAssembler
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.candidates import candidates_of
from meshvpn.node.coreprobes import CoreProbes
from meshvpn.node.coretimers import CoreTimers
from meshvpn.node.destinations import LocalDestinations
from meshvpn.node.events import (
    AddressAssigned, CoordRejected, Event, PeerDown, PeerPathChanged, PeerUp,
)
from meshvpn.node.handshake_cookies import HandshakeCookies
from meshvpn.node.handshakes import HandshakeManager
from meshvpn.node.pathfinder import RELAY_PATH, PathChanged, PathFinder, PathFinderConfig, SendProbe
from meshvpn.node.peers import Peer, PeerSlot, PeerTable, Route
from meshvpn.node.peertimers import PeerTimers
from meshvpn.node.punching import Punching
from meshvpn.node.recovery import Recovery
from meshvpn.node.routes import Routes
from meshvpn.node.status import node_status
from meshvpn.node.strangers import Strangers
from meshvpn.node.probes import ProbeBudget, ProbeCodec
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.noise import StaticIdentity
from meshvpn.session import Session
from meshvpn.wire import Endpoint, MessageType

_RESPONSE_RECEIVER = slice(8, 12)


@dataclass
class CoreConfig:
    """What the core takes from the node configuration; each default is the documented one."""

    paths: PathFinderConfig = field(default_factory=PathFinderConfig)
    """Timers of path discovery and upkeep (config ``paths``)."""
    wall_offset: float = 0.0
    """Wall clock minus monotonic clock: handshake timestamps and the coord's ``punch.at``."""
    punch_request_interval: float = 5.0
    """Least seconds between two ``punch_request`` messages for one peer."""


class NodeCore(HandshakeCookies, Recovery, CoreTimers, CoreProbes):
    """All per-node protocol state; the data path reads ``peers`` directly."""

    def __init__(self, private_key: bytes, random_bytes: Callable[[int], bytes], config: CoreConfig | None = None):
        self.config = config if config is not None else CoreConfig()
        self.identity = StaticIdentity.from_private(private_key)
        self.public_key = self.identity.public
        self.random_bytes = random_bytes
        self.peers = PeerTable()
        self.timers = PeerTimers(self.peers, self._peer_deadline, self._busy_until, self._look_at)
        """Every peer's next deadline, kept current from the peers marked in the table."""
        self.handshakes = HandshakeManager(self.identity, random_bytes, self.config.wall_offset,
                                           PeerSlot(self.peers, "handshake"), PeerSlot(self.peers, "cookie"))
        self.probes = ProbeCodec(private_key, self.public_key, *(PeerSlot(self.peers, slot) for slot in
                                                                 ("probe_key", "probe_sent", "probe_seen")))
        self.probe_budget = ProbeBudget(peers=PeerSlot(self.peers, "probe_allowance"))
        self.strangers = Strangers()
        """Probes from keys that are not peers yet, taken when the peer map adds the key."""
        self.registration: Optional[AddressAssigned] = None
        self.destinations = LocalDestinations()
        """Inner destinations the data path accepts from peers (ours, broadcast, joined groups)."""
        self.routes = Routes()
        """The relay transports (home relay, TURN) and the route each path gets."""
        self.drops: Counter = Counter()
        """Dropped non-data datagrams by reason, for status and tests."""
        self._datagrams: list[tuple[Endpoint, bytes]] = []
        self._coord_out: list[m.Message] = []
        self._report_paths = False
        """The coord takes `paths` reports (it said so in `registered`)."""
        self._events: deque[Event] = deque()
        self._peer_map = PeerMapAssembler()
        """Parts of a peer map too large for one frame, until its last part arrives."""
        self.punching = Punching(self.peers, self._events, self._coord_out, self._probe, self._drain_paths,
                                 random_bytes, self.config)
        """The coord's punches, our punch requests and the hard-NAT rules."""
        self.traversal = self.punching.traversal
        self.departing: Callable[[Peer, float], None] = lambda peer, now: None
        """Called as a peer departs, still in the table: the node's machines close what they hold for it."""
        self.socket_for = self.traversal.pinned
        """Remote endpoint -> extra socket id its datagrams must leave from (empty in the common case)."""

    # ---- outputs ------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        out, self._datagrams = self._datagrams, []
        return out

    def coord_messages_to_send(self) -> list[m.Message]:
        out = list(self._coord_out)
        self._coord_out.clear()  # shared with `punching`: emptied, never replaced
        return out

    def next_event(self) -> Optional[Event]:
        return self._events.popleft() if self._events else None

    # ---- coord messages -----------------------------------------------------------

    def coord_message(self, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.Registered):
            self.registration = AddressAssigned(msg.name, msg.address, msg.network.cidr)
            self.destinations.set_overlay(msg.address, msg.network.cidr)
            self._events.append(self.registration)
            self._report_paths = bool(msg.path_reports)
            self._report_path(*self.peers)
            self.endpoints_refreshed(now)
        elif isinstance(msg, m.PeerMap):
            peers = self._peer_map.add(msg)
            if peers is not None:
                listed = {info.key for info in peers}
                for key in [key for key in self.peers.by_key if key not in listed]:
                    self.remove_peer(key, "left the peer map", now)
                for info in peers:
                    self._upsert_peer(info, now)
        elif isinstance(msg, m.PeerUpdate):
            self._upsert_peer(msg.peer, now)
        elif isinstance(msg, m.PeerRemove):
            self.remove_peer(msg.key, "removed by the coord", now)
        elif isinstance(msg, m.PeerDelta):
            for key in msg.removed:
                self.remove_peer(key, "removed by the coord", now)
            for info in msg.peers:
                self._upsert_peer(info, now)
        elif isinstance(msg, m.Punch):
            peer = self.peers.by_key.get(msg.peer_key)
            if peer is None:  # not kept, unlike a probe: the coord names a peer before any punch for it
                self.drops["punch for unknown peer"] += 1
            else:
                self.punching.on_punch(peer, msg, now)
                self.peers.touched.add(peer)
        elif isinstance(msg, m.Error):
            self._events.append(CoordRejected(msg.code, msg.message))

    def _upsert_peer(self, info: m.PeerInfo, now: float) -> None:
        if info.key == self.public_key:
            return
        peer = self.peers.by_key.get(info.key)
        if peer is None:
            peer = Peer(info.key, info, PathFinder(lambda: self.random_bytes(8), self.config.paths))
            self.peers.add(peer)
            self.traversal.set_peer_nat(info.key, info.nat)
            peer.paths.strategy = self.traversal.strategy(info.key)
            self.probes.add_peer(info.key)
            peer.paths.relay_ready(self.routes.relay_ready(peer.key), now)
        else:
            self.peer_reported(peer.info, info)
            self.peers.readdress(peer, info)
            if self.traversal.set_peer_nat(info.key, info.nat):
                peer.paths.strategy = self.traversal.strategy(info.key)
            if peer.route is not None and peer.route.path is RELAY_PATH:
                self.peers.set_route(peer, self.routes.for_path(peer.key, RELAY_PATH, info))
        peer.paths.set_candidates(candidates_of(info), now)
        self.peers.touched.add(peer)
        self._strangers_known(info.key, now)

    def remove_peer(self, key: bytes, reason: str, now: float) -> None:
        """Forget the peer in one step: all kept of it is on it (``departing`` closes its connections
        and channels first, and its handshake's keys are wiped)."""
        peer = self.peers.by_key.get(key)
        if peer is None:
            return
        self.departing(peer, now)
        self.handshakes.cancel(key)
        self.peers.remove(key)
        self.timers.forget(peer)
        self._events.append(PeerDown(peer.name, reason))

    # ---- what the shell learns about our own network ------------------------------

    def set_own_endpoints(self, local: Iterable[Endpoint], public: Optional[Endpoint],
                          mapped: Optional[Endpoint] = None) -> None:
        """Our LAN, public and router-mapped endpoints, as the shell learns them: probes to us were sent there."""
        self.probes.set_own_hosts([e.host for e in local] + [e.host for e in (public, mapped) if e is not None])
        self.punching.set_mapped(mapped is not None)

    # ---- relay --------------------------------------------------------------------

    def set_relay(self, endpoint: Optional[Endpoint], now: float, ready: Optional[dict[str, Endpoint]] = None) -> None:
        """The home relay is ready at ``endpoint`` (or gone, with None); ``ready``: every ready relay by name."""
        self.routes.relay_endpoint = endpoint
        if ready is not None:
            self.routes.ready_relays = ready
        for peer in self.peers:
            peer.paths.relay_ready(self.routes.relay_ready(peer.key), now)
            if peer.route is not None and peer.route.path is RELAY_PATH:
                self.peers.set_route(peer, self.routes.for_path(peer.key, RELAY_PATH, peer.info))
            self._drain_paths(peer, now)

    def set_tcp_path(self, peer_key: bytes, endpoint: Optional[TcpEndpoint], now: float) -> None:
        """A direct TCP path to the peer is up at `endpoint` (None: gone); see docs/nat-traversal.md."""
        peer = self.peers.by_key.get(peer_key)
        if peer is not None:
            peer.paths.tcp_ready(endpoint, now)
            self._drain_paths(peer, now)

    def probe_tcp_path(self, peer_key: bytes, now: float) -> None:
        """Probe the peer's TCP path now (its check after our network came back): the path finder's
        suspicion, which also leaves the path if it stays silent (`PathFinder.suspect`)."""
        peer = self.peers.by_key.get(peer_key)
        if peer is not None:
            peer.paths.suspect(now)
            self._drain_paths(peer, now)

    def set_turn(self, routes: dict[bytes, Endpoint], now: float) -> None:
        """Peers reachable through TURN, at their relayed address (the node frames ChannelData).

        TURN carries a peer's relay path only while no meshvpn relay is ready (docs/relay.md)."""
        self.routes.turn = routes
        self.set_relay(self.routes.relay_endpoint, now)

    # ---- datagrams ----------------------------------------------------------------

    def datagram_received(self, data: bytes, src: Endpoint, now: float, relayed_from: Optional[bytes] = None,
                          via: Optional[int] = None) -> None:
        """A UDP message other than transport data; anything malformed is dropped and counted.

        ``via`` names the extra socket (birthday probing) it arrived on; None is the main one.
        """
        try:
            kind = wire.message_type(data)
            if kind == MessageType.PROBE or kind == MessageType.PROBE_REPLY:
                self._on_probe(data, src, now, relayed_from, via)
            elif kind == MessageType.HANDSHAKE_INIT:
                self._on_initiation(data, src, now, relayed_from)
            elif kind == MessageType.HANDSHAKE_RESP:
                self._on_response(data, src, now, relayed_from)
            elif kind == MessageType.HANDSHAKE_COOKIE:
                self._on_cookie(data, now)
            elif kind == MessageType.RELAY and relayed_from is None:
                relayed = wire.decode_relay(data)
                self.datagram_received(bytes(relayed.inner), src, now, relayed.node_key)
            else:
                self.drops[f"unexpected type {kind}"] += 1
        except RemoteProtocolError:
            self.drops["malformed"] += 1

    def _on_initiation(self, data: bytes, src: Endpoint, now: float, relayed_from: Optional[bytes]) -> None:
        if not self._admitted(data, src, now, relayed_from):
            return
        pending = self.handshakes.consume_initiation(data, lambda key: key in self.peers.by_key)
        if pending is None or (relayed_from is not None and relayed_from != pending.remote_public):
            self.drops["rejected initiation"] += 1
            return
        peer = self.peers.by_key[pending.remote_public]
        index = self._new_index(peer)
        response, keys = pending.respond(index, self.random_bytes(32))
        self._install(peer, Session(keys, now), now)
        self._send_via(self.routes.reply(src, relayed_from), response)
        if peer.route is None:
            peer.paths.want_path(now)
        if relayed_from is None:
            peer.paths.traffic_received(src, now)
            self._drain_paths(peer, now)

    def _on_response(self, data: bytes, src: Endpoint, now: float, relayed_from: Optional[bytes]) -> None:
        if len(data) != wire.RESPONSE_LEN:
            raise wire.WireError("handshake response has the wrong length")
        peer = self.peers.by_index.get(int.from_bytes(data[_RESPONSE_RECEIVER], "little"))
        keys = None if peer is None else self.handshakes.consume_response(peer.key, data)
        if keys is None:
            self.drops["rejected response"] += 1
            return
        self._install(peer, Session(keys, now), now)
        if relayed_from is None:
            peer.paths.traffic_received(src, now)
            self._drain_paths(peer, now)
        if not self.flush(peer, now) and peer.route is not None:
            self._send_via(peer.route, peer.ring.current.keepalive())

    def _install(self, peer: Peer, session: Session, now: float) -> None:
        was_up = peer.ring.current is not None or peer.ring.next is not None
        peer.ring.install(session)
        self.peers.touched.add(peer)
        peer.last_handshake = now
        peer.counters.handshakes += 1
        peer.counters.rekeys += was_up
        self._free_retired(peer)
        if not was_up:
            self._events.append(PeerUp(peer.name))

    def _new_index(self, peer: Peer) -> int:
        while True:
            index = int.from_bytes(self.random_bytes(4), "little")
            if index not in self.peers.by_index:
                self.peers.index(index, peer)
                return index

    def _free_retired(self, peer: Peer) -> None:
        for index in peer.ring.pop_retired():
            self.peers.unindex(index, peer)

    # ---- packets the data path could not send -------------------------------------

    def packet_from_tun(self, peer: Peer, packet: bytes, now: float) -> None:
        """Queue ``packet`` for ``peer`` and start whatever it is waiting for."""
        self.peers.touched.add(peer)
        if len(peer.pending) == peer.pending.maxlen:
            peer.counters.drops["queue full"] += 1
        peer.pending.append(packet)
        self.ring_expire(peer, now)
        if peer.ring.current is None and peer.key not in self.handshakes.attempts:
            self._initiate(peer, now)
        if peer.route is None:
            self.punching.seek_path(peer, now, self.config.punch_request_interval)
        self.flush(peer, now)

    def ring_expire(self, peer: Peer, now: float) -> None:
        """Drop sessions past REJECT_AFTER_TIME; tell the log when the last one goes."""
        had = peer.ring.current is not None
        peer.ring.expire(now)
        self.peers.touched.add(peer)
        self._free_retired(peer)
        if had and peer.ring.current is None and peer.ring.next is None:
            self._events.append(PeerDown(peer.name, "session expired"))

    def _initiate(self, peer: Peer, now: float) -> None:
        self.peers.touched.add(peer)
        old = self.handshakes.attempts.get(peer.key)
        if old is not None:
            self.peers.unindex(old.index, peer)
        self.handshakes.start(peer.key, self._new_index(peer), now)
        self._send_initiation(peer, now)

    def _send_initiation(self, peer: Peer, now: float) -> None:
        attempt = self.handshakes.attempts.get(peer.key)
        if attempt is not None and not attempt.sent and peer.route is not None:
            self._send_via(peer.route, self.handshakes.initiation(peer.key, now))

    def flush(self, peer: Peer, now: float) -> bool:
        """Seal and send the queued packets if possible; True if any left."""
        session, route = peer.ring.current, peer.route
        if session is None or route is None or not peer.pending:
            return False
        counters = peer.counters
        while peer.pending:
            packet = peer.pending.popleft()
            self._send_via(route, session.seal(packet))
            counters.tx_packets += 1
            counters.tx_bytes += len(packet)
        peer.last_tx = now
        self.peers.trafficked.add(peer)  # as the data path's sends: its path finder learns of them on the timer
        return True

    def _send_via(self, route: Route, message: bytes) -> None:
        self._datagrams.append((route.endpoint, route.prefix + message if route.prefix else message))

    # ---- paths --------------------------------------------------------------------

    def _drain_paths(self, peer: Peer, now: float) -> None:
        """Carry out the path finder's probes and path changes (the peer's deadline may have moved)."""
        self.peers.touched.add(peer)
        for action in peer.paths.next_actions():
            if isinstance(action, PathChanged):
                self.peers.set_route(peer, self.routes.for_path(peer.key, action.new, peer.info))
                self.punching.path_changed(peer, action.new, now)
                self._events.append(PeerPathChanged(peer.name, action.old, action.new, action.reason.value))
                self._report_path(peer)
                self._send_initiation(peer, now)
                self.flush(peer, now)
            elif isinstance(action, SendProbe):
                dst = action.endpoint if type(action.endpoint) is TcpEndpoint else \
                    self.traversal.probe_from(peer.key, Endpoint(*action.endpoint), now)
                probe = self._probe(peer, action.tx_id, dst, now)
                if probe is not None:
                    self._datagrams.append((dst, probe))
            else:
                self._path_news(action, now)

    def _report_path(self, *peers: Peer) -> None:
        """Tell the coord how these peers are reached now, for its admins' view of the mesh."""
        if not self._report_paths:
            return
        paths = [m.PeerPath(p.name, None if p.route is None else p.route.path.kind.value) for p in peers]
        for start in range(0, len(paths), m.MAX_PEERS):
            self._coord_out.append(m.Paths(tuple(paths[start:start + m.MAX_PEERS])))

    # ---- status -------------------------------------------------------------------

    def status(self, now: float) -> dict:
        """This node and its peers as ``meshvpn status --json`` prints them."""
        return node_status(self.registration, self.public_key, self.peers, now)
