"""Which :class:`~meshvpn.node.peers.Route` realises a peer's path: where its messages go, and with what prefix.

Direct, LAN and TCP paths send to the path's own endpoint. The relay path sends to the relay with
the lowest round trip for the pair when both ends report theirs (`meshvpn.node.pairrelay`), else
to the peer's home relay when ours to it is ready, else to our home, with a relay envelope naming the peer, or, while no meshvpn relay is ready, to the peer's TURN
relayed address (the node frames those as ChannelData; docs/relay.md). Replies to a message go
back the way it came: straight to its source, or inside an envelope to the relay it came through.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from meshvpn import wire
from meshvpn.control.messages import PeerInfo
from meshvpn.node.pairrelay import choose_relay
from meshvpn.node.pathfinder import RELAY_PATH, Path, PathKind
from meshvpn.node.peers import PeerTable, Route
from meshvpn.node.transports import MAIN_SOCKET, Transport
from meshvpn.wire import Endpoint, MessageType

_RELAY_HEADER = wire.header(MessageType.RELAY)


class Routes:
    """The relay transports a peer's relay path can take, and the route each path gets."""

    def __init__(self) -> None:
        self.relay_endpoint: Optional[Endpoint] = None
        """The home relay's endpoint while a relay is ready; None otherwise."""
        self.ready_relays: dict[str, Endpoint] = {}
        """Every relay whose link is ready, by name: a peer's home among them carries its relay path."""
        self.own_rtts: dict[str, int] = {}
        """Our round trips to our relays in ms, as last reported to the coord (`pairrelay.RttReport`)."""
        self.turn: dict[bytes, Endpoint] = {}
        """Peer key → the peer's TURN relayed address: its relay path while no meshvpn relay is ready."""
        self.transport_for: Callable[[Endpoint], Transport] = lambda endpoint: MAIN_SOCKET
        """What carries messages to an endpoint (the node's choice; a bare core has only its main socket)."""

    def relay_ready(self, key: bytes) -> bool:
        """Whether the peer `key` could be reached through a relay now."""
        return self.relay_endpoint is not None or key in self.turn

    def for_path(self, key: bytes, path: Optional[Path], info: Optional[PeerInfo] = None) -> Optional[Route]:
        """The route that realises `path` to peer `key`, of whom the coord said `info`; None without
        a path (or a relay to take). The relay path goes through the relay with the lowest round trip
        for the pair when both report theirs, else through the peer's home when our link to it is
        ready (the relay the peer itself found working), else through ours."""
        if path is None:
            return None
        if path.kind is PathKind.RELAY:
            if self.relay_endpoint is None:
                turn = self.turn.get(key)
                return None if turn is None else self._route(path, turn)
            choice = choose_relay(self.own_rtts, self.ready_relays, info)
            relay = self.ready_relays.get(choice.relay or "", self.relay_endpoint)
            return self._route(path, relay, _RELAY_HEADER + key)
        if path.kind is PathKind.TCP:
            return self._route(path, path.endpoint)
        return self._route(path, Endpoint(*path.endpoint))

    def reply(self, src: Endpoint, relayed_from: Optional[bytes]) -> Route:
        """Back to where a message came from: its source, or the relay that carried it from `relayed_from`."""
        if relayed_from is not None:
            return self._route(RELAY_PATH, src, _RELAY_HEADER + relayed_from)
        return self._route(Path(PathKind.DIRECT, src), src)

    def _route(self, path: Path, endpoint: Endpoint, prefix: bytes = b"") -> Route:
        return Route(path, endpoint, prefix, self.transport_for(endpoint))


def restamp(peers: PeerTable, moved: set[Endpoint], transport_for: Callable[[Endpoint], Transport]) -> None:
    """Give the routes to the endpoints whose transport may have `moved` (a relay went over to TCP, a
    channel was bound...) the transport that carries them now. Nothing moved, no peer is looked at:
    a quiet settle costs nothing per peer."""
    if not moved:
        return
    for peer in list(peers.routed):
        route = peer.route
        if route.endpoint in moved:
            transport = transport_for(route.endpoint)
            if transport != route.transport:
                peers.set_route(peer, replace(route, transport=transport))
