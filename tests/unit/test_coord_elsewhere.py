"""Two membership cores on one store, as two coord instances on one PostgreSQL: what one
announces, the other applies for the nodes connected to it (`Membership.changed_elsewhere`)."""

import pytest

from meshvpn.control import messages as m
from meshvpn.coord import elsewhere
from meshvpn.coord.connstate import PUNCH_BURST
from meshvpn.coord.events import Log, PunchElsewhere
from meshvpn.coord.membership import Announce, Close, Membership, MembershipSettings, Send, SendMap
from meshvpn.coord.store import MemoryStore, Network, SqliteStore

NOW = 1_700_000_000.0
HOME = Network("home", "10.77.0.0/24")
OTHER = Network("other", "10.78.0.0/24")


def key(n: int) -> bytes:
    return bytes([n]) * 32


def core(store) -> Membership:
    return Membership(store, MembershipSettings((HOME, OTHER), keepalive=10.0), NOW)


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


class CountingStore(SqliteStore):
    """The SQLite store, counting the records it reads by key (`nodes_by_key`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads: list[list[bytes]] = []

    def nodes_by_key(self, keys):
        self.reads.append(list(keys))
        return super().nodes_by_key(keys)


def test_changes_from_another_instance_are_read_in_one_go_and_applied_in_order(tmp_path):
    path = str(tmp_path / "coord.db")
    one, two = core(SqliteStore(path)), CountingStore(path)
    two_core = core(two)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    announced = [a for n in (1, 2, 3) for a in join(one, f"c{n}", n, token) if isinstance(a, Announce)]
    one.node_disconnected("c2", NOW + 1)
    announced += [a for a in one.actions(announcements=True) if isinstance(a, Announce)]
    two_core.changes_elsewhere([elsewhere.ChangeElsewhere(a.network, a.subject, a.message, a.payload, "one")
                                for a in announced])
    assert two.reads == [[key(1), key(2), key(3)]]  # one read, each node once
    relayed = two_core.actions(announcements=True)
    assert [(a.subject, a.message.peer.online) for a in relayed if isinstance(a, Announce)] == [
        (key(1), True), (key(2), True), (key(3), True), (key(2), False)]
    assert [(s.node.name, s.online) for s in two_core.list_nodes()] == [
        ("node1", True), ("node2", False), ("node3", True)]


def test_an_admission_reads_whole_records_only_of_nodes_it_has_not_heard_of(tmp_path):
    path = str(tmp_path / "coord.db")
    one, two = core(SqliteStore(path)), CountingStore(path)
    two_core = core(two)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    relay(join(one, "a", 1, token), two_core)  # two heard of node 1 through the instances
    join(one, "c", 3, token)  # but not of node 3 yet
    two.reads.clear()
    actions = join(two_core, "b", 2, token)
    assert two.reads == [[key(3)]]
    (registered,) = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Registered)]
    assert (registered.name, registered.address) == ("node2", "10.77.0.4")


def test_an_address_taken_by_an_instance_whose_clock_lags_is_skipped_after_a_conflict(tmp_path):
    path = str(tmp_path / "coord.db")
    one, two = core(SqliteStore(path)), core(SqliteStore(path))
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(two, "c", 3, token)
    join(one, "a", 1, token, now=NOW - 100)  # created "long ago": two's catch-up misses it
    actions = join(two, "b", 2, token)
    (registered,) = [a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Registered)]
    assert registered.address == "10.77.0.4"


def test_nodes_of_an_instance_whose_session_is_gone_go_offline_and_a_slow_one_keeps_them():
    store = MemoryStore()
    one, two = core(store), core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(two, "b", 2, token)
    two.actions(announcements=True)
    for action in join(one, "a", 1, token):
        if isinstance(action, Announce):
            two.changed_elsewhere(action.network, action.subject, action.message, action.payload, "one")
    two.actions(announcements=True)
    two.expire_elsewhere({"one", "two"})  # alive, however long since it last spoke
    assert two.actions(announcements=True) == [] and [s.online for s in two.list_nodes()] == [True, True]
    two.expire_elsewhere({"two"})
    log, offline = two.actions(announcements=True)
    assert isinstance(log, Log) and log.fields == {"nodes": 1}
    assert isinstance(offline, Announce) and offline.relayed and offline.subject == key(1)
    assert offline.message.peer.online is False
    assert sorted((s.node.name, s.online) for s in two.list_nodes()) == [("node1", False), ("node2", True)]
    assert two.expire_elsewhere(set()) is None and two.actions(announcements=True) == []


def test_an_instance_that_starts_learns_what_is_online_on_the_others_from_their_answer():
    store = MemoryStore()
    one = core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    join(one, "a", 1, token)
    join(one, "c", 3, token)
    one.actions(announcements=True)
    two = core(store)  # started after their joins: heard none of them
    for network, subject, payload in one.online_here():
        two.changed_elsewhere(network, subject, m.decode(payload), payload, "one")
    announced = [a for a in two.actions(announcements=True) if isinstance(a, Announce)]
    assert sorted(a.subject for a in announced) == [key(1), key(3)] and all(a.relayed for a in announced)
    assert sorted((s.node.name, s.online) for s in two.list_nodes()) == [("node1", True), ("node3", True)]
    (due,) = [a for a in join(two, "b", 2, token) if isinstance(a, SendMap)]
    (peer_map,) = [m.decode(frame) for frame in two.peer_map(due.conn_id)]
    assert [(p.name, p.online) for p in peer_map.peers] == [("node1", True), ("node3", True)]


LAN = m.Endpoint("192.168.1.5", 41641)
STUN = m.Endpoint("198.51.100.9", 61000)
NAT = m.NatInfo(endpoint_independent=False, allocation="sequential")


def two_online(store) -> tuple[Membership, Membership]:
    """Node 1 on instance one and node 2 on instance two, each known online on the other,
    node 2 with a LAN and a STUN endpoint and a NAT report."""
    one, two = core(store), core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    relay(join(one, "a", 1, token), two)
    relay(join(two, "b", 2, token), one)
    two.receive("b", m.encode(m.Endpoints(local=(LAN,), public=STUN, nat=NAT)), NOW)
    relay(two.actions(announcements=True), one)
    return one, two


def punch_across(source: Membership, conn: str, target: Membership, peer: int, now: float, sample=None) -> tuple:
    """`conn` on `source` asks to punch node `peer`; what `source` answered it, and what `target`
    sent after the `PunchElsewhere` reached it."""
    source.receive(conn, m.encode(m.PunchRequest(key(peer), sample=sample)), now)
    answered = source.actions(announcements=True)
    for action in answered:
        if isinstance(action, PunchElsewhere):
            target.punched_elsewhere(action.network, action.peer, action.punch)
    return answered, target.actions(announcements=True)


def test_nodes_on_two_instances_both_get_their_punch_through_the_instances():
    one, two = two_online(MemoryStore())
    sample = m.Endpoint("203.0.113.1", 30007)
    answered, sent = punch_across(one, "a", two, 2, NOW + 1, sample=sample)
    assert [type(a) for a in answered] == [Send, PunchElsewhere]
    assert answered[0] == Send("a", m.Punch(key(2), (STUN, m.Endpoint("203.0.113.2", 41641), LAN), nat=NAT))
    assert sent == [Send("b", m.Punch(key(1), (sample,), sample=sample))]
    answered, sent = punch_across(two, "b", one, 1, NOW + 2)
    assert answered[0] == Send("b", m.Punch(key(1), ()))
    assert sent == [Send("a", m.Punch(key(2), (STUN, m.Endpoint("203.0.113.2", 41641), LAN), nat=NAT))]
    assert one.punches_dropped == two.punches_dropped == 0


def test_punches_across_instances_keep_the_per_node_rate_limit():
    one, two = two_online(MemoryStore())
    for _ in range(int(PUNCH_BURST) + 5):
        one.receive("a", m.encode(m.PunchRequest(key(2))), NOW + 1)
    actions = one.actions(announcements=True)
    assert sum(isinstance(a, PunchElsewhere) for a in actions) == PUNCH_BURST
    assert sum(isinstance(a, Send) for a in actions) == PUNCH_BURST and one.limited["punch_request"] == 5


def test_a_peer_offline_everywhere_is_still_unavailable_and_asks_no_instance():
    one, two = two_online(MemoryStore())
    two.node_disconnected("b", NOW + 1)
    relay(two.actions(announcements=True), one)
    answered, _ = punch_across(one, "a", two, 2, NOW + 2)
    assert [a.message.code for a in answered] == ["peer_unavailable"]


def test_a_punch_for_a_node_not_online_here_is_left_to_the_instance_that_has_it():
    one, two = two_online(MemoryStore())
    two.punched_elsewhere("home", key(1), m.Punch(key(2), (STUN,)))  # node 1 is on one
    two.punched_elsewhere("other", key(2), m.Punch(key(1), (STUN,)))  # node 2 is in home
    assert two.actions(announcements=True) == [] and two.punches_dropped == 0


@pytest.mark.parametrize("case", ["unknown requester", "requester not online elsewhere",
                                  "requester in another network", "requester is the peer"])
def test_a_punch_for_a_node_here_is_dropped_and_counted_unless_the_requester_checks_out(case):
    store = MemoryStore()
    one, two = two_online(store)
    network, peer, punch = "home", key(2), m.Punch(key(1), (STUN,))
    if case == "unknown requester":
        punch = m.Punch(key(9), (STUN,))
    elif case == "requester not online elsewhere":
        one.node_disconnected("a", NOW + 1)
        relay(one.actions(announcements=True), two)
    elif case == "requester in another network":
        token = one.create_auth_key("other", secret=bytes(32), now=NOW)[0]
        relay(join(one, "x", 9, token), two)
        punch = m.Punch(key(9), (STUN,))
    else:
        punch = m.Punch(key(2), (STUN,))
    two.punched_elsewhere(network, peer, punch)
    assert two.actions(announcements=True) == [] and two.punches_dropped == 1


def test_an_ephemeral_node_online_on_another_instance_outlives_the_grace_of_one_that_starts():
    store = MemoryStore()
    one = core(store)
    token = one.create_auth_key("home", secret=bytes(32), now=NOW, ephemeral=True, reusable=True)[0]
    join(one, "a", 1, token)
    one.actions(announcements=True)
    two = core(store)  # gives every offline ephemeral node 3 × keepalive to come back
    for network, subject, payload in one.online_here():
        two.changed_elsewhere(network, subject, m.decode(payload), payload, "one")
    two.actions(announcements=True)
    two.handle_timer(NOW + 100)
    assert two.actions(announcements=True) == []
    assert [(s.node.name, s.online) for s in two.list_nodes()] == [("node1", True)]
