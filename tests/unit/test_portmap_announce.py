"""A router port mapping travels node → coord → peers, and becomes a candidate of its own kind."""

from meshvpn.control import messages as m
from meshvpn.node.candidates import Candidate, CandidateKind, candidates_of
from meshvpn.node.portmap.shell import default_gateway
from meshvpn.wire import Endpoint
from test_coord_hardening import pair  # noqa: F401  (fixture)
from test_coord_membership import NOW, key

MAPPED = m.Endpoint("203.0.113.100", 41641)


def test_a_mapping_in_endpoints_reaches_the_peers_and_its_loss_too(pair):  # noqa: F811
    pair.send(2, m.Endpoints((), public=None, mapped=MAPPED))
    (update,) = pair.take(1)
    assert update.peer.mapped_endpoint == MAPPED
    pair.send(2, m.Endpoints((), public=None, mapped=MAPPED), now=NOW + 1)
    assert pair.take(1) == []  # nothing changed: nothing announced
    pair.send(2, m.Endpoints((), public=None), now=NOW + 2)
    (update,) = pair.take(1)
    assert update.peer.mapped_endpoint is None


def test_a_senseless_mapping_is_not_passed_on(pair):  # noqa: F811
    pair.send(2, m.Endpoints((), public=None, mapped=m.Endpoint("127.0.0.1", 22)))
    assert all(u.peer.mapped_endpoint is None for u in pair.take(1))


def test_the_mapped_endpoint_is_a_candidate_of_its_own_kind():
    info = m.PeerInfo(key(2), "bob", "100.80.0.2", True, local_endpoints=(m.Endpoint("10.2.0.11", 41641),),
                      public_endpoint=m.Endpoint("203.0.113.101", 5555), mapped_endpoint=MAPPED)
    assert candidates_of(info)[:3] == [
        Candidate(Endpoint("10.2.0.11", 41641), CandidateKind.LAN),
        Candidate(Endpoint(MAPPED.host, MAPPED.port), CandidateKind.MAPPED),
        Candidate(Endpoint("203.0.113.101", 5555), CandidateKind.PUBLIC),
    ]


def test_the_default_gateway_comes_from_the_kernels_route_table(tmp_path):
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t0001010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0101010A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert default_gateway(str(table)) == "10.1.1.1"
    table.write_text("Iface\tDestination\tGateway\n")
    assert default_gateway(str(table)) is None
    assert default_gateway(str(tmp_path / "missing")) is None


def test_a_mapped_node_probes_candidates_only_and_opens_no_birthday_sockets():
    from meshvpn.node.candidates import AnswerFirst
    from meshvpn.node.prediction import Allocation, NatProfile
    from meshvpn.node.traversal import Traversal

    traversal = Traversal(lambda lo, hi: lo, 0.2)
    traversal.local = NatProfile(False, Allocation.RANDOM)
    peer, easy, sequential = key(2), None, m.NatInfo(False, "sequential")
    traversal.set_peer_nat(peer, easy)
    assert traversal.hard_side(peer) and traversal.open_mappings(peer, 0.0)  # birthday side without a mapping
    traversal.mapped = True
    assert not traversal.hard_side(peer) and not traversal.open_mappings(peer, 100.0)
    traversal.set_peer_nat(peer, sequential)
    strategy = traversal.strategy(peer)
    assert isinstance(strategy, AnswerFirst)
    sample = Candidate(Endpoint("198.51.100.2", 40000), CandidateKind.PUBLIC)
    assert strategy.targets([sample], 10) == [sample]  # no ports above the peer's sample


MAPPED_TCP = m.Endpoint("203.0.113.100", 50000)


def test_a_tcp_mapping_travels_like_the_udp_one_and_is_checked_the_same_way(pair):  # noqa: F811
    pair.send(2, m.Endpoints((), public=None, mapped=MAPPED, mapped_tcp=MAPPED_TCP))
    (update,) = pair.take(1)
    assert (update.peer.mapped_endpoint, update.peer.mapped_tcp) == (MAPPED, MAPPED_TCP)
    pair.send(2, m.Endpoints((), public=None, mapped=MAPPED), now=NOW + 1)
    (update,) = pair.take(1)
    assert update.peer.mapped_tcp is None and update.peer.mapped_endpoint == MAPPED
    pair.send(2, m.Endpoints((), public=None, mapped=MAPPED, mapped_tcp=m.Endpoint("127.0.0.1", 22)), now=NOW + 2)
    assert all(u.peer.mapped_tcp is None for u in pair.take(1))


def test_tcp_punching_dials_the_tcp_mapping_first_as_a_candidate_of_its_own_kind():
    from meshvpn.node.candidates import tcp_candidates_of
    from meshvpn.node.ctl import format_status

    public_tcp = m.Endpoint("203.0.113.100", 41641)
    info = m.PeerInfo(key(2), "bob", "100.80.0.2", True, public_tcp=public_tcp, mapped_tcp=MAPPED_TCP)
    assert tcp_candidates_of(info) == [Candidate(Endpoint(MAPPED_TCP.host, MAPPED_TCP.port), CandidateKind.MAPPED),
                                       Candidate(Endpoint(public_tcp.host, public_tcp.port), CandidateKind.PUBLIC)]
    assert tcp_candidates_of(m.PeerInfo(key(2), "bob", "100.80.0.2", True)) == []
    status = {"self": {"name": "alice", "coord": "connected", "port_mapping": {
        "external": "203.0.113.100:41641", "protocol": "pcp", "tcp": {"external": "203.0.113.100:50000",
                                                                       "protocol": "nat-pmp"}}}, "peers": []}
    assert "mapped 203.0.113.100:41641 (pcp)   mapped tcp 203.0.113.100:50000 (nat-pmp)" in format_status(status)
