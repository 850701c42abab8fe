"""A peer's relay path goes through the relay with the lowest round trip for the pair when both
report theirs, else through the relay the peer itself found working, when ours to it is ready."""

from meshvpn.control import messages as m
from meshvpn.node.pathfinder import RELAY_PATH
from meshvpn.node.routes import Routes
from meshvpn.wire import Endpoint

NEAR, FAR = Endpoint("203.0.113.20", 7500), Endpoint("198.51.100.20", 7500)
PEER = bytes(range(32))
LAN = Endpoint("192.0.2.7", 41641)


def info(home: str | None, rtts: dict[str, int] | None = None) -> m.PeerInfo:
    reported = None if rtts is None else tuple(m.RelayRtt(name, ms) for name, ms in rtts.items())
    return m.PeerInfo(PEER, "peer", "100.64.0.2", True, home_relay=home, relay_rtts=reported)


def routes(home: Endpoint | None, ready: dict[str, Endpoint]) -> Routes:
    table = Routes()
    table.relay_endpoint, table.ready_relays = home, ready
    return table


def test_the_peers_home_carries_its_relay_path_when_our_link_to_it_is_ready():
    table = routes(NEAR, {"near": NEAR, "far": FAR})
    route = table.for_path(PEER, RELAY_PATH, info("far"))
    assert route.endpoint == FAR and route.prefix.endswith(PEER)


def test_our_home_carries_it_when_the_peers_home_is_not_ready_for_us_or_unknown():
    table = routes(NEAR, {"near": NEAR})
    assert table.for_path(PEER, RELAY_PATH, info("far")).endpoint == NEAR
    assert table.for_path(PEER, RELAY_PATH, info(None)).endpoint == NEAR


def test_without_a_ready_home_there_is_no_relay_route():
    assert routes(None, {"far": FAR}).for_path(PEER, RELAY_PATH, info("far")) is None


def test_the_relay_with_the_lowest_sum_for_the_pair_wins_over_the_peers_home():
    table = routes(NEAR, {"near": NEAR, "far": FAR, "lan": LAN})
    table.own_rtts = {"near": 5, "far": 40, "lan": 30}
    assert table.for_path(PEER, RELAY_PATH, info("near", {"near": 60, "far": 10, "lan": 8})).endpoint == LAN
    assert table.for_path(PEER, RELAY_PATH, info("far", {"near": 10, "far": 10})).endpoint == NEAR


def test_a_peer_without_a_report_or_a_common_relay_keeps_its_home():
    table = routes(NEAR, {"near": NEAR, "far": FAR})
    table.own_rtts = {"near": 5, "far": 40}
    assert table.for_path(PEER, RELAY_PATH, info("far")).endpoint == FAR
    assert table.for_path(PEER, RELAY_PATH, info("far", {"elsewhere": 1})).endpoint == FAR
