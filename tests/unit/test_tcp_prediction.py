"""TCP port prediction without sockets: the sans-IO rules, and two nodes that meet above a sample."""

from __future__ import annotations

import random

import pytest

from meshvpn.control import messages as m
from meshvpn.node.events import TcpAbort, TcpConnect, TcpPathChanged, TcpSampleWanted
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.prediction import PORT_SPACE, Allocation, NatProfile
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.node.tcp.prediction import (
    Dial, HardSide, SendSample, TcpPrediction, TcpPredictionConfig, hard_side, predicted_ports,
)
from meshvpn.sim.nodes import ALICE_AT, BOB_AT
from meshvpn.wire import Endpoint
from test_node import move_bytes, taken, tcp_info, tcp_nodes

PEER = b"\x02" * 32
SAMPLE = Endpoint("203.0.113.7", 40000)
SEQUENTIAL = NatProfile(endpoint_independent=False, allocation=Allocation.SEQUENTIAL)


# ---- the rules -------------------------------------------------------------------------------


def test_a_peer_s_sample_is_dialled_once_across_the_window_above_it() -> None:
    p = TcpPrediction(random.Random(1).randrange, TcpPredictionConfig(window=4))
    easy = {"peer_random": False, "hard": HardSide.NO}
    window = tuple(Endpoint(SAMPLE.host, port) for port in (40001, 40002, 40003, 40004))
    assert p.punched(PEER, SAMPLE, now=0.0, **easy) == [Dial(PEER, window)]
    assert p.punched(PEER, SAMPLE, now=0.5, **easy) == [], "the coord's punches within the sample's life repeat it"
    newer = Endpoint(SAMPLE.host, 40100)
    assert p.punched(PEER, newer, now=3.0, **easy) == [Dial(PEER, predicted_ports(newer, 4))]
    assert p.punched(PEER, None, now=9.0, **easy) == []


def test_the_window_stops_at_the_last_port() -> None:
    assert [e.port for e in predicted_ports(Endpoint("192.0.2.1", 65533), 16)] == [65534, 65535]


def test_the_hard_side_samples_at_most_once_per_gap_and_dials_from_new_ports_before_telling_the_peer() -> None:
    p = TcpPrediction(random.Random(1).randrange, TcpPredictionConfig(sample_gap=2.0))
    hard = {"peer_random": False, "hard": HardSide.SEQUENTIAL}
    assert p.punched(PEER, None, now=10.0, **hard) == [TcpSampleWanted(PEER)]
    assert p.punched(PEER, None, now=10.1, **hard) == [], "the punch answering our own request"
    assert p.punched(PEER, None, now=11.9, **hard) == []
    assert p.punched(PEER, None, now=12.0, **hard) == [TcpSampleWanted(PEER)]
    peer_at = (Endpoint("198.51.100.2", 41641),)
    assert p.sampled(PEER, SAMPLE, peer_at) == [Dial(PEER, peer_at, fresh_port=True), SendSample(PEER, SAMPLE)]
    assert p.sampled(PEER, None, peer_at) == [], "no sample: the ordinary campaign goes on alone"
    assert p.sampled(b"\x09" * 32, SAMPLE, peer_at) == [], "a peer we never punched"
    assert p.counters == {"samples": 2, "predicted": 0}


def test_the_easy_side_never_samples() -> None:
    p = TcpPrediction(random.Random(1).randrange)
    assert p.punched(PEER, None, peer_random=False, hard=HardSide.NO, now=0.0) == []
    assert p.counters == {"samples": 0, "predicted": 0}


# ---- two nodes: alice behind a sequential NAT, bob at a site that drops UDP ------------------------


@pytest.fixture
def nodes():
    a, b = tcp_nodes()
    a.node.set_nat_profile(SEQUENTIAL)
    return a, b


