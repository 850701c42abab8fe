"""Every store behaves alike (memory, SQLite and PostgreSQL); the SQL ones keep everything across a
restart and migrate older schemas, including the previous release's SQLite file."""

import shutil
import threading
import time
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from meshvpn.coord.authkeys import create_auth_key
from meshvpn.control.messages import Endpoint
from meshvpn.coord.pgstore import PostgresStore, connect
from meshvpn.coord.store import (
    _NODES, SCHEMA_VERSION, Conflict, MemoryStore, Network, NodeRecord, PeerRelayGrant, SqliteStore,
)
from meshvpn.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"
NOW = 1_700_000_000.0
HOME = Network("home", "10.77.0.0/24", approval_required=True)
WORK = Network("work", "10.78.0.0/24")
_, KEY = create_auth_key("home", bytes(32), NOW, reusable=True, expires_in=3600)
NODE = NodeRecord(
    key=bytes(range(32)),
    network="home",
    name="laptop",
    address="10.77.0.2",
    hostname="Laptop",
    created=NOW,
    version="0.1.0",
    os="linux",
    approved=False,
    last_seen=NOW + 5,
    public_endpoint=Endpoint("203.0.113.7", 62000),
    local_endpoints=(Endpoint("192.168.1.20", 41641), Endpoint("fd00::2", 41641)),
    auth_key_id=KEY.id,
    tags=("guest", "lan-2"),
)
OTHER = NodeRecord(bytes(32), "work", "pc", "10.78.0.2", "pc", NOW + 1, ephemeral=True)


def open_store(kind: str, request, tmp_path):
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(str(tmp_path / "coord.db"))
    return PostgresStore(request.getfixturevalue("postgres_dsn"))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request, tmp_path):
    store = open_store(request.param, request, tmp_path)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_store(request, tmp_path):
    """A fresh SQL store, and how to open another connection to the same database."""
    reopen = (lambda: SqliteStore(str(tmp_path / "coord.db"))) if request.param == "sqlite" else None
    store = open_store(request.param, request, tmp_path)
    if reopen is None:
        reopen = lambda: PostgresStore(store.dsn)  # noqa: E731
    yield store, reopen
    store.close()


def fill(store):
    store.put_network(HOME)
    store.put_network(WORK)
    store.put_auth_key(KEY)
    store.put_node(NODE)
    store.put_node(OTHER)


def test_records_come_back_equal(store):
    fill(store)
    assert store.networks() == [HOME, WORK]
    assert store.get_network("home") == HOME and store.get_network("nope") is None
    assert store.get_auth_key(KEY.id) == KEY and store.auth_keys("work") == []
    assert store.get_node(NODE.key) == NODE
    assert store.nodes() == [NODE, OTHER]
    assert store.nodes("work") == [OTHER]


def test_put_replaces_and_delete_removes(store):
    fill(store)
    store.put_node(replace(NODE, approved=True, public_endpoint=None, local_endpoints=()))
    store.put_auth_key(replace(KEY, uses=3))
    assert store.get_node(NODE.key).approved is True
    assert store.get_node(NODE.key).local_endpoints == ()
    assert store.get_auth_key(KEY.id).uses == 3
    store.delete_node(OTHER.key)
    assert store.get_node(OTHER.key) is None and store.nodes("work") == []


def test_transaction_rolls_back_every_write_on_error(store):
    fill(store)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put_auth_key(replace(KEY, uses=1))
            store.put_node(replace(NODE, name="renamed"))
            raise RuntimeError("boom")
    assert store.get_auth_key(KEY.id) == KEY
    assert store.get_node(NODE.key) == NODE


def test_a_nested_transaction_that_fails_takes_back_only_its_own_writes(store):
    fill(store)
    with store.transaction():
        store.put_auth_key(replace(KEY, uses=1))
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.put_node(replace(NODE, name="renamed"))
                raise RuntimeError("boom")
        store.put_node(replace(OTHER, name="kept"))
    assert store.get_auth_key(KEY.id).uses == 1
    assert store.get_node(NODE.key) == NODE and store.get_node(OTHER.key).name == "kept"


def test_a_conflict_in_a_nested_transaction_leaves_the_outer_one_usable(sql_store):
    store, _ = sql_store
    fill(store)
    with store.transaction():
        with pytest.raises(Conflict):
            with store.transaction():
                store.put_node(replace(OTHER, network=NODE.network, address=NODE.address))  # taken
        store.put_node(replace(OTHER, name="kept"))
    assert store.get_node(OTHER.key).name == "kept"


def test_peer_relay_grants_are_kept_once_listed_by_network_and_taken_back(store):
    fill(store)
    by_tag, by_name = PeerRelayGrant("home", "tag:host"), PeerRelayGrant("work", "pc")
    for grant in (by_name, by_tag, by_tag):
        store.put_peer_relay(grant)
    assert store.peer_relays() == [by_tag, by_name]
    assert store.peer_relays("home") == [by_tag] and store.peer_relays("nope") == []
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.delete_peer_relay(by_tag)
            raise RuntimeError("rolled back")
    store.delete_peer_relay(by_tag)
    store.delete_peer_relay(by_tag)
    assert store.peer_relays() == [by_name]


