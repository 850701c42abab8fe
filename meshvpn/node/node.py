"""The node: one sans-IO object for everything a node decides (aioquic's ``QuicConnection``).

It owns the four protocol machines of a node and wires them together, so the shell never does:
the peer core (:class:`~meshvpn.node.core.NodeCore`: peers, handshakes, probes, paths), the
relay links (:class:`~meshvpn.node.relay.core.RelaySet`), the TURN allocations
(:class:`~meshvpn.node.turn.core.TurnLinks`) and TCP hole punching
(:class:`~meshvpn.node.tcp.core.TcpPunch`).

One inbox, each call with ``now`` (monotonic seconds): ``receive_coord`` (every control
message), ``receive_datagram`` (every UDP message that is not transport data),
``receive_tcp`` and the other ``tcp_*``/``relay_stream_*`` calls (stream life and bytes),
``handle_timer``; plus ``packet_from_tun``/``flush`` from the data path and ``ping``.
One outbox, drained one way: ``outputs()`` returns the :mod:`meshvpn.node.events`
transmissions and events in order. One timer: ``get_timer()``.

Rules of the wiring:

* A coord message goes to every machine that cares (relays, peers, TURN, TCP punch), in that order.
* While the coord says this node relays for its network (:mod:`meshvpn.node.peerrelay`), relay
  hellos, and envelopes from the members registered with it, go to its relay core first.
* The home relay's endpoint, the TURN routes and the punched TCP paths become paths of the peer
  core (``set_relay``, ``set_turn``, ``set_tcp_path``) as soon as they change.
* A UDP path (LAN or direct) ends TCP punching for that peer; a peer the coord removes loses
  every piece of state in every machine in the same step (``remove_peer``).
* Which transport carries a message to an endpoint is decided here, in one place
  (``transport_for``); the shell sends with one ``match`` on it.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from meshvpn.config import FanoutConfig, ForwardLimits
from meshvpn.control import messages as m
from meshvpn.node import events as ev
from meshvpn.node.core import CoreConfig, NodeCore
from meshvpn.node.family import is_ipv6
from meshvpn.node.lanparty import LanParty
from meshvpn.node.pairrelay import RttReport, add_pair_status
from meshvpn.node.peerrelay import PeerRelay, add_relay_status, follow_paths_to_peer_relays, reach_peer_relays
from meshvpn.node.pathtypes import PathKind
from meshvpn.node.peers import Peer, PeerSlot, PeerTable
from meshvpn.node.prediction import NatProfile
from meshvpn.node.recovery import NodeRecovery
from meshvpn.node.routes import restamp
from meshvpn.node.streaminbox import StreamInbox
from meshvpn.node.tcpinbox import PunchPortInbox, tcp_silent, udp_direct
from meshvpn.node.relay.link import Transport as RelayTransport
from meshvpn.node.relay.core import RelaySet
from meshvpn.node.tcp.core import TcpEndpoint, TcpPunch
from meshvpn.node.tcp.prediction import TcpPrediction
from meshvpn.node.transports import MAIN_SOCKET, PinnedSocket, PunchedStream, RelayStream, Transport, TurnChannel
from meshvpn.node.turn.core import TurnLinks
from meshvpn.stun import is_stun
from meshvpn.turn_codec import is_channel_data
from meshvpn.wire import Endpoint, MessageType

_FROM_RELAY_LINK = frozenset((bytes((MessageType.RELAY_HELLO_ACK,)), bytes((MessageType.RELAY_COOKIE,))))
"""Second bytes of the datagrams a relay link answers (hello acks and cookies), not the peer core."""
_SETTLE_ROUNDS = 8
"""Rounds of passing one machine's news to the others; two or three always suffice."""