def test_a_sequential_side_and_a_udp_blocked_one_meet_right_above_the_sample(nodes) -> None:
    a, b = nodes
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
    b.from_coord(m.Punch(peer_key=a.public, endpoints=()), 0.0)
    assert taken(a, TcpSampleWanted) == [TcpSampleWanted(b.public)]
    assert taken(b, TcpSampleWanted) == [], "bob's NAT keeps its ports"
    ordinary = [c.endpoint for c in taken(a, TcpConnect)], [c.endpoint for c in taken(b, TcpConnect)]
    assert ordinary == ([BOB_AT], [ALICE_AT]), "the ordinary campaigns go on as before"

    sample = Endpoint(ALICE_AT[0], 40000)
    a.node.tcp_sampled(b.public, sample, 0.05)
    a.drain(0.05)
    (fresh,) = taken(a, TcpConnect)
    assert (fresh.endpoint, fresh.fresh_port) == (BOB_AT, True)
    assert a.coord_out[-1] == m.PunchRequest(peer_key=b.public, tcp_sample=m.Endpoint(*sample))

    b.from_coord(m.Punch(peer_key=a.public, endpoints=(), tcp_sample=m.Endpoint(*sample)), 0.1)
    fan = taken(b, TcpConnect)
    assert [c.endpoint.port for c in fan] == list(range(40001, 40017))
    assert not any(c.fresh_port for c in fan), "from the punch port, whose mapping alice's SYN went to"
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.1)
    assert taken(a, TcpSampleWanted) == [], "the punch answering alice's own request"

    hit = fan[0]  # alice's NAT gave her new connection the port right above the sample
    a.node.tcp_connected(fresh.conn_id, 0.2)
    a.drain(0.2)
    b.node.tcp_connected(hit.conn_id, 0.2)
    b.drain(0.2)
    move_bytes(a, fresh.conn_id, b, hit.conn_id, 0.2)
    assert b.peers.by_key[a.public].route.path.kind is PathKind.TCP
    assert b.peers.by_key[a.public].route.endpoint == TcpEndpoint(ALICE_AT[0], 40001)
    assert a.peers.by_key[b.public].route.path.kind is PathKind.TCP
    aborted = {x.conn_id for x in taken(b, TcpAbort)}
    assert {c.conn_id for c in fan[1:]} <= aborted, "the other predicted ports are given up at once"
    assert any(isinstance(e, TcpPathChanged) and e.endpoint is not None for e in b.events)


def test_a_peer_reachable_over_udp_gets_no_tcp_sample(nodes) -> None:
    a, b = nodes
    info = tcp_info(b)
    a.from_coord(m.PeerUpdate(peer=m.PeerInfo(**{**info.__dict__, "public_endpoint": m.Endpoint(*BOB_AT)})), 0.0)
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
    assert taken(a, TcpSampleWanted) == [], "UDP prediction serves that peer; a TCP sample would move the NAT"


def test_when_no_predicted_port_answers_a_new_punch_brings_a_new_sample(nodes) -> None:
    a, b = nodes
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
    taken(a, TcpSampleWanted)
    a.node.tcp_sampled(b.public, Endpoint(ALICE_AT[0], 40000), 0.05)
    a.drain(0.05)
    for connect in taken(a, TcpConnect):
        a.node.tcp_connect_failed(connect.conn_id, 2.6)
    a.drain(2.6)
    a.coord_out.clear()
    for now in (2.6 + 0.25 * step for step in range(1, 60)):
        a.node.handle_timer(now)
        a.drain(now)
        for connect in taken(a, TcpConnect):
            a.node.tcp_connect_failed(connect.conn_id, now)
            a.drain(now)
    assert m.PunchRequest(peer_key=b.public) in a.coord_out, "the campaign's repunch"
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 18.0)
    assert taken(a, TcpSampleWanted) == [TcpSampleWanted(b.public)]


# ---- random ports: a bounded birthday campaign ------------------------------------------------


def test_a_random_port_peer_s_sample_makes_us_connect_to_random_ports_of_its_address() -> None:
    rng = random.Random(7)
    p = TcpPrediction(rng.randrange, TcpPredictionConfig(birthday_guesses=300))
    (dial,) = p.punched(PEER, SAMPLE, peer_random=True, hard=HardSide.NO, now=0.0)
    ports = [e.port for e in dial.endpoints]
    assert not dial.fresh_port and {e.host for e in dial.endpoints} == {SAMPLE.host}
    assert 280 <= len(ports) == len(set(ports)) <= 300 and all(PORT_SPACE[0] <= port < PORT_SPACE[1] for port in ports)
    assert p.punched(PEER, SAMPLE, peer_random=True, hard=HardSide.NO, now=0.5) == []


