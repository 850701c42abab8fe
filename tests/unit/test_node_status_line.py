"""The daemon's systemd STATUS= summary counts every peer-to-peer path as direct."""

from meshvpn.node.status import status_line
from meshvpn.node.pathfinder import PathKind


def test_lan_udp_and_tcp_paths_count_as_direct_and_relays_apart():
    paths = [PathKind.DIRECT, PathKind.LAN, PathKind.TCP, PathKind.RELAY, None]
    assert status_line(paths, True) == "5 peers: 3 direct, 1 relay"


def test_offline_from_the_coord_is_said():
    assert status_line([], False) == "0 peers: 0 direct, 0 relay; offline: coord unreachable"
