"""The membership core, driven frame by frame with a plain float clock."""

from collections import defaultdict

import pytest

from meshvpn.control import messages as m
from meshvpn.coord.membership import SAMPLE_LIFETIME, AdminError, Close, Log, Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network, SqliteStore
from meshvpn.keys import encode_key

NOW = 1_700_000_000.0
KEEPALIVE = 10.0
HOME = Network("home", "10.77.0.0/24")
LOCKED = Network("locked", "10.78.0.0/24", approval_required=True)
RELAY = m.RelayInfo("fra", "203.0.113.50", 7500, bytes([50]) * 32)
LAN = (m.Endpoint("192.168.1.20", 41641),)
STUN = m.Endpoint("198.51.100.20", 62000)


def key(n: int) -> bytes:
    return bytes([n]) * 32


class Server:
    """A Membership plus per-connection mailboxes of what it sent."""

    def __init__(self, store=None, networks=(HOME, LOCKED), now=NOW):
        self.store = store if store is not None else MemoryStore()
        settings = MembershipSettings(networks, (RELAY,), keepalive=KEEPALIVE)
        self.core = Membership(self.store, settings, now)
        self.inbox: dict[int, list[m.Message]] = defaultdict(list)
        self.closed: dict[int, str] = {}
        self.logs: list[Log] = []
        self.batches: list[list] = []

    def flush(self):
        batch = self.core.actions()
        self.batches.append(batch)
        for action in batch:
            if isinstance(action, Send):
                assert action.payload in (None, m.encode(action.message)), "a cached frame went stale"
                self.inbox[action.conn_id].append(action.message)
            elif isinstance(action, Close):
                self.closed[action.conn_id] = action.reason
            else:
                self.logs.append(action)

    def token(self, network="home", secret=bytes(32), **options):
        return self.core.create_auth_key(network, secret=secret, now=NOW, **options)[0]

    def connect(self, conn, n, host="203.0.113.10", now=NOW):
        self.core.node_connected(conn, key(n), host, now)
        self.flush()

    def send(self, conn, message, now=NOW):
        self.core.receive(conn, m.encode(message), now)
        self.flush()

    def join(self, conn, n, hostname=None, token=None, now=NOW, host=None, endpoints=LAN, public=None):
        self.connect(conn, n, host or f"203.0.113.{n}", now)
        register = m.Register(hostname or f"node{n}", "0.1.0", endpoints, token, public_endpoint=public)
        self.send(conn, register, now)
        return self.take(conn)

    def take(self, conn):
        messages, self.inbox[conn] = self.inbox[conn], []
        return messages


@pytest.fixture
def server():
    return Server()


@pytest.fixture
def pair(server):
    """Two online nodes of `home`: connections 1 and 2; mailboxes emptied."""
    token = server.token(reusable=True)
    server.join(1, 1, "alice", token)
    server.join(2, 2, "bob", token, public=STUN)
    server.take(1)
    return server


def test_first_node_gets_registered_and_an_empty_peer_map(server):
    registered, peer_map = server.join(1, 1, "Alice's Laptop", server.token())
    assert registered == m.Registered(
        key(1), "alice-s-laptop", "10.77.0.2", m.NetworkInfo("home", "10.77.0.0/24"), (RELAY,), path_reports=True,
        lan_party=True,
    )
    assert peer_map == m.PeerMap(())


def test_second_node_sees_the_first_and_the_first_hears_of_it(server):
    token = server.token(reusable=True)
    server.join(1, 1, "alice", token)
    registered, peer_map = server.join(2, 2, "bob", token, public=STUN)
    assert registered.address == "10.77.0.3"
    (alice,) = peer_map.peers
    assert (alice.key, alice.name, alice.online, alice.observed_host) == (key(1), "alice", True, "203.0.113.1")
    assert server.take(1) == [
        m.PeerUpdate(m.PeerInfo(key(2), "bob", "10.77.0.3", True, LAN, STUN, "203.0.113.2", None, NOW))
    ]


def test_same_hostname_gets_a_suffix(server):
    token = server.token(reusable=True)
    server.join(1, 1, "pc", token)
    assert server.join(2, 2, "PC", token)[0].name == "pc-2"


