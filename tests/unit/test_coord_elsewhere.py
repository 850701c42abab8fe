"""Two membership cores on one store, as two coord instances on one PostgreSQL: what one
announces, the other applies for the nodes connected to it (`Membership.changed_elsewhere`)."""

from meshvpn.control import messages as m
from meshvpn.coord import elsewhere
from meshvpn.coord.membership import Announce, Close, Membership, MembershipSettings, Send, SendMap
from meshvpn.coord.store import MemoryStore, Network, SqliteStore

NOW = 1_700_000_000.0
HOME = Network("home", "10.77.0.0/24")


def key(n: int) -> bytes:
    return bytes([n]) * 32


def core(store) -> Membership:
    return Membership(store, MembershipSettings((HOME,), keepalive=10.0), NOW)


def join(core: Membership, conn, n: int, token: str, now: float = NOW) -> list:
    core.node_connected(conn, key(n), f"203.0.113.{n}", now)
    core.receive(conn, m.encode(m.Register(f"node{n}", "0.1", (), token)), now)
    return core.actions(announcements=True)


def relay(actions: list, to: Membership) -> list:
    """Hand `to` every announcement in `actions` that its instance would publish."""
    for action in actions:
        if isinstance(action, Announce) and not action.relayed:
            to.changed_elsewhere(action.network, action.subject, action.message, action.payload)
    return to.actions(announcements=True)


def test_a_node_online_on_one_instance_is_online_in_the_other_s_maps_and_listings():
    store = MemoryStore()
    one, two = core(store), core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    relayed = relay(join(one, "a", 1, token), two)
    assert [(type(a), a.relayed) for a in relayed] == [(Announce, True)]
    actions = join(two, "b", 2, token)
    (due,) = [a for a in actions if isinstance(a, SendMap)]
    (peer_map,) = [m.decode(frame) for frame in two.peer_map(due.conn_id)]
    assert [(p.key, p.online, p.observed_host) for p in peer_map.peers] == [(key(1), True, "203.0.113.1")]
    registered = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Registered)]
    assert registered[0].address == "10.77.0.3"  # the address after the other instance's node
    assert [(s.node.name, s.online) for s in two.list_nodes()] == [("node1", True), ("node2", True)]
    one.node_disconnected("a", NOW + 5)
    relay(one.actions(announcements=True), two)
    assert [(s.node.name, s.online) for s in two.list_nodes()] == [("node1", False), ("node2", True)]


def test_a_revocation_on_one_instance_closes_the_node_on_the_other():
    store = MemoryStore()
    one, two = core(store), core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    relay(join(two, "b", 2, token), one)
    one.revoke("node2")
    actions = relay(one.actions(announcements=True), two)
    assert Send("b", m.Error("revoked", "this node was revoked by an administrator")) in actions
    assert Close("b", "revoked") in actions
    assert Announce("home", key(2), m.PeerRemove(key(2)), relayed=True) in actions


def test_a_stale_offline_from_another_instance_is_answered_with_this_instance_s_view():
    store = MemoryStore()
    one, two = core(store), core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(one, "a-old", 1, token)
    join(two, "a-new", 1, token)  # node 1 moved to instance two; one has not noticed yet
    one.node_disconnected("a-old", NOW + 30)
    (answer,) = relay(one.actions(announcements=True), two)
    assert isinstance(answer, Announce) and not answer.relayed and answer.message.peer.online


def test_nodes_the_other_instance_admitted_are_read_before_admitting_so_no_conflict_is_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(elsewhere, "ADMISSION_ATTEMPTS", 1)  # a conflict would refuse the join
    path = str(tmp_path / "coord.db")
    one, two = core(SqliteStore(path)), core(SqliteStore(path))
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(one, "a", 1, token)  # instance two has not heard of it, but reads it before admitting
    actions = join(two, "b", 2, token)
    (registered,) = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Registered)]
    assert (registered.name, registered.address) == ("node2", "10.77.0.3")


def test_an_address_taken_by_an_instance_whose_clock_lags_is_skipped_after_a_conflict(tmp_path):
    path = str(tmp_path / "coord.db")
    one, two = core(SqliteStore(path)), core(SqliteStore(path))
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(two, "c", 3, token)
    join(one, "a", 1, token, now=NOW - 100)  # created "long ago": two's catch-up misses it
    actions = join(two, "b", 2, token)
    (registered,) = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Registered)]
    assert registered.address == "10.77.0.4"


def test_nodes_of_an_instance_that_fell_silent_go_offline_when_its_lease_runs_out():
    store = MemoryStore()
    one, two = core(store), core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(two, "b", 2, token)
    two.actions(announcements=True)
    for action in join(one, "a", 1, token):
        if isinstance(action, Announce):
            two.changed_elsewhere(action.network, action.subject, action.message, action.payload, "one")
    two.instance_heard("one", NOW)
    two.actions(announcements=True)
    two.expire_elsewhere(NOW + elsewhere.LEASE - 1)  # heard lately: still online
    assert two.actions(announcements=True) == [] and [s.online for s in two.list_nodes()] == [True, True]
    two.instance_heard("one", NOW + 10)
    two.expire_elsewhere(NOW + 10 + elsewhere.LEASE)
    (offline,) = two.actions(announcements=True)
    assert isinstance(offline, Announce) and offline.relayed and offline.subject == key(1)
    assert offline.message.peer.online is False
    assert sorted((s.node.name, s.online) for s in two.list_nodes()) == [("node1", False), ("node2", True)]
    assert two.expire_elsewhere(NOW + 100) is None and two.actions(announcements=True) == []
