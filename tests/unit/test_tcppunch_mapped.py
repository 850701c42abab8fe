"""TCP punching towards a router's port mapping (``mapped_tcp``): its candidates in turn, and the
mapped side waiting for the peer to come through its router."""

from __future__ import annotations

import random
from dataclasses import replace

from meshvpn.control import messages as m
from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.node.events import TcpConnect, TcpWrite
from meshvpn.node.tcp.core import TcpEndpoint, TcpPunch
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, seeded
from meshvpn.wire import Endpoint
from test_node import move_bytes, taken, tcp_info
from test_tcppunch import A_AT, B_AT, _identities, _only, _punch

A_MAPPED = Endpoint("198.51.100.1", 50000)
"""a's router forwards this TCP port to a's punch port (A_AT is its NAT's mapping of that port)."""
B_FROM = Endpoint("198.51.100.2", 61000)
"""A port b's NAT picked for b's connection to a's mapping."""


def candidates_of_a() -> list[Candidate]:
    return [Candidate(A_MAPPED, CandidateKind.MAPPED), Candidate(A_AT, CandidateKind.PUBLIC)]


def handshake(one: TcpPunch, one_conn: int, other: TcpPunch, other_conn: int, now: float) -> None:
    """Move channel bytes both ways until neither has any to send."""
    for _ in range(4):
        for src, src_conn, dst, dst_conn in ((one, one_conn, other, other_conn), (other, other_conn, one, one_conn)):
            for action in src.next_actions():
                if isinstance(action, TcpWrite) and action.conn_id == src_conn:
                    dst.data_received(dst_conn, action.data, now)


def test_the_peers_router_mapping_is_tried_first_then_its_nat_mapping_in_turn() -> None:
    ida, idb = _identities()
    b = _punch(idb)
    b.punch(ida.public, candidates_of_a(), 0.0)
    first = _only(b.next_actions(), TcpConnect)
    assert first.endpoint == A_MAPPED
    b.connect_failed(first.conn_id, 2.5)
    b.handle_timer(2.7)
    assert _only(b.next_actions(), TcpConnect).endpoint == A_AT
    assert b.status()[ida.public.hex()[:8]]["endpoints"] == ["198.51.100.1:50000 (mapped)", "198.51.100.1:41641 (public)"]


def test_a_punch_while_a_connect_waits_on_the_nat_mapping_dials_the_router_mapping_beside_it() -> None:
    ida, idb = _identities()
    b = _punch(idb)
    b.punch(ida.public, candidates_of_a(), 0.0)
    refused = _only(b.next_actions(), TcpConnect)  # a still held its old path: its punch port said no
    b.connect_failed(refused.conn_id, 0.1)
    b.handle_timer(0.35)
    waiting = _only(b.next_actions(), TcpConnect)
    assert waiting.endpoint == A_AT  # a's NAT lets it in only once a connects too, which a mapped a never does
    b.punch(ida.public, candidates_of_a(), 0.4)  # a seeks a path now: its mapping takes us
    assert _only(b.next_actions(), TcpConnect).endpoint == A_MAPPED
    b.punch(ida.public, candidates_of_a(), 0.5)  # both pending: nothing more
    assert [x for x in b.next_actions() if isinstance(x, TcpConnect)] == []


def test_a_mapped_node_waits_for_the_peer_and_takes_its_connection_through_the_router() -> None:
    for a_key_lower in (True, False):
        low, high = _identities()
        ida, idb = (low, high) if a_key_lower else (high, low)
        a, b = _punch(ida), _punch(idb)
        a.mapped = True
        a.punch(idb.public, [Candidate(B_AT, CandidateKind.PUBLIC)], 0.0)
        assert [x for x in a.next_actions() if isinstance(x, TcpConnect)] == [], "a's own SYN would clash on its router"
        b.punch(ida.public, candidates_of_a(), 0.0)
        connect = _only(b.next_actions(), TcpConnect)
        assert connect.endpoint == A_MAPPED
        accepted = a.accepted(B_FROM, 0.05)  # b's NAT picked a new port: a knows b by its address
        assert accepted is not None
        b.connected(connect.conn_id, 0.05)
        handshake(a, accepted, b, connect.conn_id, 0.1)
        assert a.path_endpoint(idb.public) == TcpEndpoint(*B_FROM)
        assert b.path_endpoint(ida.public) == TcpEndpoint(*A_MAPPED)


def test_a_mapped_node_dials_a_peer_that_has_a_mapping_too() -> None:
    ida, idb = _identities()
    a = _punch(ida)
    a.mapped = True
    a.punch(idb.public, [Candidate(Endpoint("198.51.100.2", 50001), CandidateKind.MAPPED)], 0.0)
    assert _only(a.next_actions(), TcpConnect).endpoint == Endpoint("198.51.100.2", 50001)