def test_known_node_reregisters_without_a_key_and_keeps_name_and_address(pair):
    pair.core.node_disconnected(1, NOW + 1)
    registered, peer_map = pair.join(3, 1, "renamed-host", now=NOW + 2)
    assert (registered.name, registered.address) == ("alice", "10.77.0.2")
    assert [p.key for p in peer_map.peers] == [key(2)]


@pytest.mark.parametrize(
    "token_options, register_at, code",
    [
        ({}, NOW, None),
        ({"expires_in": 60}, NOW + 60, "auth_key_expired"),
        ({"expires_in": 60}, NOW + 59, None),
    ],
)
def test_key_expiry(server, token_options, register_at, code):
    replies = server.join(1, 1, "alice", server.token(**token_options), now=register_at)
    if code is None:
        assert isinstance(replies[0], m.Registered) and 1 not in server.closed
    else:
        assert replies == [m.Error(code, replies[0].message)] and server.closed[1] == code


def test_one_off_key_admits_one_node(server):
    token = server.token()
    server.join(1, 1, "alice", token)
    (error,) = server.join(2, 2, "bob", token)
    assert error.code == "auth_key_used" and server.closed[2] == "auth_key_used"
    assert [n.name for n in server.store.nodes()] == ["alice"]


@pytest.mark.parametrize("token", [None, "mvk-000000000000-" + "A" * 43, "garbage"])
def test_unknown_node_without_a_valid_key_is_refused_and_not_stored(server, token):
    server.token()
    (error,) = server.join(1, 1, "alice", token)
    assert error.code == "auth_key_invalid" and server.closed[1] == "auth_key_invalid"
    assert server.store.nodes() == []
    assert any("refused" in log.text for log in server.logs)


def test_approval_required_node_waits_then_comes_online(server):
    token = server.token("locked", reusable=True)
    server.join(1, 1, "alice", token)
    server.core.approve("alice")
    server.flush()
    server.take(1)
    (pending,) = server.join(2, 2, "bob", token)
    assert pending.code == "approval_pending" and 2 not in server.closed
    assert server.take(1) == []
    server.send(2, m.Endpoints(local=()))
    assert server.take(2)[0].code == "bad_request"
    server.core.approve("bob")
    server.flush()
    registered, peer_map = server.take(2)
    assert registered.name == "bob" and [p.key for p in peer_map.peers] == [key(1)]
    assert [type(msg) for msg in server.take(1)] == [m.PeerUpdate]


def test_unapproved_nodes_are_invisible_to_peers(server):
    token = server.token("locked", reusable=True)
    server.join(1, 1, "alice", token)
    server.core.approve("alice")
    server.flush()
    assert server.join(2, 2, "bob", token)[0].code == "approval_pending"
    server.core.node_disconnected(1, NOW)
    registered, peer_map = server.join(3, 1, now=NOW + 1)
    assert peer_map == m.PeerMap(())


def test_endpoint_change_reaches_peers_once(pair):
    new = m.Endpoints(local=(m.Endpoint("10.9.9.9", 41641),), public=m.Endpoint("198.51.100.21", 1000))
    pair.send(1, new)
    (update,) = pair.take(2)
    assert (update.peer.local_endpoints, update.peer.public_endpoint) == (new.local, new.public)
    assert pair.take(1) == []
    assert pair.store.get_node(key(1)).public_endpoint == new.public
    pair.send(1, new)
    assert pair.take(2) == []


def test_disconnect_tells_peers_the_node_is_offline(pair):
    pair.core.node_disconnected(2, NOW + 30)
    pair.flush()
    (update,) = pair.take(1)
    assert (update.peer.key, update.peer.online, update.peer.last_seen) == (key(2), False, NOW + 30)
    assert update.peer.observed_host is None
    pair.core.node_disconnected(2, NOW + 31)
    pair.flush()
    assert pair.take(1) == []


