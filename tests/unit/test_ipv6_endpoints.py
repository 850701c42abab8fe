"""IPv6 endpoints: which of the host's addresses a node announces, how they travel node → coord →
peers, and how a peer ranks an IPv6 path against an IPv4 one."""

import pytest

from meshvpn.control import messages as m
from meshvpn.coord.candidates import sane_ipv6
from meshvpn.node.candidates import Candidate, CandidateKind, candidates_of, tcp_candidates_of
from meshvpn.node.family import IPV6_SLACK, faster
from meshvpn.node.announce6 import announced
from meshvpn.node.ipv6 import interface_ipv6, select_ipv6
from meshvpn.wire import Endpoint
from test_coord_hardening import pair  # noqa: F401  (fixture)
from test_coord_membership import NOW, key

IF_INET6 = """\
20010db8000100000000000000000011 02 40 00 80     eth0
20010db8000100000000000000000099 02 40 00 01     eth0
20010db80001000000000000000000aa 02 40 00 40     eth0
20010db80001000000000000000000bb 02 40 00 20     eth0
fd000000000000000000000000000002 02 40 00 80     eth0
fe800000000000000000000000000001 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000900000000000000000001 05 40 00 80 meshvpn0
garbage line
"""


def test_global_addresses_are_announced_but_not_tentative_deprecated_ula_link_local_or_the_tun():
    addresses = interface_ipv6(IF_INET6)
    assert ("eth0", "2001:db8:1::11", 0x80) in addresses and len(addresses) == 8
    assert select_ipv6(addresses, 41641, ("meshvpn0",), allow_ula=False) == (
        Endpoint("2001:db8:1::11", 41641), Endpoint("2001:db8:1::99", 41641))  # a temporary address counts
    assert Endpoint("fd00::2", 41641) in select_ipv6(addresses, 41641, ("meshvpn0",), allow_ula=True)


def test_the_stun_mapping_is_announced_after_the_addresses_when_it_differs():
    local = (Endpoint("2001:db8:1::11", 41641),)
    assert announced(local, Endpoint("2001:db8:1::11", 41641)) == (m.Endpoint("2001:db8:1::11", 41641),)
    assert announced(local, Endpoint("2001:db8:ff::11", 41641)) == (
        m.Endpoint("2001:db8:1::11", 41641), m.Endpoint("2001:db8:ff::11", 41641))
    assert announced((), None) == ()


def test_the_coord_passes_on_native_routable_ipv6_only():
    good = m.Endpoint("2001:db8:1::11", 41641)
    bad = (m.Endpoint("::ffff:192.0.2.1", 41641), m.Endpoint("192.0.2.1", 41641), m.Endpoint("::1", 41641),
           m.Endpoint("fe80::1", 41641), m.Endpoint("ff02::1", 41641))
    assert sane_ipv6((*bad, good, good)) == (good,)
    assert sane_ipv6(None) == ()


def test_ipv6_endpoints_reach_the_peers_and_their_loss_too(pair):  # noqa: F811
    v6 = (m.Endpoint("2001:db8:2::11", 41641),)
    pair.send(2, m.Endpoints((), public=None, ipv6=v6))
    (update,) = pair.take(1)
    assert update.peer.ipv6_endpoints == v6
    pair.send(2, m.Endpoints((), public=None, ipv6=v6), now=NOW + 1)
    assert pair.take(1) == []
    pair.send(2, m.Endpoints((), public=None), now=NOW + 2)
    (update,) = pair.take(1)
    assert update.peer.ipv6_endpoints is None


def test_ipv6_endpoints_are_candidates_of_their_own_kind_beside_ipv4():
    info = m.PeerInfo(key(2), "bob", "100.80.0.2", True, public_endpoint=m.Endpoint("203.0.113.101", 5555),
                      ipv6_endpoints=(m.Endpoint("2001:db8:2::11", 41641),))
    assert candidates_of(info) == [
        Candidate(Endpoint("2001:db8:2::11", 41641), CandidateKind.IPV6),
        Candidate(Endpoint("203.0.113.101", 5555), CandidateKind.PUBLIC),
    ]