def test_peer_relay_grants_survive_a_reopen(sql_store):
    first, reopen = sql_store
    fill(first)
    first.put_peer_relay(PeerRelayGrant("home", "laptop"))
    reopened = reopen()
    assert reopened.peer_relays() == [PeerRelayGrant("home", "laptop")]
    reopened.close()


def test_reopen_has_the_same_state(sql_store):
    first, reopen = sql_store
    fill(first)
    with first.transaction():
        first.put_auth_key(replace(KEY, uses=1))
    reopened = reopen()
    assert reopened.networks() == [HOME, WORK]
    assert reopened.get_auth_key(KEY.id) == replace(KEY, uses=1)
    assert reopened.nodes() == [NODE, OTHER]
    reopened.close()


def test_sqlite_is_wal_and_stores_only_the_key_hash(tmp_path):
    path = tmp_path / "coord.db"
    store = SqliteStore(str(path))
    fill(store)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(4,)]
    columns = [row[1] for row in db.execute("PRAGMA table_info(auth_keys)")]
    assert "secret_hash" in columns and "secret" not in columns
    db.close()


def test_a_newer_schema_is_refused(sql_store):
    store, reopen = sql_store
    store._execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ConfigError, match="version 99 is newer"):
        reopen()


def test_unique_addresses_within_a_network_are_enforced(sql_store):
    store, _ = sql_store
    fill(store)
    with pytest.raises(Conflict, match="nodes"):
        store.put_node(replace(NODE, key=bytes([9] * 32), name="other"))


def indexes(store) -> set[str]:
    if isinstance(store, SqliteStore):
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        query = "SELECT indexname AS name FROM pg_indexes WHERE schemaname = 'public'"
    return {row["name"] for row in store._execute(query)}


def test_migrations_bring_a_version_1_database_to_the_current_schema(sql_store):
    old, reopen = sql_store
    old.close()
    if isinstance(old, SqliteStore):
        Path(old.path).unlink()
        old = SqliteStore(old.path, schema_version=1)
    else:
        with connect(old.dsn) as db:
            db.execute("DROP SCHEMA public CASCADE")
            db.execute("CREATE SCHEMA public")
        old = PostgresStore(old.dsn, schema_version=1)
    assert old.schema_version() == 1 and "nodes_by_network" not in indexes(old)
    old.put_network(HOME)
    old.put_network(WORK)
    old.put_auth_key(KEY)
    for node in (NODE, OTHER):
        put_schema_1_node(old, node)
    old.close()
    new = reopen()
    assert new.schema_version() == SCHEMA_VERSION
    assert {"nodes_by_network", "auth_keys_by_network"} <= indexes(new)
    assert new.networks() == [HOME, WORK] and new.get_auth_key(KEY.id) == KEY
    assert new.nodes() == [replace(NODE, tags=()), OTHER]  # schema 2 gave every node empty tags
    new.put_node(NODE)
    assert new.get_node(NODE.key) == NODE
    assert new.peer_relays() == []  # schema 4 added the table, empty
    new.put_peer_relay(PeerRelayGrant("home", "laptop"))
    assert new.peer_relays("home") == [PeerRelayGrant("home", "laptop")]
    new.close()


def put_schema_1_node(store, node: NodeRecord) -> None:
    """Write `node` as a schema-1 database held it: every column but the later `tags`."""
    row = {c: v for c, v in zip(_NODES.columns, _NODES.to_row(node)) if c != "tags"}
    marks = ", ".join("?" * len(row))
    store._execute(f"INSERT INTO nodes ({', '.join(row)}) VALUES ({marks})", list(row.values()))


def test_the_previous_release_s_sqlite_file_opens_with_everything_in_it(tmp_path):
    """`tests/data/coord-schema-v1.db` was written by `SqliteStore` of the release before schema
    version 2, with the records of this file (nodes without tags); it must open, migrate and
    keep them."""
    path = tmp_path / "coord.db"
    shutil.copyfile(DATA / "coord-schema-v1.db", path)
    store = SqliteStore(str(path))
    assert store.schema_version() == SCHEMA_VERSION == 4
    assert "nodes_by_network" in indexes(store)
    assert store.networks() == [HOME, WORK]
    assert store.nodes() == [replace(NODE, tags=()), OTHER]
    assert store.get_auth_key(KEY.id) == KEY
    store.close()


def test_admissions_to_one_network_take_turns_across_postgresql_connections(postgres_dsn):
    one, two = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
    locked, waited = threading.Event(), []

    def admit_slowly():
        with one.transaction():
            one.lock_network("home")
            locked.set()
            time.sleep(0.5)

    thread = threading.Thread(target=admit_slowly)
    thread.start()
    try:
        assert locked.wait(10)
        for network in ("work", "home"):
            started = time.monotonic()
            with two.transaction():
                two.lock_network(network)
            waited.append(time.monotonic() - started)
    finally:
        thread.join()
        one.close()
        two.close()
    assert waited[0] < 0.3 and waited[1] > 0.2  # another network is free; the same one waits its turn
