"""Each NAT kind behaves as docs/lab.md says, observed through an echo server on coord."""

from __future__ import annotations

import pytest

from meshvpn.lab import NatKind, PORT_RANGE, Topology

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

COORD_1 = "203.0.113.10:7000"
COORD_2 = "203.0.113.11:7000"


def seen_ports(seen: list[str]) -> list[int]:
    return [int(endpoint.rsplit(":", 1)[1]) for endpoint in seen]


def test_port_preserving_keeps_the_source_port(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.PORT_PRESERVING)
    seen = probe(topo.host("a1"), "udp", 41414, COORD_1, COORD_2)
    assert seen == ["203.0.113.100:41414", "203.0.113.100:41414"]


def test_random_ports_pick_a_new_port_per_destination(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.RANDOM_PORTS)
    seen = probe(topo.host("a1"), "udp", 41414, COORD_1, COORD_2)
    ports = seen_ports(seen)
    assert all(endpoint.startswith("203.0.113.100:") for endpoint in seen)
    assert ports[0] != ports[1]
    assert 41414 not in ports


def test_port_range_moves_ports_into_the_range(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.PORT_RANGE)
    seen = probe(topo.host("a1"), "udp", 1414, COORD_1, COORD_2)
    assert all(endpoint.startswith("203.0.113.100:") for endpoint in seen)
    ports = seen_ports(seen)
    assert all(PORT_RANGE[0] <= port <= PORT_RANGE[1] for port in ports)
    assert ports[0] == ports[1], "Linux keeps one mapping per inside endpoint"
    assert probe(topo.host("a1"), "udp", 31414, COORD_1) == ["203.0.113.100:31414"]


def test_udp_blocked_lets_only_tcp_out(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.UDP_BLOCKED)
    assert probe(topo.host("a1"), "udp", 41414, COORD_1) == ["-"]
    assert probe(topo.host("a1"), "tcp", 41415, COORD_1) == ["203.0.113.100:41415"]


def test_unsolicited_udp_is_dropped(topo: Topology, probe, punch) -> None:
    topo.add_site("a")
    assert probe(topo.host("a1"), "udp", 41414, COORD_1) == ["203.0.113.100:41414"]
    heard_by_a1, _ = punch((topo.host("a1"), 41414, "203.0.113.11:7100"),
                           (topo.host("coord"), 7100, "203.0.113.100:41414"), window=0.5)
    assert heard_by_a1 == "-"


def test_hole_punching_between_port_preserving_sites(topo: Topology, probe, punch) -> None:
    topo.add_site("a")
    topo.add_site("b")
    [a_public] = probe(topo.host("a1"), "udp", 1414, COORD_1)
    [b_public] = probe(topo.host("b1"), "udp", 2828, COORD_1)
    assert (a_public, b_public) == ("203.0.113.100:1414", "203.0.113.101:2828")
    heard = punch((topo.host("a1"), 1414, b_public), (topo.host("b1"), 2828, a_public))
    assert heard == (b_public, a_public)


def test_hole_punching_fails_between_random_port_sites(topo: Topology, probe, punch) -> None:
    topo.add_site("a", nat=NatKind.RANDOM_PORTS)
    topo.add_site("b", nat=NatKind.RANDOM_PORTS)
    [a_public] = probe(topo.host("a1"), "udp", 1414, COORD_1)
    [b_public] = probe(topo.host("b1"), "udp", 2828, COORD_1)
    heard = punch((topo.host("a1"), 1414, b_public), (topo.host("b1"), 2828, a_public), window=1.0)
    assert heard == ("-", "-")


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpinning_reaches_a_neighbour_through_its_public_endpoint(
    topo: Topology, probe, punch, hairpin: bool
) -> None:
    topo.add_site("a", hosts=2, nat=NatKind.PORT_PRESERVING.with_hairpin(hairpin))
    [a1_public] = probe(topo.host("a1"), "udp", 1414, COORD_1)
    [a2_public] = probe(topo.host("a2"), "udp", 2828, COORD_1)
    heard = punch((topo.host("a1"), 1414, a2_public), (topo.host("a2"), 2828, a1_public), window=1.0)
    assert heard == ((a2_public, a1_public) if hairpin else ("-", "-"))


def test_set_nat_swaps_behaviour_and_forgets_mappings(topo: Topology, probe) -> None:
    topo.add_site("a")
    assert probe(topo.host("a1"), "udp", 41414, COORD_1) == ["203.0.113.100:41414"]
    topo.set_nat("a", NatKind.RANDOM_PORTS)
    assert "fully-random" in topo.host("a").run(["nft", "list", "table", "ip", "meshvpn_nat"]).stdout
    [seen] = probe(topo.host("a1"), "udp", 41414, COORD_1)
    assert seen != "203.0.113.100:41414"
    topo.set_nat("a", NatKind.PORT_PRESERVING)
    assert probe(topo.host("a1"), "udp", 41414, COORD_1) == ["203.0.113.100:41414"]
