"""Both stores behave alike; the SQLite one keeps everything across a restart."""

import sqlite3
from dataclasses import replace

import pytest

from meshvpn.coord.authkeys import create_auth_key
from meshvpn.control.messages import Endpoint
from meshvpn.coord.store import MemoryStore, Network, NodeRecord, SqliteStore
from meshvpn.errors import ConfigError

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


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    store = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "coord.db"))
    yield store
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


def test_sqlite_reopen_has_the_same_state(tmp_path):
    path = str(tmp_path / "coord.db")
    first = SqliteStore(path)
    fill(first)
    with first.transaction():
        first.put_auth_key(replace(KEY, uses=1))
    first.close()
    reopened = SqliteStore(path)
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
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    columns = [row[1] for row in db.execute("PRAGMA table_info(auth_keys)")]
    assert "secret_hash" in columns and "secret" not in columns
    db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "coord.db"
    SqliteStore(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="version 99"):
        SqliteStore(str(path))


def test_sqlite_enforces_unique_addresses_within_a_network(tmp_path):
    store = SqliteStore(str(tmp_path / "coord.db"))
    fill(store)
    with pytest.raises(sqlite3.IntegrityError):
        store.put_node(replace(NODE, key=bytes([9] * 32), name="other"))
    store.close()