def test_a_random_port_side_opens_its_mappings_towards_the_peer_s_public_endpoint() -> None:
    p = TcpPrediction(random.Random(1).randrange, TcpPredictionConfig(birthday_sockets=8))
    assert p.punched(PEER, None, peer_random=False, hard=HardSide.RANDOM, now=0.0) == [TcpSampleWanted(PEER)]
    mapped, public = Endpoint("198.51.100.2", 50000), Endpoint("198.51.100.2", 41641)
    assert p.sampled(PEER, SAMPLE, (mapped, public)) == [Dial(PEER, (public,) * 8, fresh_port=True),
                                                          SendSample(PEER, SAMPLE)]


def test_the_campaign_s_bounds_give_the_documented_chance() -> None:
    config = TcpPredictionConfig()
    assert (config.birthday_sockets, config.birthday_guesses) == (256, 768)
    assert config.birthday_probability() == pytest.approx(0.953, abs=0.001)


@pytest.mark.parametrize("profile, side", [
    (NatProfile(), HardSide.NO),
    (NatProfile(endpoint_independent=True, allocation=Allocation.RANDOM), HardSide.NO),
    (SEQUENTIAL, HardSide.SEQUENTIAL),
    (NatProfile(endpoint_independent=False, allocation=Allocation.RANDOM), HardSide.RANDOM),
])
def test_which_side_samples(profile, side) -> None:
    assert hard_side(profile) is side


def test_a_random_port_side_and_a_udp_blocked_one_run_one_bounded_campaign() -> None:
    a, b = tcp_nodes()
    a.node.set_nat_profile(NatProfile(endpoint_independent=False, allocation=Allocation.RANDOM))
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
    assert taken(a, TcpSampleWanted) == [TcpSampleWanted(b.public)]
    taken(a, TcpConnect)
    sample = Endpoint(ALICE_AT[0], 51234)
    a.node.tcp_sampled(b.public, sample, 0.05)
    a.drain(0.05)
    opened = taken(a, TcpConnect)
    assert len(opened) == 256 and {(c.endpoint, c.fresh_port) for c in opened} == {(BOB_AT, True)}
    random_nat = m.NatInfo(endpoint_independent=False, allocation="random")
    b.from_coord(m.Punch(peer_key=a.public, endpoints=(), nat=random_nat, tcp_sample=m.Endpoint(*sample)), 0.1)
    guesses = [c for c in taken(b, TcpConnect) if c.endpoint != ALICE_AT]
    assert 700 <= len(guesses) <= 768 and {c.endpoint.host for c in guesses} == {ALICE_AT[0]}


def test_a_peer_known_by_no_tcp_endpoint_is_still_dialled_above_its_sample() -> None:
    """A dual-stack peer registers over IPv6, so the coord never saw its punch port's IPv4 mapping
    (`public_tcp`); its TCP sample is all there is to go by."""
    a, b = tcp_nodes()
    info = tcp_info(a)
    b.from_coord(m.PeerUpdate(peer=m.PeerInfo(**{**info.__dict__, "public_tcp": None})), 0.0)
    sample = m.Endpoint(ALICE_AT[0], 40000)
    b.from_coord(m.Punch(peer_key=a.public, endpoints=()), 0.0)
    assert taken(b, TcpConnect) == [], "nowhere to connect"
    b.from_coord(m.Punch(peer_key=a.public, endpoints=(), tcp_sample=sample), 0.1)
    assert [c.endpoint.port for c in taken(b, TcpConnect)] == list(range(40001, 40017))


def test_a_lost_tcp_path_makes_the_next_punch_sample_and_dial_again() -> None:
    """A NAT re-mapped one of us: the sample taken (and the peer's dialled) before say nothing now."""
    p = TcpPrediction(random.Random(1).randrange, TcpPredictionConfig(window=2, sample_gap=2.0))
    hard = {"peer_random": False, "hard": HardSide.SEQUENTIAL}
    assert p.punched(PEER, SAMPLE, now=10.0, **hard)[-1] == TcpSampleWanted(PEER)
    assert p.punched(PEER, SAMPLE, now=10.5, **hard) == [], "within the gap, a sample dialled before"
    p.path_lost(PEER)
    assert p.punched(PEER, SAMPLE, now=10.6, **hard) == [Dial(PEER, predicted_ports(SAMPLE, 2)), TcpSampleWanted(PEER)]
