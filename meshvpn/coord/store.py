"""Durable state of the coordination server: networks, pre-auth keys and nodes.

`Store` is the seam: `MemoryStore` for unit tests, `SqliteStore` for the server. Every write is
committed when the call returns (or when the outermost `transaction()` block ends), so the
membership core may acknowledge a change as soon as it has written it: a restart loses nothing
that any node or admin was told. Timestamps are Unix times supplied by the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from meshvpn.coord.authkeys import AuthKey
from meshvpn.control.messages import Endpoint
from meshvpn.errors import ConfigError

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Network:
    """An overlay network as the server enforces it (taken from the coord config)."""

    name: str
    cidr: str
    approval_required: bool = False


@dataclass(frozen=True)
class NodeRecord:
    """Everything the server remembers about a node across restarts."""

    key: bytes
    network: str
    name: str
    address: str
    hostname: str
    created: float
    version: str = ""
    os: str | None = None
    approved: bool = True
    revoked: bool = False
    ephemeral: bool = False
    last_seen: float | None = None
    """Unix time of the last registration or disconnect."""
    public_endpoint: Endpoint | None = None
    local_endpoints: tuple[Endpoint, ...] = ()
    auth_key_id: str | None = None
    """The pre-auth key the node joined with (audit trail)."""
    tags: tuple[str, ...] = ()
    """Set by `meshvpn coord nodes tag`; access-rule groups name nodes by tag."""


class Store(Protocol):
    """Persistence for the membership core."""

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes: all of them are committed at the end of the block, or none."""

    def put_network(self, network: Network) -> None: ...
    def get_network(self, name: str) -> Network | None: ...
    def networks(self) -> list[Network]: ...
    def put_auth_key(self, key: AuthKey) -> None: ...
    def get_auth_key(self, key_id: str) -> AuthKey | None: ...
    def auth_keys(self, network: str | None = None) -> list[AuthKey]: ...
    def put_node(self, node: NodeRecord) -> None: ...
    def get_node(self, key: bytes) -> NodeRecord | None: ...
    def nodes(self, network: str | None = None) -> list[NodeRecord]: ...
    def delete_node(self, key: bytes) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A `Store` in dictionaries; transactions roll back on exceptions like the real one."""

    def __init__(self) -> None:
        self._networks: dict[str, Network] = {}
        self._auth_keys: dict[str, AuthKey] = {}
        self._nodes: dict[bytes, NodeRecord] = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        saved = (dict(self._networks), dict(self._auth_keys), dict(self._nodes))
        try:
            yield
        except BaseException:
            self._networks, self._auth_keys, self._nodes = saved
            raise

    def put_network(self, network: Network) -> None:
        self._networks[network.name] = network

    def get_network(self, name: str) -> Network | None:
        return self._networks.get(name)

    def networks(self) -> list[Network]:
        return sorted(self._networks.values(), key=lambda n: n.name)

    def put_auth_key(self, key: AuthKey) -> None:
        self._auth_keys[key.id] = key

    def get_auth_key(self, key_id: str) -> AuthKey | None:
        return self._auth_keys.get(key_id)

    def auth_keys(self, network: str | None = None) -> list[AuthKey]:
        keys = sorted(self._auth_keys.values(), key=lambda k: (k.created, k.id))
        return [k for k in keys if network in (None, k.network)]

    def put_node(self, node: NodeRecord) -> None:
        self._nodes[node.key] = node

    def get_node(self, key: bytes) -> NodeRecord | None:
        return self._nodes.get(key)

    def nodes(self, network: str | None = None) -> list[NodeRecord]:
        nodes = sorted(self._nodes.values(), key=lambda n: (n.network, n.created, n.name))
        return [n for n in nodes if network in (None, n.network)]

    def delete_node(self, key: bytes) -> None:
        self._nodes.pop(key, None)

    def close(self) -> None:
        pass


_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE networks (
            name TEXT PRIMARY KEY,
            cidr TEXT NOT NULL,
            approval_required INTEGER NOT NULL)""",
        """CREATE TABLE auth_keys (
            id TEXT PRIMARY KEY,
            network TEXT NOT NULL REFERENCES networks(name),
            secret_hash BLOB NOT NULL,
            created REAL NOT NULL,
            expires REAL,
            reusable INTEGER NOT NULL,
            ephemeral INTEGER NOT NULL,
            uses INTEGER NOT NULL)""",
        """CREATE TABLE nodes (
            key BLOB PRIMARY KEY,
            network TEXT NOT NULL REFERENCES networks(name),
            name TEXT NOT NULL,
            address TEXT NOT NULL,
            hostname TEXT NOT NULL,
            created REAL NOT NULL,
            version TEXT NOT NULL,
            os TEXT,
            approved INTEGER NOT NULL,
            revoked INTEGER NOT NULL,
            ephemeral INTEGER NOT NULL,
            last_seen REAL,
            public_endpoint TEXT,
            local_endpoints TEXT NOT NULL,
            auth_key_id TEXT,
            UNIQUE (network, name),
            UNIQUE (network, address))""",
    ),
    ("ALTER TABLE nodes ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",),
)