def test_newer_connection_replaces_the_old_one(pair):
    pair.join(9, 2)
    assert pair.closed[2] == "replaced by a newer connection"
    offline, online = pair.take(1)
    assert (offline.peer.online, online.peer.online) == (False, True)


def test_revoke_closes_the_node_and_tells_peers_at_once(pair):
    pair.join(3, 3, "carol", pair.token(secret=bytes([3]) * 32))
    pair.take(1), pair.take(2)
    pair.core.revoke("bob")
    pair.flush()
    batch = pair.batches[-1]
    assert Send(2, m.Error("revoked", "this node was revoked by an administrator")) in batch
    assert Close(2, "revoked") in batch
    assert Send(1, m.PeerRemove(key(2))) in batch and Send(3, m.PeerRemove(key(2))) in batch
    pair.take(1)
    (error,) = pair.join(4, 2)
    assert error.code == "revoked" and pair.closed[4] == "revoked"
    assert pair.take(1) == []


def test_a_node_that_leaves_is_deleted_and_its_peers_forget_it(pair):
    pair.core.node_disconnected(2, NOW + 1)
    pair.flush()
    pair.take(1)
    pair.connect(9, 2, now=NOW + 2)
    pair.send(9, m.Leave(), NOW + 2)
    assert pair.take(9) == [] and pair.closed[9] == "left"
    assert pair.take(1) == [m.PeerRemove(key(2))]
    assert [node.name for node in pair.store.nodes()] == ["alice"]
    assert any(entry.text == "node left" for entry in pair.logs)
    (error,) = pair.join(10, 2)
    assert error.code == "auth_key_invalid", "a node that left needs a pre-auth key to come back"


@pytest.mark.parametrize("revoked", [False, True])
def test_leave_from_an_unknown_or_revoked_key_changes_nothing(pair, revoked):
    if revoked:
        pair.core.revoke("bob")
        pair.flush()
    pair.take(1)
    nodes = pair.store.nodes()
    pair.connect(9, 2 if revoked else 7)
    pair.send(9, m.Leave())
    (error,) = pair.take(9)
    assert error.code == ("revoked" if revoked else "bad_request") and 9 in pair.closed
    assert pair.store.nodes() == nodes and pair.take(1) == []


def test_leave_is_only_a_first_message(pair):
    pair.send(1, m.Leave())
    (error,) = pair.take(1)
    assert error.code == "bad_request" and "leave not accepted while online" in error.message
    assert len(pair.store.nodes()) == 2


@pytest.mark.parametrize("ref", ["bob", "10.77.0.3", encode_key(key(2))])
def test_nodes_are_found_by_name_address_or_key(pair, ref):
    assert pair.core.find_node(ref).key == key(2)


def test_admin_errors(pair):
    pair.join(5, 5, "bob", pair.token("locked"))
    with pytest.raises(AdminError, match="ambiguous"):
        pair.core.find_node("bob")
    with pytest.raises(AdminError, match="no node"):
        pair.core.find_node("mallory")
    with pytest.raises(AdminError, match="no network"):
        pair.token("nope")
    pair.core.revoke(encode_key(key(5)))
    with pytest.raises(AdminError, match="revoked"):
        pair.core.approve(encode_key(key(5)))


def test_punch_request_sends_both_sides_each_others_candidates_in_one_batch(pair):
    pair.send(1, m.PunchRequest(key(2)))
    batch = [a for a in pair.batches[-1] if isinstance(a, Send)]
    assert batch == [
        Send(1, m.Punch(key(2), (STUN, m.Endpoint("203.0.113.2", 41641), LAN[0]))),
        Send(2, m.Punch(key(1), (m.Endpoint("203.0.113.1", 41641), LAN[0]))),
    ]


SEQUENTIAL = m.NatInfo(False, "sequential")


