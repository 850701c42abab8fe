"""The node's TURN allocations and TURN routes to peers, without I/O: one `TurnClient` per TURN server.

The coordination server announces standard TURN servers with a REST API credential for each
(``registered``, refreshed in ``relay_tokens``). The node allocates a relayed address on every
one, reports those addresses (``turn_relayed``) and learns its peers' (``PeerInfo.turn_relayed``).

Routing: a peer is reachable through TURN once the *home* allocation (the first ready one,
in announced order) has a channel bound to the peer's first relayed address; every allocation
permits and binds every peer's relayed addresses, so whatever allocation the peer sends from,
its ChannelData reaches us. The core sees TURN as its relay path with a per-peer endpoint, the
peer's relayed address (`routes`), and the shell turns datagrams for those endpoints into
ChannelData to the TURN server:

* out, per packet: one `outbound` lookup per batch, then `turn.frame` prepends the 4-byte
  ChannelData header (the only per-packet work);
* in, per packet: `unwrap` looks up the channel and writes the RELAY envelope (header and the
  peer's key) in front of the data, so the data path treats it exactly like a message from a
  meshvpn relay: authenticated, attributed to that peer, never taken for a direct path;
* the core's replies to relayed messages go to the TURN server's endpoint inside a RELAY
  envelope; `wrap` moves them onto the channel (or a Send indication) of the peer it names.

A server named by a DNS name with AAAA and A records has several addresses (the shell's lookups,
`addresses_of`): its requests race them as a relay link's hellos do (`meshvpn.node.relay.addresses`),
IPv6 first and each next address `eyeballs.STAGGER` later while none answered; the first address
to answer is the server's, and its stream races them all too.

UDP first, a stream beside it soon after, back to UDP when it answers, and the other addresses
raced at once when the settled one goes dark: `meshvpn.node.turn.server` owns that choice. On a
stream (TCP to the server's address, TLS to its ``tls_port``, RFC 8656 §12.5) the allocation
lives as long as the stream; messages in it are framed by `meshvpn.turn_codec.StreamFramer`, and
the data path sends padded ChannelData on it.

Inputs take ``now`` (monotonic seconds). Outputs are pulled: `datagrams_to_send`,
`stream_frames`, `stream_wishes`, `received` (Data indications as RELAY envelopes),
`events`, `routes_changed`, `relayed_changed` and `get_timer`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, MutableMapping
from typing import Callable, Iterable, Optional

from meshvpn import wire
from meshvpn.backoff import uniform
from meshvpn.control import messages as m
from meshvpn.node.events import TurnStream
from meshvpn.node.relay.addresses import RelayAddresses
from meshvpn.node.transports import Moves
from meshvpn.node.turn.server import ServerLink
from meshvpn.turn import AllocationLost, AllocationReady, DataReceived, Event, TurnClient, TurnConfig
from meshvpn.turn_codec import CHANNEL_HEADER, TurnError, is_channel_data
from meshvpn.wire import Endpoint, MessageType

_RELAY_HEADER = wire.header(MessageType.RELAY)
_RELAY_PREFIX = wire.RELAY_PREFIX_LEN
_RELAY_TYPE = bytes((MessageType.RELAY,))


class TurnLinks:
    """Every TURN allocation of the node, the peers' relayed addresses and the routes they give."""

    def __init__(self, random_bytes: Callable[[int], bytes], config: Optional[TurnConfig] = None,
                 peers: MutableMapping[bytes, tuple[Endpoint, ...]] | None = None,
                 addresses_of: Optional[dict[str, tuple[str, ...]]] = None) -> None:
        self.servers: dict[str, ServerLink] = {}
        self.by_endpoint: dict[Endpoint, ServerLink] = {}
        self.routes: dict[bytes, Endpoint] = {}
        """Peer key → the peer's relayed address, for peers the home allocation has a channel to."""
        self.drops = 0
        """ChannelData that named no bound channel or was malformed."""
        self._random_bytes = random_bytes
        self._config = config
        self._peer_relayed: MutableMapping[bytes, tuple[Endpoint, ...]] = {} if peers is None else peers
        """Each peer's relayed addresses (the node keeps them on its peers)."""
        self.addresses_of = {} if addresses_of is None else addresses_of
        """An address a server's DNS name resolved to → every address of that name (the shell's
        lookups, shared with `RelaySet.addresses_of`)."""
        self._key_of_relayed: dict[Endpoint, bytes] = {}
        self._outbound: dict[Endpoint, tuple[Endpoint, int, Optional[str]]] = {}
        self.moves = Moves()
        """Relayed addresses whose channel, server or stream changed (for the node's routes)."""
        self._datagrams: list[tuple[Endpoint, bytes]] = []
        self._frames: list[tuple[str, bytes]] = []
        self._wishes: list[TurnStream] = []
        self._received: list[tuple[bytes, Endpoint]] = []
        self._events: list[tuple[str, Event]] = []
        self._relayed: tuple[m.Endpoint, ...] = ()
        self._routes_changed = False
        self._relayed_changed = False

    # ---- inputs ---------------------------------------------------------------------

    def coord_message(self, msg: m.Message, now: float) -> None:
        """Watch coord messages for TURN servers, credentials and peers' relayed addresses."""
        if isinstance(msg, m.Registered):
            self._peer_relayed.clear()
            self._configure(msg.turn or (), now)
            self._relayed_changed = bool(self._relayed)  # a new registration: the coord forgot them
        elif isinstance(msg, m.RelayTokens):
            for info in msg.turn or ():
                server = self.servers.get(info.name)
                if server is not None:
                    server.set_info(info)
        elif isinstance(msg, m.PeerMap):
            for info in msg.peers:
                self._set_peer(info)
        elif isinstance(msg, m.PeerUpdate):
            self._set_peer(msg.peer)
        elif isinstance(msg, m.PeerRemove):
            self._peer_relayed.pop(msg.key, None)
        elif isinstance(msg, m.PeerDelta):
            for key in msg.removed:
                self._peer_relayed.pop(key, None)
            for info in msg.peers:
                self._set_peer(info)
        else:
            return
        self._update(now)

    def follow_peers(self, infos: Iterable[m.PeerInfo], now: float) -> None:
        """Every peer's relayed addresses as the node knows them now (after a peer map in parts)."""
        for info in infos:
            self._set_peer(info)
        self._update(now)

    def forget(self, peer_key: bytes, now: float) -> None:
        """The node no longer has this peer (removed, or left the peer map): no route, no channel to it."""
        if self._peer_relayed.pop(peer_key, None) is not None:
            self._update(now)

    def peer_keys(self) -> set[bytes]:
        """The peers this machine holds any state for (relayed addresses, a route)."""
        return set(self._peer_relayed) | set(self.routes)

    def set_servers(self, servers: Iterable[m.TurnServer], now: float) -> None:
        """The TURN servers at new addresses (a name resolved again); peers' relayed addresses are kept."""
        self._configure(servers, now)
        self._update(now)

    def receive(self, data: bytes, src: Endpoint, now: float) -> bool:
        """A STUN datagram; False when `src` is no TURN server of ours."""
        server = self.by_endpoint.get(src)
        if server is None:
            return False
        server.udp_client.receive(data, now)
        server.addresses.acked(src)  # the first address to answer is the server's
        server.heard()
        if server.udp_answered():
            self._wishes.append(TurnStream(server.info.name))  # UDP works: the stream goes
        self._update(now)
        return True

    def handle_timer(self, now: float) -> None:
        for name, server in self.servers.items():
            silence = server.tick(now)
            if silence is not None:
                self._restart(name, server, f"the server stopped answering at {m.Endpoint(*server.endpoint)}: "
                              f"{silence}", now, server.silent)
            self._follow_replaced(name, server)
            while (address := server.addresses.due(now)) is not None:
                self._datagrams += ((address, data) for data in server.racing)
        self._update(now)

    def check(self, now: float) -> None:
        """Traffic through TURN went unanswered: every ready allocation checks that its server answers."""
        for server in self.servers.values():
            server.check(now)
        self._update(now)

    def network_changed(self, now: float) -> None:
        """Our address or gateway changed: each allocation was bound to the old 5-tuple, so every
        server gets a new one at once, over UDP first (the new network may let UDP through)."""
        for name, server in self.servers.items():
            server.addresses.failed()  # the new network may carry the other family only: race again
            self._restart(name, server, "the network changed", now, server.start)
        self._update(now)

    def network_back(self, retransmitting: Mapping[str, Optional[bool]], now: float) -> None:
        """The host's network is usable again, under the streams the shell holds too, by server name
        with whether the kernel says each waits for a backed-off retransmission (None: it does not
        say): each checks that it carries, and one that does not, or is still connecting, is closed
        and raced again at once (`ServerLink.network_back`)."""
        for name, server in self.servers.items():
            server.network_back(now, retransmitting.get(name))
            self._follow_replaced(name, server)
        self._update(now)

    def stream_up(self, name: str, now: float, tls: bool = False) -> None:
        """The stream to TURN server `name` is connected (inside TLS or not): allocate on it."""
        server = self.servers.get(name)
        if server is not None:
            server.stream_up(now, tls)
        self._update(now)

    def stream_ended(self, name: str, now: float, reset: bool = False) -> None:
        """The stream to TURN server `name` failed or closed (the server `reset` it); its allocation is
        gone with it, and a new stream is raced after the backoff, or at once after a reset of one
        that had lasted (`meshvpn.node.streamdial`)."""
        server = self.servers.get(name)
        if server is not None and server.stream_down(now, reset):
            self._events.append((name, AllocationLost("the TCP connection to the server closed")))
        self._update(now)

    def receive_stream(self, name: str, data: bytes, now: float) -> None:
        """Bytes from the stream to TURN server `name`: STUN to its client, ChannelData to the data path."""
        server = self.servers.get(name)
        if server is None or server.framer is None:
            return
        try:
            messages = server.framer.feed(data)
        except TurnError:
            self.drops += 1
            self._wishes.append(TurnStream(name))
            self.stream_ended(name, now)
            return
        if messages:
            server.heard()
        for message in messages:
            if is_channel_data(message):
                envelope = self.unwrap(message, server.endpoint)
                if envelope is not None:
                    self._received.append((envelope, server.endpoint))
            else:
                server.answered(now, server.client.receive(message, now))
        self._update(now)

    def close(self, now: float) -> None:
        """Give every allocation back."""
        for server in self.servers.values():
            server.client.close(now)
            if server.udp is not None:
                server.udp.close(now)
        self._collect(now)

    # ---- the data path --------------------------------------------------------------

    def outbound(self, dst: Endpoint) -> Optional[tuple[Endpoint, int, Optional[str]]]:
        """(TURN server, channel, stream) for datagrams to `dst` when it is a peer's relayed address;
        stream is the server's name when the allocation lives on a TCP or TLS stream, else None."""
        return self._outbound.get(dst)

    def server_for(self, dst: Endpoint) -> Optional[str]:
        """The name of the TURN server that carries datagrams to `dst`, for status."""
        route = self._outbound.get(dst)
        return None if route is None else self.by_endpoint[route[0]].info.name

    def unwrap(self, data: bytes | memoryview, src: Endpoint) -> Optional[bytes]:
        """ChannelData from a TURN server as the RELAY envelope the data path expects, or None."""
        server = self.by_endpoint.get(src)
        if server is None or len(data) < CHANNEL_HEADER.size:
            self.drops += 1
            return None
        channel, length = CHANNEL_HEADER.unpack_from(data)
        key = self._key_of_relayed.get(server.client.peer_of_channel.get(channel))
        if key is None or CHANNEL_HEADER.size + length > len(data):
            self.drops += 1
            return None
        return _RELAY_HEADER + key + data[CHANNEL_HEADER.size:CHANNEL_HEADER.size + length]

    def wrap(self, data: bytes, dst: Endpoint) -> Optional[tuple[Endpoint, bytes, Optional[str]]]:
        """(TURN server, message, stream) for a message the core sends to `dst`; None if `dst` is not
        TURN's. Stream is the server's name when the message goes on its stream (then padded).

        `dst` is a peer's relayed address (a TURN route), or a TURN server's endpoint with a RELAY
        envelope naming the peer (a reply to a message that came through TURN).
        """
        server = self.by_endpoint.get(dst)
        if server is not None:
            relayed = self._peer_relayed.get(bytes(data[4:_RELAY_PREFIX])) if data[1:2] == _RELAY_TYPE else None
            if not relayed or not server.client.ready:
                return None
            peer, data = relayed[0], data[_RELAY_PREFIX:]
        else:
            route = self._outbound.get(dst)
            if route is None:
                return None
            server, peer = self.by_endpoint[route[0]], dst
        message = server.client.send(peer, data)
        if server.stream is None:
            return server.endpoint, message, None
        return server.endpoint, message + bytes(-len(message) % 4), server.info.name

    # ---- outputs --------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        out, self._datagrams = self._datagrams, []
        return out

    def stream_frames(self) -> list[tuple[str, bytes]]:
        """(server name, message) for servers on a stream: requests and indications, in order."""
        out, self._frames = self._frames, []
        return out

    def stream_wishes(self, now: float) -> list[TurnStream]:
        """Streams to open now (their backoff allows) and to close."""
        for name, server in self.servers.items():
            if server.stream is not None and server.stream.due(now):
                server.stream.attempt()
                targets = server.stream.targets(server.addresses.order(), server.info.port)
                self._wishes.append(TurnStream(name, targets))
        out, self._wishes = self._wishes, []
        return out

    def received(self) -> list[tuple[bytes, Endpoint]]:
        """Data indications from peers, as RELAY envelopes from the TURN server's endpoint."""
        out, self._received = self._received, []
        return out

    def events(self) -> list[tuple[str, Event]]:
        """(server name, event) for the log: allocations made and lost, channels bound."""
        out, self._events = self._events, []
        return out

    def routes_changed(self) -> bool:
        changed, self._routes_changed = self._routes_changed, False
        return changed

    def relayed_changed(self) -> bool:
        changed, self._relayed_changed = self._relayed_changed, False
        return changed

    @property
    def relayed(self) -> tuple[m.Endpoint, ...]:
        """Our relayed addresses, for the coord's ``turn_relayed``."""
        return self._relayed

    def get_timer(self) -> Optional[float]:
        timers = [server.deadline() for server in self.servers.values()]
        return min((t for t in timers if t is not None), default=None)

    def status(self) -> list[dict]:
        return [
            {
                "name": name,
                "kind": "turn",
                "address": str(m.Endpoint(*server.endpoint)),
                "transport": server.transport,
                "ready": server.client.ready,
                "state": server.client.state.value,
                "relayed": None if server.client.relayed is None else str(m.Endpoint(*server.client.relayed)),
                "channels": len(server.client.peer_of_channel),
                "failure": server.client.failure,
            }
            for name, server in self.servers.items()
        ]

    # ---- internals ------------------------------------------------------------------

    def _configure(self, servers: Iterable[m.TurnServer], now: float) -> None:
        wanted = {info.name: info for info in servers}
        for name in list(self.servers):
            info = wanted.get(name)
            server = self.servers[name]
            if (info is None or (info.host, info.port) != (server.info.host, server.info.port)
                    or set(self._addresses(info)) != set(server.addresses.all)):
                server.client.close(now)
                self._collect_one(name, server, now)
                if server.stream is not None:
                    self._wishes.append(TurnStream(name))
                del self.servers[name]
                for address in server.addresses.all:
                    del self.by_endpoint[address]
        for name, info in wanted.items():
            server = self.servers.get(name)
            if server is not None:
                server.set_info(info)
                continue
            server = ServerLink(info, RelayAddresses(self._addresses(info)), self._new_client,
                                draw=lambda: uniform(self._random_bytes))
            self.servers[name] = server
            self.by_endpoint.update(dict.fromkeys(server.addresses.all, server))
            server.start(now)

    def _addresses(self, info: m.TurnServer) -> tuple[Endpoint, ...]:
        """Where server `info` may be reached: its address, and the others of the name it came from."""
        hosts = self.addresses_of.get(ipaddress.ip_address(info.host).compressed, ()) or (info.host,)
        return tuple(Endpoint(ipaddress.ip_address(host).compressed, info.port) for host in hosts)

    def _new_client(self, info: m.TurnServer, reliable: bool) -> TurnClient:
        return TurnClient(info.username, info.password, self._random_bytes, self._config, reliable=reliable)

    def _restart(self, name: str, server: ServerLink, reason: str, now: float,
                 start: Callable[[float], None]) -> None:
        """Give the allocation up (its stream closed, the loss logged) and `start` the way anew."""
        if server.stream is not None:
            self._wishes.append(TurnStream(name))
        if server.client.ready:
            self._events.append((name, AllocationLost(reason)))
        start(now)

    def _follow_replaced(self, name: str, server: ServerLink) -> None:
        """Close the stream its check replaced (`stream_wishes` races the new one at once)."""
        lost = server.replaced()
        if lost is None:
            return
        self._wishes.append(TurnStream(name))
        if lost:
            reason = server.stream.replaced_because if server.stream is not None else ""
            self._events.append((name, AllocationLost(f"its stream was replaced: {reason}")))

    def _set_peer(self, info: m.PeerInfo) -> None:
        relayed = tuple(Endpoint(e.host, e.port) for e in info.turn_relayed or ()) if info.online else ()
        if relayed:
            self._peer_relayed[info.key] = relayed
        else:
            self._peer_relayed.pop(info.key, None)

    def _update(self, now: float) -> None:
        """Give every allocation the peers' addresses, then recompute routes and our relayed addresses."""
        ours = {server.client.relayed for server in self.servers.values()}
        self._key_of_relayed = {
            address: key for key, addresses in self._peer_relayed.items() for address in addresses
            if address not in ours
        }
        peers = list(self._key_of_relayed)
        for server in self.servers.values():
            server.client.set_peers(peers, now)
        self._collect(now)
        home = next((server for server in self.servers.values() if server.client.ready), None)
        routes: dict[bytes, Endpoint] = {}
        outbound: dict[Endpoint, tuple[Endpoint, int, Optional[str]]] = {}
        stream = None if home is None or home.stream is None else home.info.name
        for key, addresses in self._peer_relayed.items():
            channel = None if home is None else home.client.channel(addresses[0])
            if channel is not None and addresses[0] in self._key_of_relayed:
                routes[key] = addresses[0]
                outbound[addresses[0]] = (home.endpoint, channel, stream)
        if outbound != self._outbound:
            old = self._outbound
            self.moves.add(*(dst for dst in old.keys() | outbound.keys() if old.get(dst) != outbound.get(dst)))
            self._outbound = outbound
        if routes != self.routes:
            self.routes = routes
            self._routes_changed = True
        relayed = tuple(m.Endpoint(*server.client.relayed) for server in self.servers.values()
                        if server.client.relayed is not None)
        if relayed != self._relayed:
            self._relayed = relayed
            self._relayed_changed = True

    def _collect(self, now: float) -> None:
        for name, server in self.servers.items():
            self._collect_one(name, server, now)

    def _collect_one(self, name: str, server: ServerLink, now: float) -> None:
        client = server.client
        datagrams = server.udp_client.datagrams_to_send()
        if datagrams:
            dst = server.addresses.round(now)  # while no address answered, the others follow a stagger apart
            server.racing = [] if server.addresses.locked else datagrams
            self._datagrams += ((dst, data) for data in datagrams)
        if server.stream is not None:
            frames = client.datagrams_to_send()
            if server.stream.connected:
                self._frames += ((name, data) for data in frames)
        if server.udp is not None:
            while server.udp.next_event() is not None:
                pass  # the UDP client beside a stream is a probe: its losses are no news
        while (event := client.next_event()) is not None:
            if isinstance(event, AllocationReady):
                server.ready(now)
            if isinstance(event, DataReceived):
                key = self._key_of_relayed.get(Endpoint(*event.peer))
                if key is not None:
                    self._received.append((_RELAY_HEADER + key + event.data, server.endpoint))
            else:
                self._events.append((name, event))