def test_a_connection_from_an_address_two_punched_peers_share_is_not_guessed() -> None:
    ida, idb = _identities()
    a = _punch(ida)
    a.mapped = True
    for n in (5, 6):
        a.punch(bytes([0xff, n]) * 16, [Candidate(Endpoint("198.51.100.2", 41000 + n), CandidateKind.PUBLIC)], 0.0)
    assert a.accepted(Endpoint("198.51.100.2", 61000), 0.0) is None  # a has the lower key: it serves nobody unknown


# ---- through the node: its own mapping from the daemon, the peer's from the coord

ALICE_MAPPED = Endpoint(ALICE_AT[0], 50000)


def welcome_with(n, info: m.PeerInfo) -> None:
    n.from_coord(m.Registered(node_key=n.public, name=n.name, address=n.address, network=NETWORK), 0.0)
    n.from_coord(m.PeerMap(peers=(info,)), 0.0)


def mapped_pair(alice_public: Endpoint | None):
    """alice's router maps her punch port (ALICE_MAPPED); both nodes get the coord's punch."""
    a, b = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT), seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT)
    a.node.set_own_endpoints((), alice_public, None, ALICE_MAPPED)
    for n, other in ((a, b), (b, a)):
        n.node.enable_tcp_punch()
        info = tcp_info(other)
        welcome_with(n, replace(info, mapped_tcp=m.Endpoint(*ALICE_MAPPED)) if other is a else info)
    a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
    b.from_coord(m.Punch(peer_key=a.public, endpoints=()), 0.0)
    return a, b


def test_the_node_with_the_mapping_waits_and_its_peer_connects_to_the_mapping() -> None:
    a, b = mapped_pair(alice_public=None)  # UDP blocked: no STUN answer, the mapping is trusted
    assert taken(a, TcpConnect) == []
    assert [c.endpoint for c in taken(b, TcpConnect)] == [ALICE_MAPPED]


def test_a_mapping_behind_another_nat_does_not_stop_the_node_from_connecting() -> None:
    a, b = mapped_pair(alice_public=Endpoint("203.0.113.99", 41641))  # STUN saw another address
    assert [c.endpoint for c in taken(a, TcpConnect)] == [BOB_AT]


# ---- the peer's coord link is IPv6, we have no IPv6: it has no TCP candidate we can reach

PEER_NAT = "203.0.113.101"
"""The peer's NAT's IPv4 address, as STUN saw it for its UDP socket; a new port for every connection."""


def ipv6_registered(n) -> m.PeerInfo:
    """The peer as the coord sees it when it registered over IPv6: no IPv4 TCP mapping (``public_tcp``),
    its global IPv6 address, and its NAT's IPv4 mapping of its UDP socket from STUN."""
    return m.PeerInfo(key=n.public, name=n.name, address=n.address, online=True,
                      public_endpoint=m.Endpoint(PEER_NAT, 29553), observed_host="2001:db8:1::b",
                      ipv6_endpoints=(m.Endpoint("2001:db8:1::b", 41641),))


def test_a_mapped_node_takes_a_peer_whose_every_tcp_candidate_is_ipv6_through_its_router() -> None:
    for mapped_first in (True, False):  # the mapped node's key is the lower, then the higher one
        one, two = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT), seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT)
        a, b = (one, two) if mapped_first else (two, one)
        a.node.set_own_endpoints((), None, None, ALICE_MAPPED)  # UDP blocked, IPv4 only, a router mapping
        for n in (a, b):
            n.node.enable_tcp_punch()
        welcome_with(a, ipv6_registered(b))
        welcome_with(b, replace(tcp_info(a), public_tcp=None, mapped_tcp=m.Endpoint(*ALICE_MAPPED)))
        a.from_coord(m.Punch(peer_key=b.public, endpoints=()), 0.0)
        b.from_coord(m.Punch(peer_key=a.public, endpoints=()), 0.0)
        assert taken(a, TcpConnect) == []
        (connect,) = [c for c in taken(b, TcpConnect) if c.endpoint == ALICE_MAPPED]
        b.node.tcp_connected(connect.conn_id, 0.05)
        b.drain(0.05)
        accepted = a.node.tcp_accepted(Endpoint(PEER_NAT, 61000), 0.05)
        assert accepted is not None, "the peer's connection through our router was refused"
        a.drain(0.05)
        move_bytes(a, accepted, b, connect.conn_id, 0.1)
        assert a.node.tcp.path_endpoint(b.public) == TcpEndpoint(PEER_NAT, 61000)
        assert b.node.tcp.path_endpoint(a.public) == TcpEndpoint(*ALICE_MAPPED)