def test_punch_carries_nat_reports_and_a_fresh_sample_first(pair):
    pair.send(2, m.Endpoints(local=LAN, public=STUN, nat=SEQUENTIAL))
    (update,) = pair.take(1)
    assert update.peer.nat == SEQUENTIAL
    sample = m.Endpoint("203.0.113.2", 30007)
    pair.send(2, m.PunchRequest(key(1), sample=sample), now=NOW + 1)
    to_bob, to_alice = [a.message for a in pair.batches[-1] if isinstance(a, Send)]
    assert to_alice == m.Punch(key(2), (sample, STUN, m.Endpoint("203.0.113.2", 41641), LAN[0]),
                               nat=SEQUENTIAL, sample=sample)
    assert to_bob.nat is None and to_bob.sample is None
    pair.send(1, m.PunchRequest(key(2)), now=NOW + 1 + SAMPLE_LIFETIME + 0.1)
    to_alice = next(a.message for a in pair.batches[-1] if isinstance(a, Send) and a.conn_id == 1)
    assert to_alice.sample is None and to_alice.endpoints[0] == STUN


@pytest.mark.parametrize("target", [2, 1, 7])
def test_punch_towards_offline_self_or_stranger_is_refused(pair, target):
    pair.core.node_disconnected(2, NOW)
    pair.flush()
    pair.take(1)
    pair.send(1, m.PunchRequest(key(target)))
    assert [msg.code for msg in pair.take(1)] == ["peer_unavailable"]


def test_networks_are_isolated(server):
    server.join(1, 1, "alice", server.token("home"))
    server.join(2, 2, "bob", server.token("locked"))
    server.core.approve("bob")
    server.flush()
    registered, peer_map = server.take(2)
    assert registered.network.name == "locked" and peer_map.peers == ()
    assert server.take(1) == []
    server.send(2, m.PunchRequest(key(1)))
    assert server.take(2)[0].code == "peer_unavailable" and server.take(1) == []


def test_relay_home_is_announced(pair):
    pair.send(1, m.RelayHome("fra"))
    (update,) = pair.take(2)
    assert update.peer.home_relay == "fra"
    pair.send(1, m.RelayHome("nowhere"))
    assert pair.take(1)[0].code == "bad_request" and pair.take(2) == []


def test_relay_round_trips_are_announced_with_the_home_for_offered_relays_only(pair):
    pair.send(1, m.RelayHome("fra", rtts=(m.RelayRtt("fra", 41), m.RelayRtt("nowhere", 2))))
    (update,) = pair.take(2)
    assert update.peer.home_relay == "fra" and update.peer.relay_rtts == (m.RelayRtt("fra", 41),)
    pair.send(1, m.RelayHome("fra", rtts=(m.RelayRtt("fra", 41),)))
    assert pair.take(2) == [], "an unchanged report is not announced again"
    pair.send(1, m.RelayHome("fra", rtts=(m.RelayRtt("fra", 60),)))
    assert pair.take(2)[0].peer.relay_rtts == (m.RelayRtt("fra", 60),)


def test_path_reports_are_kept_per_connection_for_the_admin_view(pair):
    pair.send(1, m.Paths((m.PeerPath("bob", "direct"), m.PeerPath("mallory", "relay"), m.PeerPath("alice", "lan"))))
    pair.send(2, m.Paths((m.PeerPath("alice", "relay"),)))
    pair.send(2, m.Paths((m.PeerPath("alice", "lan"),)))
    assert pair.take(1) == [] and pair.take(2) == []
    statuses = {s.node.name: s for s in pair.core.list_nodes()}
    assert statuses["alice"].paths == {"bob": "direct"}
    assert statuses["bob"].paths == {"alice": "lan"}
    pair.core.node_disconnected(2, NOW + 1)
    pair.join(2, 2, "bob")
    assert {s.node.name: s.paths for s in pair.core.list_nodes()}["bob"] == {}


def test_path_reports_wait_until_online(server):
    server.connect(1, 1)
    server.send(1, m.Paths((m.PeerPath("bob", "direct"),)))
    assert server.take(1)[0].code == "bad_request"


def test_malformed_frame_closes_and_misplaced_message_does_not(server):
    server.connect(1, 1)
    server.send(1, m.Endpoints(local=()))
    assert server.take(1)[0].code == "bad_request" and 1 not in server.closed
    server.core.receive(1, b'{"type":"register"}', NOW)
    server.flush()
    assert server.take(1)[0].code == "bad_request" and server.closed[1] == "bad_request"
    server.core.receive(1, b"{}", NOW)
    assert server.core.actions() == []