class Node(NodeRecovery, StreamInbox, PunchPortInbox):
    """Everything one node decides, without I/O; the data path reads ``peers`` directly."""

    def __init__(self, private_key: bytes, random_bytes: Callable[[int], bytes],
                 config: CoreConfig | None = None, lan: FanoutConfig | None = None,
                 coord_public: Optional[bytes] = None, peer_relay: Optional[ForwardLimits] = None) -> None:
        self.core = NodeCore(private_key, random_bytes, config)
        self.lan = LanParty(lan or FanoutConfig(), self.core.destinations)  # the data path calls it too
        wall = self.core.config.wall_offset
        self.relays = RelaySet(private_key, self.core.public_key, random_bytes, wall)
        self.rtt_report = RttReport()
        self.turn = TurnLinks(random_bytes, peers=PeerSlot(self.core.peers, "turn_relayed"),
                              addresses_of=self.relays.addresses_of)
        self.peer_relay = PeerRelay(private_key, random_bytes, wall, coord_public, peer_relay)
        """This node relaying for its network, when the coord says so (needs the coord's key for tokens)."""
        self.tcp = TcpPunch(self.core.identity, random_bytes, wall, peers=PeerSlot(self.core.peers, "tcp"))
        self.tcp_prediction = TcpPrediction(self.core.punching.randrange,
                                            peers=PeerSlot(self.core.peers, "tcp_prediction"))
        self.core.routes.transport_for = self.transport_for
        self.core.departing = self._departing
        self.tcp_punching = False
        """Whether the shell holds a punch port (``enable_tcp_punch``); without one, no TCP punches."""
        self._out: list[ev.Output] = []
        self._peer_map: Optional[ev.PeerMapChanged] = None
        """The names last announced with ``PeerMapChanged``."""
        self._peer_map_seen: Optional[tuple[str, str, str, int]] = None
        """(network, our name, our address, ``PeerTable.names_version``) when the names were last looked at."""

    # ---- what the data path and the shell read ----------------------------------------

    @property
    def peers(self) -> PeerTable:
        return self.core.peers

    @property
    def public_key(self) -> bytes:
        return self.core.public_key

    @property
    def drops(self):
        return self.core.drops

    @property
    def destinations(self):
        """The inner destinations the data path accepts (the core's)."""
        return self.core.destinations

    def outputs(self) -> list[ev.Output]:
        """Transmissions and events since the last call, in order; each is returned once."""
        out, self._out = self._out + self.lan.outputs(), []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out) or self.lan.has_output

    def get_timer(self) -> Optional[float]:
        """The earliest deadline of any of the node's machines."""
        machines = (self.core, self.relays, self.turn, self.tcp, self.lan, self.peer_relay)
        timers = [machine.get_timer() for machine in machines]
        return min((t for t in timers if t is not None), default=None)

    # ---- inbox ------------------------------------------------------------------------

    def receive_coord(self, msg: m.Message, now: float) -> None:
        """A control message from the coord: to every machine that cares about it."""
        msg = self.peers.completed(msg)
        tcp_before = self.tcp_candidates(msg)
        if isinstance(msg, (m.Registered, m.Relays)):
            self._configure_relays(msg, now)
        elif isinstance(msg, m.RelayTokens):
            self.relays.set_tokens(msg.tokens, now)
        self.peer_relay.coord_message(msg, now)
        self.core.coord_message(msg, now)
        reach_peer_relays(self.core, self.relays, now)
        self.lan.coord_message(msg, self.peers, now)
        self.turn.coord_message(msg, now)
        if isinstance(msg, m.PeerMap):  # its parts became peers in the core only now: TURN follows them
            self.turn.follow_peers([peer.info for peer in self.peers], now)
        if isinstance(msg, m.Punch):
            self._punch_tcp(msg, now)
        self.tcp_news(tcp_before)
        self._settle(now)
        self._note_peer_map(msg.network.name if isinstance(msg, m.Registered) else None)

    def servers_moved(self, registered: m.Registered, now: float) -> None:
        """The relays and TURN servers of `registered` at new addresses (a DNS name resolved again)."""
        self._configure_relays(registered, now)
        self.turn.set_servers(registered.turn or (), now)
        self._settle(now)

    def _configure_relays(self, registered: m.Registered | m.Relays, now: float) -> None:
        self.relays.configure(registered.relays, registered.relay_tokens, now)
        follow_paths_to_peer_relays(self.core, self.relays, now)
        self._out += map(ev.RelaySkipped, self.relays.skipped)

    def receive_datagram(self, data: bytes, src: Endpoint, now: float, via: Optional[int] = None) -> None:
        """A UDP datagram that is not transport data (on the main socket, or on extra socket `via`)."""
        if via is None and self.peer_relay.takes(data, src):
            self.peer_relay.receive(data, src, now)
        elif via is None and src in self.turn.by_endpoint:
            if is_channel_data(data):
                envelope = self.turn.unwrap(data, src)
                if envelope is not None:
                    self._out.append(ev.Deliver([(envelope, src)]))
            elif is_stun(data):
                self.turn.receive(data, src, now)
            else:
                self.core.datagram_received(data, src, now)
        elif is_stun(data):
            if via is None:
                self._out.append(ev.StunReceived(data, src))
            return
        elif data[1:2] in _FROM_RELAY_LINK:  # on a pinned socket too: the way to a peer relay may be one
            if not self.relays.receive(data, src, RelayTransport.UDP, now):
                self.core.datagram_received(data, src, now)
        else:
            self.core.datagram_received(data, src, now, via=via)
        self._settle(now)

    def handle_timer(self, now: float) -> None:
        """Do everything due at ``now`` in every machine; safe to call early or late."""
        self.core.handle_timer(now)
        self.relays.handle_timer(now)
        self.peer_relay.handle_timer(now)
        self.turn.handle_timer(now)
        self.tcp.handle_timer(now)
        self.lan.handle_timer(now)
        self._settle(now)

    # ---- inbox: the data path, ping, hard NATs, settings ------------------------------

    def packet_from_tun(self, peer: Peer, packet: bytes, now: float) -> None:
        """A packet the data path could not seal (no session or route yet): the core queues it."""
        self.core.packet_from_tun(peer, packet, now)
        self._settle(now)

    def flush(self, peer: Peer, now: float) -> bool:
        """Send the peer's queued packets if it now has a session and a route; True if any left."""
        sent = self.core.flush(peer, now)
        self._settle(now)
        return sent

    def datagram_received(self, data: bytes, src: Endpoint, now: float) -> None:
        """The data path's name for :meth:`receive_datagram` (it calls its core this way)."""
        self.receive_datagram(data, src, now)

    def ping(self, peer: Peer, now: float) -> Optional[bytes]:
        """One probe along the peer's route; the answer is a :class:`~meshvpn.node.events.PingReply`."""
        tx_id = self.core.ping(peer, now)
        self._settle(now)
        return tx_id

    def port_sampled(self, peer_key: bytes, sample: Optional[Endpoint], now: float, via: Optional[int] = None) -> None:
        """The answer to ``SampleWanted`` (None: no STUN answer), from extra socket `via` if the shell keeps it."""
        self.core.punching.port_sampled(peer_key, sample, now, via)
        self._settle(now)

    def set_own_endpoints(self, local: Iterable[Endpoint], public: Optional[Endpoint],
                          mapped: Optional[Endpoint] = None, mapped_tcp: Optional[Endpoint] = None) -> None:
        """Our LAN endpoints, public and router-mapped endpoints: probes to us were sent there.
        With `mapped_tcp` (our router forwards a TCP port to the punch port) peers come to us,
        unless STUN saw us at another address (the router is behind another NAT)."""
        local = tuple(local)
        self.core.set_own_endpoints(local, public, mapped)
        self.tcp_ipv6 = any(is_ipv6(endpoint) for endpoint in local)
        self.tcp.mapped = mapped_tcp is not None and (public is None or public.host == mapped_tcp.host)

    def set_nat_profile(self, profile: NatProfile) -> None:
        self.core.punching.set_nat_profile(profile)

    def servers_network_changed(self, now: float, connections_lost: bool = False) -> None:
        """The host's network just changed: hello every relay at once (a ready link checks itself, so
        a network without UDP has its stream raced within a second), not after the endpoint round,
        whose STUN may never answer there. With `connections_lost` (they came from an address that
        is gone) the relay streams are closed and reopened with the links' backoff, rather than left
        to go silent, and every TURN allocation is made anew."""
        if connections_lost:
            self._out += self.relays.drop_streams(now)
            self.turn.network_changed(now)
        self.relays.hello_now(now)
        self._settle(now)

    def network_changed(self, now: float, connections_lost: bool = False) -> None:
        """The host's network changed and our new endpoints went to the coord: re-probe every peer in
        use now, rather than waiting for timers tuned to a network that stays. With `connections_lost`
        the shell closed the extra sockets too (without, they and their pins stay: the NAT may still
        hold their mappings, and a path on one comes back with the link)."""
        self.core.punching.reprobe(now, sockets_closed=connections_lost)
        self._settle(now)

    def set_keepalive(self, seconds: float) -> None:
        """A reloaded ``paths.keepalive``: every peer's path finder shares this setting (and its deadline moves)."""
        self.core.config.paths.keepalive = seconds
        self.peers.touched.update(self.peers)

    def mappings_short(self, key: bytes) -> None:
        """The shell opened fewer of `key`'s birthday sockets than asked (its limit, held by other campaigns)."""
        self.core.traversal.mappings_short(key)

    def mappings_in_use(self) -> set[int]:
        """The extra sockets some peer's route uses; pins of the others are forgotten."""
        return self.core.socket_for.keep_only(peer.route.endpoint for peer in self.peers if peer.route is not None)

    def close(self, now: float) -> None:
        """Give the TURN allocations back (the shell sends what this produces, then closes)."""
        self.turn.close(now)
        self._drain_turn(now)

    def remove_peer(self, key: bytes, reason: str, now: float) -> None:
        """Forget a peer in every machine: sessions, paths, pings, traversal and its TCP path."""
        self.core.remove_peer(key, reason, now)
        self._settle(now)
        self._note_peer_map()

    def _note_peer_map(self, network: Optional[str] = None) -> None:
        """Announce who is in the network when a name or address changed (the DNS responder's source)."""
        me = self.core.registration
        if me is None:
            return
        network = network or (self._peer_map.network if self._peer_map else "")
        seen = (network, me.name, me.address, self.peers.names_version)
        if seen == self._peer_map_seen:  # no name or address changed: no copy of every peer's
            return
        self._peer_map_seen = seen
        hosts = ((me.name, me.address), *self.peers.names)
        if self._peer_map is None or (network, hosts) != (self._peer_map.network, self._peer_map.hosts):
            self._peer_map = ev.PeerMapChanged(network, hosts)
            self._out.append(self._peer_map)

    def _departing(self, peer: Peer, now: float) -> None:
        """A peer leaves the core (removed, or left the peer map): its TCP path and TURN channel close first."""
        self.tcp.stop(peer.key)
        self.turn.forget(peer.key, now)

    # ---- transports -------------------------------------------------------------------

    def transport_for(self, dst: Endpoint) -> Transport:
        """What carries messages to `dst`: the one place the node's transports are chosen.

        Routes carry the answer (``Route.transport``), stamped when they are made and whenever
        it changes; the control path's own messages (probes, handshakes) ask here directly."""
        turn = self.turn.outbound(dst)
        if turn is not None:
            return TurnChannel(*turn)
        if type(dst) is TcpEndpoint:
            return PunchedStream(self.tcp.path_conn(dst))
        link = self.relays.is_tcp(dst)
        if link is not None:
            return RelayStream(link.name)
        sid = self.core.socket_for.get(dst) if self.core.socket_for else None
        return MAIN_SOCKET if sid is None else PinnedSocket(sid)

    def _send(self, dst: Endpoint, data: bytes, now: float) -> None:
        """One message of the control path (handshake, probe, keepalive, queued packet) on its transport."""
        wrapped = self.turn.wrap(data, dst)
        if wrapped is not None:
            server, message, stream = wrapped
            self._out.append(ev.SendDatagram(server, message) if stream is None else ev.SendTurnBytes(stream, message))
            return
        match self.transport_for(dst):
            case PunchedStream():
                self.tcp.send(dst, [data], now)
            case RelayStream(name):
                self._out.append(ev.SendRelayFrames(name, [data]))
            case PinnedSocket(sid):
                self._out.append(ev.SendDatagram(dst, data, sid))
            case _:
                self._out.append(ev.SendDatagram(dst, data))

    # ---- wiring -----------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        """Pass each machine's news to the others and collect their output, until all is quiet."""
        for _ in range(_SETTLE_ROUNDS):
            moved = self._drain_relays(now)
            moved |= self._drain_turn(now)
            moved |= self._drain_tcp(now)
            moved |= self._drain_core(now)
            if not moved:
                break
        moved = self.turn.moves.take() | self.tcp.moves.take() | self.core.socket_for.moves.take()
        restamp(self.peers, moved | self.relays.streams_moved(), self.transport_for)

    def _drain_core(self, now: float) -> bool:
        core = self.core
        datagrams = core.datagrams_to_send()
        for dst, data in datagrams:
            self._send(dst, data, now)
        messages = core.coord_messages_to_send()
        self._out += map(ev.SendCoord, messages)
        events = int(self._check_relays(now))
        while (event := core.next_event()) is not None:
            events += 1
            self._out.append(event)
            if isinstance(event, ev.PeerPathChanged):
                self._path_changed(event, now)
        return bool(datagrams or messages or events)

    def _path_changed(self, event: ev.PeerPathChanged, now: float) -> None:
        """The peer's log keeps the change; a UDP path ends TCP punching and its birthday campaign, and
        hands the TCP path over (`TcpPunch.hand_over`: it closes a second later, once the peer took its
        UDP path too); a TCP path that went silent under traffic is ended, and punched again
        (`TcpPunch.path_silent`)."""
        peer = self.peers.find(event.name)
        if peer is None:
            return
        peer.path_log.record(event, peer.last_rx, peer.last_rx_src, self.core.config.paths.path_timeout, now)
        if udp_direct(event.new):
            follow_paths_to_peer_relays(self.core, self.relays, now)
            self.tcp.hand_over(peer.key, now)
            self._out.append(ev.CloseMappings(peer.key))
        elif tcp_silent(event):
            self.tcp.path_silent(peer.key, now)
            self.tcp_prediction.path_lost(peer.key)
        elif event.new is not None and event.new.kind is PathKind.TCP:
            self.tcp.keep(peer.key)

    def _drain_relays(self, now: float) -> bool:
        relays = self.relays
        datagrams = relays.datagrams_to_send()  # a peer relay's way in may be the pinned socket of our path to it
        self._out += (ev.SendDatagram(dst, data, self.core.socket_for.get(dst)) for dst, data in datagrams)
        self._out += (ev.SendDatagram(dst, data) for dst, data in self.peer_relay.datagrams_to_send())
        frames = relays.frames_to_send()
        self._out += (ev.SendRelayFrames(link.name, [frame]) for link, frame in frames)
        streams = relays.stream_wishes(now)
        self._out += streams
        ready_rtts = {name: link.rtt for name, link in relays.links.items() if link.ready}
        reported, home_changed = self.rtt_report.update(ready_rtts, now), relays.home_changed()
        if not (home_changed or reported):
            return bool(datagrams or frames or streams)
        home = relays.home
        if home_changed:
            self._out.append(ev.RelayHomeChanged(None if home is None else home.name,
                                                 None if home is None else home.transport_name))
        self.core.routes.own_rtts = self.rtt_report.reported
        self.core.set_relay(relays.home_endpoint(), now, relays.ready_endpoints())
        if home is not None:
            self._out.append(ev.SendCoord(m.RelayHome(home.name, self.rtt_report.message())))
        return True

    def _drain_turn(self, now: float) -> bool:
        turn = self.turn
        datagrams = turn.datagrams_to_send()
        self._out += (ev.SendDatagram(dst, data) for dst, data in datagrams)
        frames = turn.stream_frames()
        self._out += (ev.SendTurnBytes(name, data) for name, data in frames)
        wishes = turn.stream_wishes(now)
        self._out += wishes
        received = turn.received()
        if received:
            self._out.append(ev.Deliver(received))
        happened = turn.events()
        self._out += (ev.TurnChanged(server, event) for server, event in happened)
        moved = bool(datagrams or frames or wishes or received or happened)
        if turn.routes_changed():
            self.core.set_turn(dict(turn.routes), now)
            moved = True
        if turn.relayed_changed():
            self._out.append(ev.SendCoord(m.TurnRelayed(turn.relayed)))
            moved = True
        return moved

    def _name(self, key: bytes) -> str:
        peer = self.peers.by_key.get(key)
        return key.hex()[:8] if peer is None else peer.name

    # ---- status -----------------------------------------------------------------------

    def status(self, now: float) -> dict:
        """This node, its peers, relays, TURN allocations and TCP punching, for ``meshvpn status``."""
        status = self.core.status(now)
        status["self"]["relays"] = self.relays.status()
        status["self"]["turn"] = self.turn.status()
        status["self"]["tcp_punch"] = {"peers": self.tcp.status(), "prediction": dict(self.tcp_prediction.counters)}
        add_relay_status(status, self.peers, self.relays, self.peer_relay)
        routes = self.core.routes
        infos = {peer.name: peer.info for peer in self.peers}
        add_pair_status(status["peers"], infos, routes.own_rtts, routes.ready_relays)
        self.lan.add_status(status, self.peers)
        servers = {peer.name: self.turn.server_for(peer.route.endpoint) for peer in self.peers
                   if peer.route is not None}
        for entry in status["peers"]:
            if servers.get(entry["name"]):
                entry["turn"] = servers[entry["name"]]
        return status

