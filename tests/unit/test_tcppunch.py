"""TCP punching without sockets: two `TcpPunch` cores, a fake clock, bytes moved by hand."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.node.events import TcpAbort, TcpConnect, TcpWrite
from meshvpn.node.tcp.core import (
    PathDown,
    PathUp,
    TcpEndpoint,
    TcpPunch,
    TcpPunchConfig,
    WantPunch,
)
from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.noise import StaticIdentity
from meshvpn.wire import Endpoint

A_AT = Endpoint("198.51.100.1", 41641)
B_AT = Endpoint("198.51.100.2", 41641)


def public(endpoint: Endpoint) -> list[Candidate]:
    """A peer known by its NAT's mapping of its punch port only (``public_tcp``)."""
    return [Candidate(endpoint, CandidateKind.PUBLIC)]


def _identities() -> tuple[StaticIdentity, StaticIdentity]:
    """Two identities, the first with the lower public key (so it is the channel client)."""
    one, two = (StaticIdentity.from_private(bytes([n]) * 32) for n in (1, 2))
    return (one, two) if one.public < two.public else (two, one)


def _punch(identity: StaticIdentity, config: TcpPunchConfig | None = None) -> TcpPunch:
    counter = itertools.count()
    return TcpPunch(identity, lambda n: next(counter).to_bytes(n, "little"), 1_700_000_000.0, config)


def _only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def _pump(src: TcpPunch, src_conn: int, dst: TcpPunch, dst_conn: int, now: float) -> list[bytes]:
    """Deliver `src`'s writes on `src_conn` to `dst`; the messages `dst` got and the writes left."""
    got = []
    for action in src.next_actions():
        if isinstance(action, TcpWrite) and action.conn_id == src_conn:
            got += dst.data_received(dst_conn, action.data, now)
    return got


@pytest.fixture
def pair():
    """a (lower key) and b after a simultaneous open at t=0, with their connection ids."""
    ida, idb = _identities()
    a, b = _punch(ida), _punch(idb)
    a.punch(idb.public, public(B_AT), 0.0)
    b.punch(ida.public, public(A_AT), 0.0)
    ca = _only(a.next_actions(), TcpConnect)
    cb = _only(b.next_actions(), TcpConnect)
    assert (ca.endpoint, cb.endpoint) == (B_AT, A_AT)
    a.connected(ca.conn_id, 0.01)
    b.connected(cb.conn_id, 0.01)
    assert not [x for x in b.next_actions() if isinstance(x, TcpWrite)], "the higher key waits for the initiation"
    initiation = _only(a.next_actions(), TcpWrite)
    b.data_received(cb.conn_id, initiation.data, 0.02)
    response = [x for x in b.next_actions() if isinstance(x, TcpWrite)]
    for write in response:
        a.data_received(ca.conn_id, write.data, 0.03)
    a_actions = a.next_actions()
    assert _only(a_actions, PathUp) == PathUp(idb.public, TcpEndpoint(*B_AT))
    for write in a_actions:
        if isinstance(write, TcpWrite):
            b.data_received(cb.conn_id, write.data, 0.04)
    assert _only(b.next_actions(), PathUp) == PathUp(ida.public, TcpEndpoint(*A_AT))
    return a, b, ca.conn_id, cb.conn_id, ida, idb