_Convert = tuple[Callable[[Any], Any], Callable[[Any], Any]]
_BOOL: _Convert = (int, bool)
_CONVERSIONS: dict[str, _Convert] = {
    "approval_required": _BOOL,
    "reusable": _BOOL,
    "ephemeral": _BOOL,
    "approved": _BOOL,
    "revoked": _BOOL,
    "public_endpoint": (
        lambda ep: None if ep is None else str(ep),
        lambda text: None if text is None else Endpoint.parse(text),
    ),
    "local_endpoints": (
        lambda eps: json.dumps([str(ep) for ep in eps]),
        lambda text: tuple(Endpoint.parse(ep) for ep in json.loads(text)),
    ),
    "tags": (lambda tags: json.dumps(list(tags)), lambda text: tuple(json.loads(text))),
}


@dataclass(frozen=True)
class _Table:
    """How one record type maps onto one table (column names are the dataclass field names)."""

    name: str
    record: type
    primary_key: str
    order_by: str

    @property
    def columns(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.record)]

    def to_row(self, record: Any) -> list[Any]:
        identity: _Convert = (lambda v: v, lambda v: v)
        return [_CONVERSIONS.get(c, identity)[0](getattr(record, c)) for c in self.columns]

    def from_row(self, row: sqlite3.Row) -> Any:
        return self.record(
            **{c: _CONVERSIONS[c][1](row[c]) if c in _CONVERSIONS else row[c] for c in self.columns}
        )


def _create_private(path: str) -> None:
    """Create the database file mode 0600 if it is missing (SQLite would follow the umask, often
    0644): it lists every node's key, addresses and endpoints. Its WAL files take its mode."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


_NETWORKS = _Table("networks", Network, "name", "name")
_AUTH_KEYS = _Table("auth_keys", AuthKey, "id", "created, id")
_NODES = _Table("nodes", NodeRecord, "key", "network, created, name")


class SqliteStore:
    """A `Store` in one SQLite file (WAL, synchronous=FULL: a returned write survives power loss)."""

    def __init__(self, path: str) -> None:
        self.path = path
        _create_private(path)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._depth = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self.transaction():
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else row[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: database schema version {version} is newer than this meshvpn "
                    f"understands ({SCHEMA_VERSION})"
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            self._db.execute("DELETE FROM schema_version")
            self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    def _put(self, table: _Table, record: Any) -> None:
        columns = table.columns
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != table.primary_key)
        self._db.execute(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({table.primary_key}) DO UPDATE SET {updates}",
            table.to_row(record),
        )

    def _get(self, table: _Table, key: Any) -> Any:
        row = self._db.execute(
            f"SELECT * FROM {table.name} WHERE {table.primary_key} = ?", (key,)
        ).fetchone()
        return None if row is None else table.from_row(row)

    def _list(self, table: _Table, network: str | None) -> list[Any]:
        where, args = ("", ()) if network is None else ("WHERE network = ?", (network,))
        rows = self._db.execute(f"SELECT * FROM {table.name} {where} ORDER BY {table.order_by}", args)
        return [table.from_row(row) for row in rows]

    def put_network(self, network: Network) -> None:
        self._put(_NETWORKS, network)

    def get_network(self, name: str) -> Network | None:
        return self._get(_NETWORKS, name)

    def networks(self) -> list[Network]:
        return self._list(_NETWORKS, None)

    def put_auth_key(self, key: AuthKey) -> None:
        self._put(_AUTH_KEYS, key)

    def get_auth_key(self, key_id: str) -> AuthKey | None:
        return self._get(_AUTH_KEYS, key_id)

    def auth_keys(self, network: str | None = None) -> list[AuthKey]:
        return self._list(_AUTH_KEYS, network)

    def put_node(self, node: NodeRecord) -> None:
        self._put(_NODES, node)

    def get_node(self, key: bytes) -> NodeRecord | None:
        return self._get(_NODES, key)

    def nodes(self, network: str | None = None) -> list[NodeRecord]:
        return self._list(_NODES, network)

    def delete_node(self, key: bytes) -> None:
        self._db.execute("DELETE FROM nodes WHERE key = ?", (key,))

    def close(self) -> None:
        self._db.close()
