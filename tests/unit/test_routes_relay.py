"""A peer's relay path goes through the relay the peer itself found working, when ours to it is ready."""

from meshvpn.node.pathfinder import RELAY_PATH
from meshvpn.node.routes import Routes
from meshvpn.wire import Endpoint

NEAR, FAR = Endpoint("203.0.113.20", 7500), Endpoint("198.51.100.20", 7500)
PEER = bytes(range(32))


def routes(home: Endpoint | None, ready: dict[str, Endpoint]) -> Routes:
    table = Routes()
    table.relay_endpoint, table.ready_relays = home, ready
    return table


def test_the_peers_home_carries_its_relay_path_when_our_link_to_it_is_ready():
    table = routes(NEAR, {"near": NEAR, "far": FAR})
    route = table.for_path(PEER, RELAY_PATH, "far")
    assert route.endpoint == FAR and route.prefix.endswith(PEER)


def test_our_home_carries_it_when_the_peers_home_is_not_ready_for_us_or_unknown():
    table = routes(NEAR, {"near": NEAR})
    assert table.for_path(PEER, RELAY_PATH, "far").endpoint == NEAR
    assert table.for_path(PEER, RELAY_PATH, None).endpoint == NEAR


def test_without_a_ready_home_there_is_no_relay_route():
    assert routes(None, {"far": FAR}).for_path(PEER, RELAY_PATH, "far") is None
