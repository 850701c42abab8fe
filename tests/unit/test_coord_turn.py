"""The membership core offers TURN servers: a REST API credential per node, refreshed, and relayed addresses passed on."""

import base64
import hashlib
import hmac

import pytest

from meshvpn import keys
from meshvpn.control import messages as m
from meshvpn.coord.membership import Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network
from meshvpn.coord.turncreds import CREDENTIAL_LIFETIME, CREDENTIAL_REFRESH, TurnSecret

NOW = 1_700_000_000.0
TURN = (TurnSecret("turn-1", "203.0.113.30", 3478, b"S"),)
A, B = bytes([7]) * 32, bytes([8]) * 32
RELAYED = m.Endpoint("203.0.113.30", 50001)


def membership():
    settings = MembershipSettings((Network("home", "10.77.0.0/24"),), (), TURN, keepalive=10.0)
    core = Membership(MemoryStore(), settings, NOW)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    return core, token


def sent(core, conn=None):
    return [a.message for a in core.actions() if isinstance(a, Send) and conn in (None, a.conn_id)]


def join(core, token, conn, key, name):
    core.node_connected(conn, key, "198.51.100.7", NOW)
    core.receive(conn, m.encode(m.Register(name, "0.1", (), auth_key=token)), NOW)


def check(servers, key, now):
    """coturn's use-auth-secret would accept the credential until CREDENTIAL_LIFETIME from `now`."""
    [server] = servers
    assert (server.name, server.host, server.port) == ("turn-1", "203.0.113.30", 3478)
    expiry, _, node = server.username.partition(":")
    assert int(expiry) == server.expires == int(now + CREDENTIAL_LIFETIME) and node == keys.encode_key(key)
    assert server.password == base64.b64encode(hmac.new(b"S", server.username.encode(), hashlib.sha1).digest()).decode()


def test_registered_carries_a_turn_credential_and_fresh_ones_follow():
    core, token = membership()
    join(core, token, "a", A, "a")
    registered = sent(core)[0]
    check(registered.turn, A, NOW)
    due = NOW + CREDENTIAL_REFRESH
    assert core.get_timer() == pytest.approx(due)
    core.receive("a", m.encode(m.Ping()), due)
    core.handle_timer(due)
    [fresh] = [msg for msg in sent(core) if isinstance(msg, m.RelayTokens)]
    check(fresh.turn, A, due)


def test_relayed_addresses_reach_online_peers_and_vanish_when_the_node_leaves():
    core, token = membership()
    join(core, token, "a", A, "a")
    join(core, token, "b", B, "b")
    core.actions()
    core.receive("a", m.encode(m.TurnRelayed((RELAYED,))), NOW + 1)
    [update] = sent(core, "b")
    assert update.peer.key == A and update.peer.turn_relayed == (RELAYED,)
    core.receive("a", m.encode(m.TurnRelayed((RELAYED,))), NOW + 2)
    assert sent(core, "b") == []
    core.node_disconnected("a", NOW + 3)
    [gone] = sent(core, "b")
    assert gone.peer.online is False and gone.peer.turn_relayed is None


def test_without_turn_servers_nothing_changes_on_the_wire():
    core = Membership(MemoryStore(), MembershipSettings((Network("home", "10.77.0.0/24"),), keepalive=10.0), NOW)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(core, token, "a", A, "a")
    registered = sent(core)[0]
    assert registered.turn is None and "turn" not in registered.to_json()
