"""netcheck's verdicts from observations: RFC 4787 names for what the STUN tests saw."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshvpn.node.netcheck import (
    ADM, APDM, EIM, ENDPOINT_DEPENDENT, OFFSET, PRESERVING, RANDOM, SEQUENTIAL,
    Observations, RelayTarget, _daemon_relays, allocation, mapping, nat_profile, render, verdict,
)
from meshvpn.node.netcheck_relays import connect_time, mapping_relay, pick_relay
from meshvpn.node.prediction import Allocation, NatProfile

PUB = "203.0.113.100"


@pytest.mark.parametrize("samples, expected", [
    ([(4000, 4000), (5123, 5123), (6000, 6000)], PRESERVING),
    ([(1414, 31414), (1500, 31500)], OFFSET),
    ([(4000, 30001), (5123, 30002), (6000, 30004), (7000, 30005)], SEQUENTIAL),
    ([(4000, 30001), (5123, 30005), (6000, 30006), (7000, 30020)], SEQUENTIAL),
    ([(4000, 51000), (5123, 12000), (6000, 40000)], RANDOM),
    ([(4000, 30001), (5123, 30000)], RANDOM),
    ([(4000, 30001)], None),
])
def test_port_allocation(samples, expected) -> None:
    assert allocation(samples) == expected


@pytest.mark.parametrize("mapped, expected", [
    ({"A1P1": (PUB, 1), "A2P2": (PUB, 1), "A2P1": (PUB, 1), "A1P2": (PUB, 1)}, EIM),
    ({"A1P1": (PUB, 1), "A2P2": (PUB, 1)}, EIM),
    ({"A1P1": (PUB, 1), "A2P2": (PUB, 2), "A2P1": (PUB, 2), "A1P2": (PUB, 1)}, ADM),
    ({"A1P1": (PUB, 1), "A2P2": (PUB, 2), "A1P2": (PUB, 1)}, ADM),
    ({"A1P1": (PUB, 1), "A2P2": (PUB, 2), "A2P1": (PUB, 3), "A1P2": (PUB, 4)}, APDM),
    ({"A1P1": (PUB, 1), "A2P2": (PUB, 2)}, ENDPOINT_DEPENDENT),
    ({"A1P1": (PUB, 1)}, None),
])
def test_mapping(mapped, expected) -> None:
    assert mapping(mapped) == expected


def cone(**fields) -> Observations:
    base = dict(local_ip="10.1.0.11", mapped={"A1P1": (PUB, 4000), "A2P2": (PUB, 4000)},
                samples=[(5000, 5000), (6000, 6000)], hairpin=False)
    return Observations(**{**base, **fields})


@pytest.mark.parametrize("change_both, to_sent_address, expected", [
    (True, None, EIM),
    (False, True, ADM),
    (False, False, APDM),
    (False, None, ENDPOINT_DEPENDENT),
    (None, None, None),
])
def test_filtering(change_both, to_sent_address, expected) -> None:
    obs = cone(change_both=change_both, change_to_sent_address=to_sent_address)
    assert verdict(obs).filtering == expected


def test_filtering_behind_an_endpoint_dependent_mapping_is_not_guessed() -> None:
    obs = cone(mapped={"A1P1": (PUB, 1), "A2P2": (PUB, 2)}, change_both=False, change_to_sent_address=False)
    assert verdict(obs).filtering == ENDPOINT_DEPENDENT


def test_public_host_has_no_nat_and_no_hairpin_verdict() -> None:
    obs = cone(local_ip=PUB, mapped={"A1P1": (PUB, 5000), "A2P2": (PUB, 5000)}, hairpin=True)
    result = verdict(obs)
    assert (result.nat, result.hairpinning) == (False, None)
    assert "NAT: no (public address)" in render(result)


def test_no_answer_means_udp_blocked() -> None:
    result = verdict(Observations(local_ip="10.1.0.11", relays={"r1": {"tcp": 0.0123}, "r2": {"tcp": None}}))
    assert not result.udp
    assert render(result).splitlines() == [
        "UDP: blocked (no STUN answer)",
        "traversal: UDP blocked: relay over TCP only",
        "relay r1: tcp 12.3 ms",
        "relay r2: tcp unreachable",
    ]


@pytest.mark.parametrize("obs, expected", [
    (cone(), "easy: one public endpoint for every peer"),
    (cone(mapped={"A1P1": (PUB, 30001), "A2P2": (PUB, 30002)}, samples=[(1, 30003), (2, 30004)]),
     "hard: port prediction"),
    (cone(mapped={"A1P1": (PUB, 30001), "A2P2": (PUB, 40002)}, samples=[(1, 50003), (2, 2004)]),
     "hard: birthday probing from the other side, else relay"),
])
def test_traversal_summary(obs, expected) -> None:
    assert verdict(obs).traversal == expected


@pytest.mark.parametrize("mapped, expected", [
    ({"A1P1": (PUB, 31234), "A2P2": (PUB, 31234)}, NatProfile(True, Allocation.RANDOM)),
    ({"A1P1": (PUB, 31234)}, NatProfile(False, Allocation.RANDOM)),
    ({"A1P1": (PUB, 31234), "A2P2": (PUB, 38001)}, NatProfile(False, Allocation.RANDOM)),
])
def test_a_port_range_nat_is_endpoint_independent_only_when_a_second_stun_address_shows_it(mapped, expected) -> None:
    """nft snat into a port range keeps one mapping per socket but draws its ports at random:
    one STUN address cannot tell that from a random port per destination."""
    samples = [(4000, 31234), (5123, 36017), (6000, 30555)]
    obs = Observations(local_ip="10.1.0.11", mapped=mapped, samples=samples)
    assert nat_profile(verdict(obs)) == expected


def test_the_relays_come_from_the_daemons_status_with_what_reached_them() -> None:
    status = {"self": {"relays": [
        {"name": "r1", "address": "203.0.113.20:7500", "tls_port": 443, "ready": True, "transport": "udp",
         "rtt_ms": 1.5},
        {"name": "r2", "address": "203.0.113.21:7500", "tls_port": None, "ready": True, "transport": "tcp",
         "rtt_ms": 3.0},
    ]}}
    targets = _daemon_relays(status)
    assert targets == {"r1": RelayTarget(("203.0.113.20", 7500), 443, 0.0015, udp_known=True),
                       "r2": RelayTarget(("203.0.113.21", 7500), None, None, udp_known=True)}
    assert _daemon_relays({}) == {}


def test_a_relay_named_with_both_families_is_checked_at_every_address_its_link_knows() -> None:
    status = {"self": {"relays": [
        {"name": "r1", "address": "203.0.113.20:7500", "addresses": ["[2001:db8:2::20]:7500", "203.0.113.20:7500"],
         "tls_port": 443, "ready": True, "transport": "udp", "rtt_ms": 1.5},
    ]}}
    target = _daemon_relays(status)["r1"]
    assert target.all == (("2001:db8:2::20", 7500), ("203.0.113.20", 7500))
    assert RelayTarget(("203.0.113.21", 7500)).all == (("203.0.113.21", 7500),), "an older daemon: its address alone"


def test_the_connect_check_races_the_addresses_and_times_the_first_to_answer() -> None:
    async def scenario():
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))  # bound, never listening: refuses
        try:
            won = await connect_time([("127.0.0.2", refused.getsockname()[1]), ("127.0.0.1", port)])
            none = await connect_time([("127.0.0.1", refused.getsockname()[1])])
        finally:
            refused.close()
            server.close()
        return won, none

    won, none = asyncio.run(scenario())
    assert won is not None, "the first address refused: the next one answered"
    assert none is None


def test_a_relay_line_names_every_transport_tried() -> None:
    result = verdict(Observations(relays={"r1": {"udp": None, "tcp": None, "tls": 0.0021}}))
    assert render(result).splitlines()[-1] == "relay r1: udp unreachable, tcp unreachable, tls 2.1 ms"


RELAY = ("r1", ("198.51.100.20", 7500))
COORD_STUN = ("192.0.2.53", 3478)
PORT_RANGE_SAMPLES = [(4000, 31234), (5123, 36017), (6000, 30555)]


def relay_asked(seen, relay=RELAY, **fields) -> Observations:
    """A port-range host's observations when the coord has one address and a relay answered too."""
    return Observations(local_ip="10.1.0.11", mapped={"A1P1": (PUB, 31234)}, samples=PORT_RANGE_SAMPLES,
                        server=COORD_STUN, relay=relay, relay_mapped=seen, **fields)