def test_simultaneous_open_makes_a_path_on_both_sides_that_carries_messages(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    assert a.path_endpoint(idb.public) == TcpEndpoint(*B_AT)
    assert a.send(TcpEndpoint(*B_AT), [b"\x01\x03\x00\x00data", b"\x01\x05\x00\x00probe"], 1.0)
    assert _pump(a, ca, b, cb, 1.0) == [b"\x01\x03\x00\x00data", b"\x01\x05\x00\x00probe"]
    assert b.send(TcpEndpoint(*A_AT), [b"back"], 1.1)
    assert _pump(b, cb, a, ca, 1.1) == [b"back"]
    assert not a.send(TcpEndpoint(*A_AT), [b"x"], 1.2), "no path to an endpoint we are not connected to"
    assert a.counters == {"attempts": 1, "paths": 1, "failed": 0}


def test_keepalives_hold_the_path_and_silence_kills_it(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    assert a.get_timer() == pytest.approx(0.03 + 2.5)
    a.handle_timer(2.53)
    assert len(_pump(a, ca, b, cb, 2.53)) == 0, "an empty frame is delivered to nobody"
    assert b.get_timer() == pytest.approx(0.02 + 2.5), "b sent its last frame (the response) at 0.02"
    a.handle_timer(10.0)
    assert _only(a.next_actions(), TcpWrite).conn_id == ca, "a keepalive, late but not dead yet"
    assert a.get_timer() == pytest.approx(0.03 + 10.0), "a last heard b at 0.03"
    a.handle_timer(10.03)
    actions = a.next_actions()
    assert _only(actions, PathDown).peer_key == idb.public
    assert _only(actions, TcpAbort).conn_id == ca
    assert a.path_endpoint(idb.public) is None
    assert a.get_timer() == pytest.approx(10.03 + 2.0), "a lost path asks for a new punch"
    a.handle_timer(12.03)
    assert a.next_actions() == [WantPunch(idb.public)]


def test_a_closed_connection_ends_the_path_without_an_abort(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.connection_lost(ca, 5.0)
    assert a.next_actions() == [PathDown(idb.public, "connection closed")]


def test_failed_connects_retry_then_ask_for_a_punch_with_backoff() -> None:
    ida, idb = _identities()
    a = _punch(ida, TcpPunchConfig(attempts=3))
    a.punch(idb.public, public(B_AT), 0.0)
    first = _only(a.next_actions(), TcpConnect)
    assert first.timeout == 2.5
    a.connect_failed(first.conn_id, 0.05)
    assert a.get_timer() == pytest.approx(0.25)
    a.handle_timer(0.25)
    second = _only(a.next_actions(), TcpConnect)
    assert second.conn_id != first.conn_id
    assert a.get_timer() == pytest.approx(2.75), "a connect that never reports times out"
    a.handle_timer(2.75)
    assert _only(a.next_actions(), TcpAbort).conn_id == second.conn_id
    a.handle_timer(2.95)
    third = _only(a.next_actions(), TcpConnect)
    a.connect_failed(third.conn_id, 3.0)
    assert a.next_actions() == []
    assert a.get_timer() == pytest.approx(5.0)
    a.handle_timer(5.0)
    assert a.next_actions() == [WantPunch(idb.public)]
    a.punch(idb.public, public(B_AT), 6.0)
    for attempt in range(3):
        a.connect_failed(_only(a.next_actions(), TcpConnect).conn_id, 6.0 + attempt)
        a.handle_timer(6.0 + attempt + 0.2)
    assert a.get_timer() == pytest.approx(8.0 + 4.0), "the wait doubles"


def test_a_punch_during_a_campaign_does_not_start_a_second_connect() -> None:
    ida, idb = _identities()
    a = _punch(ida)
    a.punch(idb.public, public(B_AT), 0.0)
    _only(a.next_actions(), TcpConnect)
    a.punch(idb.public, public(B_AT), 0.1)
    assert a.next_actions() == []


def test_an_accepted_connection_from_the_punched_endpoint_becomes_the_path() -> None:
    ida, idb = _identities()
    a, b = _punch(ida), _punch(idb)
    b.punch(ida.public, public(A_AT), 0.0)
    b.next_actions()
    conn_b = b.accepted(A_AT, 0.1)
    assert conn_b is not None
    a.punch(idb.public, public(B_AT), 0.0)
    conn_a = _only(a.next_actions(), TcpConnect).conn_id
    a.connected(conn_a, 0.1)
    for _ in range(3):
        _pump(a, conn_a, b, conn_b, 0.2)
        _pump(b, conn_b, a, conn_a, 0.2)
    assert b.path_endpoint(ida.public) == TcpEndpoint(*A_AT)
    assert a.path_endpoint(idb.public) == TcpEndpoint(*B_AT)
    assert [x for x in b.next_actions() if isinstance(x, TcpAbort)] == [], "b's own connect attempt was aborted before"


def test_unknown_endpoints_are_served_only_for_punched_peers_with_lower_keys() -> None:
    ida, idb = _identities()
    a, b = _punch(ida), _punch(idb)
    stranger = Endpoint("192.0.2.9", 5555)
    assert b.accepted(stranger, 0.0) is None, "b punches nobody"
    assert a.accepted(stranger, 0.0) is None
    b.punch(ida.public, public(A_AT), 0.0)
    a.punch(idb.public, public(B_AT), 0.0)
    assert a.accepted(stranger, 0.0) is None, "a has the lower key: it is always the client"
    conn_b = b.accepted(stranger, 0.0)
    assert conn_b is not None
    other = StaticIdentity.from_private(b"\x07" * 32)
    mallory = _punch(other)
    mallory.punch(idb.public, public(B_AT), 0.0)
    conn_m = _only(mallory.next_actions(), TcpConnect).conn_id
    mallory.connected(conn_m, 0.0)
    _pump(mallory, conn_m, b, conn_b, 0.1)
    assert _only(b.next_actions(), TcpAbort).conn_id == conn_b, "a key b does not punch towards is refused"


def test_unmatched_connections_are_bounded() -> None:
    ida, idb = _identities()
    b = _punch(idb, TcpPunchConfig(max_unmatched=2))
    b.punch(ida.public, public(A_AT), 0.0)
    own = _only(b.next_actions(), TcpConnect).conn_id
    accepted = [b.accepted(Endpoint("192.0.2.9", 6000 + n), 0.0) for n in range(3)]
    assert accepted[2] is None and None not in accepted[:2]
    b.handle_timer(5.0)
    aborted = {x.conn_id for x in b.next_actions() if isinstance(x, TcpAbort)}
    assert aborted == {own, *accepted[:2]}, "silent strangers time out like a failed connect"


def test_stop_aborts_everything_and_reports_a_lost_path(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.stop(idb.public)
    assert a.next_actions() == [TcpAbort(ca), PathDown(idb.public, "not needed")]
    assert a.get_timer() is None
    a.punch(idb.public, public(B_AT), 9.0)
    assert isinstance(_only(a.next_actions(), TcpConnect), TcpConnect), "a later punch starts afresh"


def test_a_punch_for_a_peer_with_a_path_is_ignored(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.punch(idb.public, public(B_AT), 3.0)
    assert a.next_actions() == []


def test_tcp_endpoints_never_equal_udp_endpoints() -> None:
    tcp, udp = TcpEndpoint("203.0.113.5", 41641), Endpoint("203.0.113.5", 41641)
    assert tcp != udp and udp != tcp and not (tcp == udp) and not (udp == tcp)
    assert {udp: "udp", tcp: "tcp"}[tcp] == "tcp" and {udp: "udp", tcp: "tcp"}[udp] == "udp"
    assert tcp == TcpEndpoint("203.0.113.5", 41641) and Endpoint(*tcp) == udp
    assert f"{tcp[0]}:{tcp[1]}" == "203.0.113.5:41641"


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=6), client=st.booleans())
def test_garbage_on_a_connection_never_raises(chunks: list[bytes], client: bool) -> None:
    ida, idb = _identities()
    me, peer_at = (ida, B_AT) if client else (idb, A_AT)
    other = idb if client else ida
    node = _punch(me)
    node.punch(other.public, public(peer_at), 0.0)
    conn = _only(node.next_actions(), TcpConnect).conn_id
    node.connected(conn, 0.0)
    for chunk in chunks:
        assert node.data_received(conn, chunk, 0.1) == []
    actions = node.next_actions()
    assert not any(isinstance(x, PathUp) for x in actions)
    if any(isinstance(x, TcpAbort) for x in actions):
        assert node.data_received(conn, b"more", 0.2) == [], "a dropped connection takes no more bytes"


def test_a_path_found_silent_is_ended_and_punched_again(pair) -> None:
    """The path finder saw traffic go out and nothing come back (`meshvpn.node.silence`): long
    before `idle_timeout`, the connection is aborted and a punch asked for as for a lost path."""
    a, b, ca, cb, ida, idb = pair
    a.path_silent(ida.public, 1.0)
    assert a.next_actions() == [], "no path to that peer: nothing to end"
    a.path_silent(idb.public, 1.0)
    actions = a.next_actions()
    assert _only(actions, PathDown) == PathDown(idb.public, "silent under traffic")
    assert _only(actions, TcpAbort).conn_id == ca
    assert a.path_endpoint(idb.public) is None
    assert a.get_timer() == pytest.approx(1.0 + 2.0)
    a.handle_timer(3.0)
    assert a.next_actions() == [WantPunch(idb.public)]
