"""Issue 13 at the coord's core: what a client with a throwaway key or a member can no longer do.

Each test here failed on the code before the fix: an unregistered connection lived for ever on
pings, any endpoint a node reported reached its peers, and punch requests had no limit.
"""

import pytest

from meshvpn.control import messages as m
from meshvpn.coord.connstate import PUNCH_BURST, PUNCH_RATE, REGISTER_TIMEOUT, ConnEvent, ConnState, Connection
from meshvpn.errors import LocalProtocolError
from meshvpn.metrics import coord_families
from test_coord_membership import KEEPALIVE, LAN, NOW, STUN, Server, key

SENSELESS = (
    m.Endpoint("127.0.0.1", 41641),
    m.Endpoint("169.254.10.1", 41641),
    m.Endpoint("224.0.0.251", 5353),
    m.Endpoint("0.0.0.0", 41641),
    m.Endpoint("::1", 41641),
    m.Endpoint("fe80::1", 41641),
    m.Endpoint("255.255.255.255", 41641),
)
THIRD_PARTY = m.Endpoint("198.51.100.99", 443)
"""A public address that is not the node's own: not a LAN candidate."""


@pytest.fixture
def pair():
    server = Server()
    token = server.token(reusable=True)
    server.join(1, 1, "alice", token)
    server.join(2, 2, "bob", token, public=STUN)
    server.take(1)
    return server


def test_a_connection_that_only_pings_is_closed_at_the_register_deadline():
    server = Server()
    server.connect(7, 7, "198.51.100.7")
    for step in range(1, int(REGISTER_TIMEOUT)):
        server.send(7, m.Ping(), now=NOW + step)
        server.core.handle_timer(NOW + step)
        server.flush()
    assert 7 not in server.closed and server.core.get_timer() == NOW + REGISTER_TIMEOUT
    server.core.handle_timer(NOW + REGISTER_TIMEOUT)
    server.flush()
    assert server.closed[7].startswith("no register")
    assert REGISTER_TIMEOUT < 3 * KEEPALIVE, "the deadline must come before the silence limit"


def test_a_registered_node_is_not_held_to_the_register_deadline(pair):
    for step in range(1, 4):
        now = NOW + step * KEEPALIVE
        pair.send(1, m.Ping(), now=now)
        pair.send(2, m.Ping(), now=now)
        pair.core.handle_timer(now)
        pair.flush()
    assert pair.closed == {}


def test_senseless_endpoints_at_register_never_reach_peers():
    server = Server()
    token = server.token(reusable=True)
    server.join(1, 1, "alice", token)
    server.take(1)
    reported = SENSELESS[:6] + (THIRD_PARTY,) + LAN
    server.join(2, 2, "bob", token, endpoints=reported, public=m.Endpoint("127.0.0.1", 9))
    (update,) = server.take(1)
    assert update.peer.local_endpoints == LAN and update.peer.public_endpoint is None
    assert server.core.endpoints_dropped == 6 + 1 + 1


def test_senseless_endpoints_in_an_update_never_reach_peers(pair):
    pair.send(2, m.Endpoints(SENSELESS[-3:] + LAN, public=m.Endpoint("224.0.0.1", 41641)))
    (update,) = pair.take(1)
    assert update.peer.local_endpoints == LAN and update.peer.public_endpoint is None


def test_a_node_may_list_its_own_public_address_as_local():
    server = Server()
    token = server.token(reusable=True)
    server.join(1, 1, "alice", token)
    server.take(1)
    own = m.Endpoint("203.0.113.2", 41641)
    server.join(2, 2, "bob", token, host="203.0.113.2", endpoints=(own,))
    (update,) = server.take(1)
    assert update.peer.local_endpoints == (own,)


def test_a_senseless_port_sample_is_not_passed_on(pair):
    pair.send(2, m.PunchRequest(key(1), sample=m.Endpoint("127.0.0.1", 22)))
    (to_alice,) = pair.take(1)
    assert to_alice.sample is None and m.Endpoint("127.0.0.1", 22) not in to_alice.endpoints


def test_punch_requests_are_limited_per_node(pair):
    for _ in range(int(PUNCH_BURST) + 20):
        pair.send(1, m.PunchRequest(key(2)))
    assert len(pair.take(2)) == PUNCH_BURST
    assert pair.core.limited["punch_request"] == 20
    families = {(f.name, labels): v for f in coord_families(pair.core, ()) for labels, v in f.samples}
    assert families[("meshvpn_coord_rate_limited", ("punch_request",))] == 20
    pair.send(1, m.PunchRequest(key(2)), now=NOW + 1 / PUNCH_RATE)
    assert len(pair.take(2)) == 1


def test_connection_states_move_only_as_the_table_says():
    conn = Connection.opened_at(1, key(1), "203.0.113.1", NOW, None)
    conn.advance(ConnEvent.AWAITS_APPROVAL)
    assert conn.state is ConnState.PENDING and not conn.accepts(m.PunchRequest(key(2)))
    with pytest.raises(LocalProtocolError):
        conn.advance(ConnEvent.REGISTERED)
    conn.advance(ConnEvent.APPROVED)
    assert conn.state is ConnState.ONLINE and conn.accepts(m.PunchRequest(key(2)))