def test_ping_is_answered(server):
    server.connect(1, 1)
    server.send(1, m.Ping())
    assert server.take(1) == [m.Pong()]


def test_silent_connection_is_closed_at_three_keepalives(pair):
    limit = 3 * KEEPALIVE
    assert pair.core.get_timer() == NOW + limit
    pair.send(1, m.Ping(), now=NOW + 5)
    pair.send(2, m.Pong(), now=NOW + 7)
    assert pair.core.get_timer() == NOW + 5 + limit
    pair.core.handle_timer(NOW + 5 + limit - 0.001)
    pair.flush()
    assert pair.closed == {}
    pair.core.handle_timer(NOW + 5 + limit)
    pair.flush()
    assert pair.closed == {1: "silent for 30s"}
    assert pair.take(2)[-1].peer.online is False
    assert pair.core.get_timer() == NOW + 7 + limit


def test_ephemeral_node_is_forgotten_after_being_offline(pair):
    pair.join(3, 3, "ci", pair.token(secret=bytes([3]) * 32, ephemeral=True))
    pair.take(1)
    pair.core.node_disconnected(3, NOW + 1)
    pair.flush()
    pair.take(1)
    pair.send(1, m.Ping(), now=NOW + 20)
    pair.send(2, m.Ping(), now=NOW + 20)
    pair.take(1)
    assert pair.core.get_timer() == NOW + 1 + 3 * KEEPALIVE
    pair.core.handle_timer(NOW + 1 + 3 * KEEPALIVE)
    pair.flush()
    assert pair.take(1) == [m.PeerRemove(key(3))]
    assert pair.store.get_node(key(3)) is None


def test_ephemeral_nodes_get_a_fresh_grace_period_after_a_restart():
    before = Server()
    before.join(1, 1, "ci", before.token(ephemeral=True))
    after = Server(before.store, now=NOW + 1000)
    assert after.core.get_timer() == NOW + 1000 + 3 * KEEPALIVE
    registered, _ = after.join(1, 1, now=NOW + 1001)
    assert registered.name == "ci" and after.core.get_timer() == NOW + 1001 + 3 * KEEPALIVE


def test_list_nodes_shows_live_state(pair):
    pair.send(2, m.RelayHome("fra"))
    pair.core.node_disconnected(1, NOW + 3)
    statuses = {s.node.name: s for s in pair.core.list_nodes()}
    assert (statuses["alice"].online, statuses["alice"].node.last_seen) == (False, NOW + 3)
    assert (statuses["bob"].online, statuses["bob"].home_relay, statuses["bob"].observed_host) == (
        True, "fra", "203.0.113.2",
    )


def test_everything_survives_a_restart(tmp_path):
    path = str(tmp_path / "coord.db")
    before = Server(SqliteStore(path))
    token = before.token()
    before.join(1, 1, "alice", token)
    before.store.close()
    after = Server(SqliteStore(path))
    registered, _ = after.join(1, 1, "alice")
    assert (registered.name, registered.address) == ("alice", "10.77.0.2")
    (error,) = after.join(2, 2, "bob", token)
    assert error.code == "auth_key_used"
    after.store.close()


def test_two_hundred_nodes_agree_on_the_network():
    server = Server()
    token = server.token(reusable=True)
    views: dict[int, dict[bytes, m.PeerInfo]] = {}
    for n in range(1, 201):
        server.core.node_connected(n, bytes([n % 256, n // 256]) + bytes(30), "198.51.100.1", NOW)
        server.send(n, m.Register(f"host{n}", "0.1.0", LAN, token))
    for n in range(1, 201):
        registered, peer_map, *updates = server.take(n)
        views[n] = {p.key: p for p in peer_map.peers}
        views[n].update((u.peer.key, u.peer) for u in updates)
        assert len(views[n]) == 199 and all(p.online for p in views[n].values())
    addresses = {p.address for p in views[1].values()}
    assert len(addresses) == 199 and "10.77.0.2" not in addresses