@pytest.mark.parametrize("seen, relay, mapping, profile", [
    ((PUB, 31234), RELAY, EIM, NatProfile(True, Allocation.RANDOM)),
    ((PUB, 38001), RELAY, ENDPOINT_DEPENDENT, NatProfile(False, Allocation.RANDOM)),
    ((PUB, 38001), ("r0", ("192.0.2.53", 7500)), APDM, NatProfile(False, Allocation.RANDOM)),
    ((PUB, 31234), ("r0", ("::ffff:192.0.2.53", 7500)), None, NatProfile(False, Allocation.RANDOM)),
    (None, RELAY, None, NatProfile(False, Allocation.RANDOM)),
])
def test_a_relay_stands_in_for_the_coords_alternate_address(seen, relay, mapping, profile) -> None:
    """The same mapped endpoint from the coord and a relay at another IP: endpoint-independent
    (RFC 5780 §4.3). A relay at the coord's IP proves only a difference; no answer proves nothing."""
    result = verdict(relay_asked(seen, relay))
    assert result.mapping == mapping
    assert result.mapping_source == (f"relay {relay[0]}" if mapping else None)
    assert nat_profile(result) == profile


def test_the_coords_alternate_address_decides_before_a_relay() -> None:
    obs = relay_asked((PUB, 38001))
    obs.mapped["A2P2"] = (PUB, 31234)
    result = verdict(obs)
    assert (result.mapping, result.mapping_source) == (EIM, "coord alternate address")


def test_the_report_names_the_source_of_the_mapping() -> None:
    lines = render(verdict(relay_asked((PUB, 31234)))).splitlines()
    assert "mapping: endpoint-independent mapping (from the relay r1)" in lines
    assert "port allocation: random" in lines


@pytest.mark.parametrize("relays, expected", [
    ([("a", ("203.0.113.9", 7500), False), ("b", ("198.51.100.20", 7500), True)], ("b", ("198.51.100.20", 7500))),
    ([("a", ("192.0.2.53", 7500), False), ("b", ("198.51.100.20", 7500), False)], ("b", ("198.51.100.20", 7500))),
    ([("a", ("2001:db8::20", 7500), True), ("b", ("198.51.100.20", 7500), False)], ("b", ("198.51.100.20", 7500))),
    ([("a", ("2001:db8::20", 7500), True)], None),
    ([], None),
])
def test_the_mapping_test_asks_the_home_relay_of_the_stun_family_at_another_ip(relays, expected) -> None:
    assert pick_relay(relays, COORD_STUN) == expected


def test_netcheck_asks_the_daemons_home_relay() -> None:
    status = {"self": {"relays": [
        {"name": "r1", "address": "203.0.113.20:7500", "home": False},
        {"name": "r2", "address": "203.0.113.21:7500", "home": True},
    ]}}
    assert mapping_relay(_daemon_relays(status), COORD_STUN) == ("r2", ("203.0.113.21", 7500))