def test_tcp_punching_takes_the_ipv6_endpoints_after_the_tcp_mappings():
    """A global IPv6 address is untranslated: the peer's punch port is its UDP socket's port there."""
    info = m.PeerInfo(key(2), "bob", "100.80.0.2", True, public_tcp=m.Endpoint("203.0.113.101", 41641),
                      ipv6_endpoints=(m.Endpoint("2001:db8:2::11", 41641),))
    assert tcp_candidates_of(info) == [
        Candidate(Endpoint("203.0.113.101", 41641), CandidateKind.PUBLIC),
        Candidate(Endpoint("2001:db8:2::11", 41641), CandidateKind.IPV6),
    ]
    v6_only = m.PeerInfo(key(2), "bob", "100.80.0.2", True, ipv6_endpoints=(m.Endpoint("2001:db8:2::11", 41641),))
    assert tcp_candidates_of(v6_only) == [Candidate(Endpoint("2001:db8:2::11", 41641), CandidateKind.IPV6)]


def test_ipv6_wins_when_as_good_and_ipv4_must_beat_it_clearly():
    v4, v6 = Endpoint("203.0.113.101", 5555), Endpoint("2001:db8:2::11", 41641)
    assert faster(v6, 0.0215, v4, 0.020)  # within the slack: IPv6
    assert not faster(v6, 0.020 + IPV6_SLACK + 0.0001, v4, 0.020)
    assert not faster(v4, 0.019, v6, 0.020)  # 1 ms better is not enough to leave IPv6
    assert faster(v4, 0.020 - IPV6_SLACK - 0.0001, v6, 0.020)
    assert faster(v4, 0.019, v4, 0.020) and not faster(v4, 0.020, v4, 0.020)  # one family: the lower RTT


def race(candidates, answer_first):
    """A path finder punching `candidates` at 0.0, where only `answer_first` replies (after 50 ms):
    the path it picks, and every probe it sends until 3 s, as (time, endpoint)."""
    from itertools import count

    from meshvpn.node.pathfinder import PathFinder, SendProbe

    ids = count()
    finder = PathFinder(lambda: next(ids).to_bytes(8, "big"))
    finder.set_candidates(candidates, 0.0)
    finder.punch(0.0)
    sent = [(0.0, a) for a in finder.next_actions() if isinstance(a, SendProbe)]
    first = next(a for _, a in sent if a.endpoint == answer_first)
    finder.probe_reply_received(first.tx_id, answer_first, 0.05)
    finder.next_actions()
    now = 0.05
    while (now := finder.get_timer()) is not None and now < 3.0:
        finder.handle_timer(now)
        sent += [(now, a) for a in finder.next_actions() if isinstance(a, SendProbe)]
    return finder.current_path.endpoint, [(when, a.endpoint) for when, a in sent]


def test_after_a_pick_the_other_family_is_probed_until_the_race_window_ends():
    v4, v6 = Endpoint("203.0.113.20", 41641), Endpoint("2001:db8:2::11", 41641)
    picked, sent = race([Candidate(v6, CandidateKind.IPV6), Candidate(v4, CandidateKind.PUBLIC)], v6)
    assert picked == v6
    to_v4 = [when for when, endpoint in sent if endpoint == v4]
    assert to_v4 == pytest.approx([0.0, 0.25, 0.45, 0.65, 0.85])  # the first round, then every 0.2 s of the race
    assert all(endpoint == v6 for when, endpoint in sent if when > 0.0 and endpoint != v4)


def test_a_single_family_has_no_race():
    v4, other = Endpoint("203.0.113.20", 41641), Endpoint("198.51.100.20", 41641)
    picked, sent = race([Candidate(v4, CandidateKind.PUBLIC), Candidate(other, CandidateKind.PUBLIC)], v4)
    assert picked == v4 and [when for when, endpoint in sent if endpoint == other] == [0.0]


def test_netcheck_says_what_it_found_over_ipv6_in_one_line():
    from meshvpn.node.netcheck6 import Ipv6Report, render_ipv6

    assert render_ipv6(Ipv6Report()) == "IPv6: no global address"
    report = Ipv6Report(["2001:db8:1::b"], stun="[2001:db8:1::b]:41641", coord={"[2001:db8::a]:7400": 0.0004},
                        relays={"relay": "no IPv6 address", "r2": None})
    assert render_ipv6(report) == ("IPv6: global 2001:db8:1::b; STUN [2001:db8:1::b]:41641; coord [2001:db8::a]:7400 "
                                   "0.4 ms; relay r2 unreachable; relay relay no IPv6 address")
    silent = Ipv6Report(["2001:db8:1::b"], stun_error="timed out")
    assert render_ipv6(silent) == "IPv6: global 2001:db8:1::b; STUN no answer (timed out)"
