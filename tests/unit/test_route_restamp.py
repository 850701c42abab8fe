"""Routes follow their transport's changes, and only those: a settle that changed no transport asks
``transport_for`` about no peer; one that did asks about the peers on the moved endpoints only."""

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.node.events import OpenRelayStream
from meshvpn.node.pathtypes import Path, PathKind
from meshvpn.node.peers import Route
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.node.transports import MAIN_SOCKET, PinnedSocket, PunchedStream, RelayStream, TurnChannel
from meshvpn.sim.nodes import NETWORK, WALL_OFFSET, MemoryNode, seeded
from meshvpn.wire import Endpoint
from test_node import BOB_RELAYED, taken, tcp_pair, with_turn_route  # noqa: F401  (fixture)

RELAY = m.RelayInfo(name="r1", host="203.0.113.20", port=7500, public_key=bytes(range(32)))
RELAY_AT = Endpoint(RELAY.host, RELAY.port)
TOKEN = m.RelayToken(relay=RELAY.name, token=bytes(100), expires=WALL_OFFSET + 3600)
PEERS = 50


def routed_node() -> MemoryNode:
    """A node with a relay that answers nothing over UDP and `PEERS` peers, each routed directly to its
    public endpoint, but the last two, whose routes go to the relay's endpoint."""
    n = seeded(random.Random, 1, "me", "100.64.0.1", Endpoint("192.0.2.1", 41641))
    n.from_coord(m.Registered(node_key=n.public, name=n.name, address=n.address, network=NETWORK,
                              relays=(RELAY,), relay_tokens=(TOKEN,)), 0.0)
    infos = tuple(m.PeerInfo(key=random.Random(100 + i).randbytes(32), name=f"peer{i}", address=f"100.64.1.{i + 2}",
                             online=True, public_endpoint=m.Endpoint("203.0.113.100", 20000 + i))
                  for i in range(PEERS))
    n.from_coord(m.PeerMap(peers=infos), 0.0)
    for i, peer in enumerate(n.peers):
        to = RELAY_AT if i >= PEERS - 2 else Endpoint(*peer.info.public_endpoint)
        route_to(n, peer, to)
    n.drain(0.0)
    return n


def route_to(n: MemoryNode, peer, endpoint: Endpoint) -> None:
    kind = PathKind.TCP if type(endpoint) is TcpEndpoint else PathKind.DIRECT
    n.peers.set_route(peer, Route(Path(kind, endpoint), endpoint, b"", n.node.transport_for(endpoint)))


def asked(n: MemoryNode) -> list[Endpoint]:
    """The endpoints the node's `transport_for` is asked about from now on."""
    calls: list[Endpoint] = []
    choose = n.node.transport_for

    def counting(dst: Endpoint):
        calls.append(dst)
        return choose(dst)
    n.node.transport_for = counting
    return calls


def assert_stamped(n: MemoryNode) -> None:
    """Every route carries the transport the node would choose for it now (the walk of every route
    that each settle used to make, as the oracle)."""
    stale = {peer.name: (peer.route.transport, n.node.transport_for(peer.route.endpoint))
             for peer in n.peers.routed if peer.route.transport != n.node.transport_for(peer.route.endpoint)}
    assert stale == {}


def relay_stream_up(n: MemoryNode) -> float:
    """Time passes without a UDP answer until the relay's link wants its stream, which comes up."""
    now = 0.0
    while not any(isinstance(o, OpenRelayStream) for o in n.other_out):
        now += 0.5
        assert now < 60, "the link never asked for its stream"
        n.tick(now)
        n.collect()
    taken(n, OpenRelayStream)
    n.node.relay_stream_up(RELAY.name, now)
    n.drain(now)
    return now


def test_a_settle_that_moved_no_transport_asks_about_no_peer():
    n = routed_node()
    calls = asked(n)
    n.node.handle_timer(0.0)
    n.node.datagram_received(b"\x01" + bytes(40), Endpoint("198.51.100.7", 4000), 0.0)  # a stranger's junk
    assert calls == []


def test_a_relay_stream_coming_up_restamps_only_the_peers_on_that_relay():
    n = routed_node()
    calls = asked(n)
    relay_stream_up(n)
    on_relay = [peer for peer in n.peers if peer.route.endpoint == RELAY_AT]
    assert [peer.route.transport for peer in on_relay] == [RelayStream(RELAY.name)] * 2
    routed_elsewhere = {peer.route.endpoint for peer in n.peers} - {RELAY_AT}
    assert not routed_elsewhere & set(calls)
    assert all(peer.route.transport == MAIN_SOCKET for peer in n.peers if peer.route.endpoint != RELAY_AT)
    assert_stamped(n)


@pytest.mark.parametrize("via", [7, None], ids=["pinned to an extra socket", "heard on the main one"])
def test_a_pin_restamps_the_route_to_its_endpoint(via):
    n = routed_node()
    peer = next(iter(n.peers))
    endpoint = peer.route.endpoint
    n.node.core.socket_for.probing(endpoint, 3)
    n.node.handle_timer(0.0)
    assert peer.route.transport == PinnedSocket(3)
    n.node.core.socket_for.heard(endpoint, via)
    n.node.handle_timer(0.0)
    assert peer.route.transport == (MAIN_SOCKET if via is None else PinnedSocket(via))
    n.node.network_changed(1.0, connections_lost=True)  # the extra sockets close: their pins go
    assert peer.route.transport == MAIN_SOCKET
    assert_stamped(n)


def test_a_turn_channel_restamps_the_routes_to_the_relayed_address():
    n = routed_node()
    b = seeded(random.Random, 2, "bob", "100.64.0.2", Endpoint("198.51.100.2", 41641))
    peer = next(iter(n.peers))
    route_to(n, peer, BOB_RELAYED)  # made before the channel was bound: on the main socket
    assert peer.route.transport == MAIN_SOCKET
    with_turn_route(n, b, 0.5)
    assert isinstance(peer.route.transport, TurnChannel)
    assert_stamped(n)


def test_a_tcp_path_coming_and_going_restamps_the_routes_to_it(tcp_pair):
    a, a_conn, b, _ = tcp_pair
    to = a.peers.by_key[b.public].route.endpoint
    other = seeded(random.Random, 3, "carol", "100.64.0.3", Endpoint("203.0.113.3", 41641))
    a.from_coord(m.PeerUpdate(peer=other.info()), 0.5)
    carol = a.peers.by_key[other.public]
    route_to(a, carol, to)
    assert carol.route.transport == PunchedStream(a_conn)
    a.node.tcp_closed(a_conn, 1.0)
    a.drain(1.0)
    assert carol.route.transport == PunchedStream(None)
    assert_stamped(a)
