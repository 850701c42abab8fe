"""The roster: read from the store once, written through it, rolled back with it, and
allocating names and addresses like the store-scanning code it replaced."""

import pytest

from meshvpn.control import messages as m
from meshvpn.coord.membership import Membership, MembershipSettings
from meshvpn.coord.roster import Roster
from meshvpn.coord.store import MemoryStore, Network, NodeRecord, SqliteStore

HOME = Network("home", "10.77.0.0/24")
NOW = 1_700_000_000.0


def node(n: int, address: str, name: str = "", network: str = "home") -> NodeRecord:
    return NodeRecord(bytes([n]) * 32, network, name or f"node{n}", address, f"host{n}", NOW + n)


class CountingStore(MemoryStore):
    """A MemoryStore that counts full reads of the node table."""

    def __init__(self):
        super().__init__()
        self.node_reads = 0

    def nodes(self, network=None):
        self.node_reads += 1
        return super().nodes(network)


def test_joins_never_read_the_node_table():
    store = CountingStore()
    core = Membership(store, MembershipSettings((HOME,), keepalive=10.0), NOW)
    token, _ = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)
    reads_at_start = store.node_reads
    for n in range(1, 40):
        core.node_connected(n, bytes([n]) * 32, "203.0.113.9", NOW)
        core.receive(n, m.encode(m.Register(f"h{n}", "1", (), token)), NOW)
        core.receive(n, m.encode(m.Endpoints((), m.Endpoint("198.51.100.1", n))), NOW)
    core.node_disconnected(3, NOW + 1)
    core.actions()
    assert store.node_reads == reads_at_start
    assert len(store.nodes("home")) == 39 and store.get_node(bytes([5]) * 32).public_endpoint.port == 5


def test_writes_reach_the_store_before_the_roster_and_survive_a_reload(tmp_path):
    store = SqliteStore(str(tmp_path / "coord.db"))
    store.put_network(HOME)
    roster = Roster(store)
    roster.put(node(1, "10.77.0.2"))
    roster.put(node(2, "10.77.0.3"))
    roster.delete(bytes([1]) * 32)
    store.close()
    reopened = Roster(SqliteStore(str(tmp_path / "coord.db")))
    assert [n.name for n in reopened.nodes("home")] == ["node2"]


def test_a_rolled_back_transaction_leaves_no_trace_in_the_roster():
    store = MemoryStore()
    roster = Roster(store)
    roster.put(node(1, "10.77.0.2"))
    with pytest.raises(RuntimeError):
        with roster.transaction():
            roster.put(node(2, "10.77.0.3"))
            roster.put(node(1, "10.77.0.2", name="renamed"))
            raise RuntimeError("commit failed")
    assert roster.get(bytes([2]) * 32) is None and roster.get(bytes([1]) * 32).name == "node1"
    assert roster.free_address(HOME) == "10.77.0.3" and roster.free_name("home", "node2") == "node2"


def test_addresses_are_lowest_free_first_including_holes_and_freed_ones():
    store = MemoryStore()
    for n, address in [(1, "10.77.0.2"), (2, "10.77.0.4"), (3, "10.77.0.5")]:
        store.put_node(node(n, address))
    roster = Roster(store)
    assert roster.free_address(HOME) == "10.77.0.3", "a hole left in the database is found"
    roster.put(node(4, "10.77.0.3"))
    assert roster.free_address(HOME) == "10.77.0.6"
    roster.put(node(5, "10.77.0.6"))
    roster.delete(bytes([2]) * 32)
    assert roster.free_address(HOME) == "10.77.0.4", "a freed address is the lowest free again"


def test_names_in_use_follow_puts_and_deletes():
    roster = Roster(MemoryStore())
    roster.put(node(1, "10.77.0.2", name="laptop"))
    assert roster.free_name("home", "Laptop") == "laptop-2"
    assert roster.free_name("other", "Laptop") == "laptop"
    roster.delete(bytes([1]) * 32)
    assert roster.free_name("home", "Laptop") == "laptop"


def test_updates_keep_a_node_in_place_and_drop_its_cached_entry():
    roster = Roster(MemoryStore())
    for n in range(1, 4):
        roster.put(node(n, f"10.77.0.{n + 1}"))
    built = []

    def info(record):
        built.append(record.name)
        return m.PeerInfo(record.key, record.name, record.address, True)

    first = roster.entry(roster.get(bytes([2]) * 32), info)
    assert roster.entry(roster.get(bytes([2]) * 32), info) is first
    roster.put(node(2, "10.77.0.3", name="renamed"))
    assert roster.entry(roster.get(bytes([2]) * 32), info).info.name == "renamed"
    roster.changed(bytes([2]) * 32)
    roster.entry(roster.get(bytes([2]) * 32), info)
    assert built == ["node2", "renamed", "renamed"]
    assert [n.name for n in roster.nodes("home")] == ["node1", "renamed", "node3"]
