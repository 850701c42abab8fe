"""Durable state of the coordination server: networks, pre-auth keys and nodes.

`Store` is the seam: `MemoryStore` for unit tests, `SqliteStore` (the default) or
`meshvpn.coord.pgstore.PostgresStore` for the server; the two SQL stores share the tables,
statements and migrations here (`SqlStore`) and differ only in their `Dialect`. Every write is
committed when the call returns (or when the outermost `transaction()` block ends), so the
membership core may acknowledge a change as soon as it has written it: a restart loses nothing
that any node or admin was told. Timestamps are Unix times supplied by the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from meshvpn.coord.authkeys import AuthKey
from meshvpn.coord.migrations import MIGRATIONS as _MIGRATIONS, SCHEMA_VERSION
from meshvpn.control.messages import Endpoint, parse_endpoint
from meshvpn.errors import ConfigError, MeshError


class Conflict(MeshError):
    """A write broke a uniqueness rule: with several coord instances on one database, another
    instance took the same name or address a moment ago."""

    def __init__(self, text: str, column: str | None) -> None:
        super().__init__(text)
        self.column = column
        """The node column whose value was taken ("address" or "name"), if known."""


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


@dataclass(frozen=True)
class PeerRelayGrant:
    """An admin's word that the nodes `member` names may relay for `network` (`meshvpn.coord.peerrelays`)."""

    network: str
    member: str
    """A node name, or ``tag:TAG`` for every node with that tag."""


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
    def names_since(self, network: str, created: float) -> list[tuple[bytes, str, str]]:
        """Key, name and address of the nodes of `network` created at `created` or later: what
        other instances admitted lately, without reading whole records."""
    def nodes_by_key(self, keys: list[bytes]) -> list[NodeRecord]:
        """The records of those of `keys` that exist, in one read."""
    def lock_network(self, network: str) -> None:
        """Inside a transaction that admits a node to `network`: wait until no other coord
        instance sharing the database is admitting there, and hold that until the commit."""
    def delete_node(self, key: bytes) -> None: ...
    def put_peer_relay(self, grant: PeerRelayGrant) -> None: ...
    def delete_peer_relay(self, grant: PeerRelayGrant) -> None: ...
    def peer_relays(self, network: str | None = None) -> list[PeerRelayGrant]: ...
    def close(self) -> None: ...


class MemoryStore:
    """A `Store` in dictionaries; transactions roll back on exceptions like the real one."""

    def __init__(self) -> None:
        self._networks: dict[str, Network] = {}
        self._auth_keys: dict[str, AuthKey] = {}
        self._nodes: dict[bytes, NodeRecord] = {}
        self._peer_relays: set[PeerRelayGrant] = set()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        saved = (dict(self._networks), dict(self._auth_keys), dict(self._nodes), set(self._peer_relays))
        try:
            yield
        except BaseException:
            self._networks, self._auth_keys, self._nodes, self._peer_relays = saved
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

    def names_since(self, network: str, created: float) -> list[tuple[bytes, str, str]]:
        recent = [n for n in self._nodes.values() if n.network == network and n.created >= created]
        return [(n.key, n.name, n.address) for n in sorted(recent, key=lambda n: (n.created, n.name))]

    def nodes_by_key(self, keys: list[bytes]) -> list[NodeRecord]:
        return [self._nodes[key] for key in keys if key in self._nodes]

    def lock_network(self, network: str) -> None:
        """One process, one instance: nothing to wait for."""

    def delete_node(self, key: bytes) -> None:
        self._nodes.pop(key, None)

    def put_peer_relay(self, grant: PeerRelayGrant) -> None:
        self._peer_relays.add(grant)

    def delete_peer_relay(self, grant: PeerRelayGrant) -> None:
        self._peer_relays.discard(grant)

    def peer_relays(self, network: str | None = None) -> list[PeerRelayGrant]:
        return sorted((g for g in self._peer_relays if network in (None, g.network)),
                      key=lambda g: (g.network, g.member))

    def close(self) -> None:
        pass



_Convert = tuple[Callable[[Any], Any], Callable[[Any], Any]]
_BOOL: _Convert = (int, bool)
_CONVERSIONS: dict[str, _Convert] = {
    "approval_required": _BOOL,
    "reusable": _BOOL,
    "ephemeral": _BOOL,
    "approved": _BOOL,
    "revoked": _BOOL,
    "secret_hash": (bytes, bytes),
    "key": (bytes, bytes),
    "public_endpoint": (
        lambda ep: None if ep is None else str(ep),
        lambda text: None if text is None else parse_endpoint(text),
    ),
    "local_endpoints": (
        lambda eps: json.dumps([str(ep) for ep in eps]),
        lambda text: tuple(parse_endpoint(ep) for ep in json.loads(text)),
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

    def from_row(self, row: Mapping[str, Any]) -> Any:
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


@dataclass(frozen=True)
class Dialect:
    """All that differs between the SQL back ends; the tables and statements are shared."""

    marker: str
    """How a statement marks a parameter (``?`` in the shared statements)."""
    begin: str
    """Opens a write transaction."""
    lock_row: str = ""
    """Appended to a read inside a transaction, so that a concurrent writer waits for it."""
    types: tuple[tuple[str, str], ...] = ()
    """SQLite column types in the migrations and what this back end calls them."""

    def sql(self, statement: str) -> str:
        return statement if self.marker == "?" else statement.replace("?", self.marker)

    def ddl(self, statement: str) -> str:
        """A migration statement (written for SQLite) with this back end's column types."""
        for sqlite_type, own in self.types:
            statement = re.sub(rf"\b{sqlite_type}\b", own, statement)
        return statement


class SqlStore:
    """The `Store` on any SQL connection whose ``execute`` returns rows indexable by column name
    (sqlite3 with `sqlite3.Row`, psycopg with ``dict_row``); subclasses open the connection."""

    dialect: Dialect
    conflicts: tuple[type[Exception], ...] = ()
    """The driver's exceptions for a broken uniqueness rule (raised as `Conflict`)."""

    def __init__(self, db: Any, where: str, schema_version: int = SCHEMA_VERSION) -> None:
        self._db = db
        self.where = where
        """Names the database in error messages."""
        self._depth = 0
        try:
            self._migrate(schema_version)
        except BaseException:
            self._db.close()
            raise

    def _execute(self, statement: str, args: Any = ()) -> Any:
        return self._db.execute(self.dialect.sql(statement), args)

    def schema_version(self) -> int:
        row = self._execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else row["version"]

    def _migrate(self, target: int) -> None:
        """Bring the schema to `target` (the newest unless a test asks for an older one)."""
        with self.transaction():
            self._lock_schema()
            self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.where}: database schema version {version} is newer than this meshvpn "
                    f"understands ({SCHEMA_VERSION})"
                )
            for statements in _MIGRATIONS[version:target]:
                for statement in statements:
                    self._execute(self.dialect.ddl(statement))
            self._execute("DELETE FROM schema_version")
            self._execute("INSERT INTO schema_version VALUES (?)", (max(version, target),))

    def _lock_schema(self) -> None:
        """Keep other processes from migrating at the same time (the write transaction may do)."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction, or inside one a savepoint: a nested block that fails takes back its own
        writes and only those (the coord's shell groups a loop iteration's inputs in one)."""
        depth = self._depth
        self._execute(self.dialect.begin if depth == 0 else f"SAVEPOINT s{depth}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if depth == 0:
                self._execute("ROLLBACK")
            else:
                self._execute(f"ROLLBACK TO SAVEPOINT s{depth}")
                self._execute(f"RELEASE SAVEPOINT s{depth}")
            raise
        self._depth -= 1
        self._execute("COMMIT" if depth == 0 else f"RELEASE SAVEPOINT s{depth}")

    def _put(self, table: _Table, record: Any) -> None:
        columns = table.columns
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != table.primary_key)
        try:
            self._execute(
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT ({table.primary_key}) DO UPDATE SET {updates}",
                table.to_row(record),
            )
        except self.conflicts as exc:
            first_line = next(iter(str(exc).splitlines()), "")
            column = next((c for c in ("address", "name") if c in first_line), None)
            raise Conflict(f"{table.name}: {first_line}", column) from None

    def _get(self, table: _Table, key: Any) -> Any:
        lock = self.dialect.lock_row if self._depth else ""
        row = self._execute(f"SELECT * FROM {table.name} WHERE {table.primary_key} = ?{lock}", (key,)).fetchone()
        return None if row is None else table.from_row(row)

    def _list(self, table: _Table, network: str | None) -> list[Any]:
        where, args = ("", ()) if network is None else ("WHERE network = ?", (network,))
        rows = self._execute(f"SELECT * FROM {table.name} {where} ORDER BY {table.order_by}", args)
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

    def names_since(self, network: str, created: float) -> list[tuple[bytes, str, str]]:
        rows = self._execute(f"SELECT key, name, address FROM nodes WHERE network = ? AND created >= ? "
                             f"ORDER BY {_NODES.order_by}", (network, created))
        return [(bytes(row["key"]), row["name"], row["address"]) for row in rows]

    def nodes_by_key(self, keys: list[bytes]) -> list[NodeRecord]:
        if not keys:
            return []
        rows = self._execute(f"SELECT * FROM nodes WHERE key IN ({', '.join('?' * len(keys))})", keys)
        return [_NODES.from_row(row) for row in rows]

    def lock_network(self, network: str) -> None:
        """SQLite: the write transaction (BEGIN IMMEDIATE) already keeps other writers out."""

    def delete_node(self, key: bytes) -> None:
        self._execute("DELETE FROM nodes WHERE key = ?", (key,))

    def put_peer_relay(self, grant: PeerRelayGrant) -> None:
        self._execute("INSERT INTO peer_relays (network, member) VALUES (?, ?) ON CONFLICT DO NOTHING",
                      (grant.network, grant.member))

    def delete_peer_relay(self, grant: PeerRelayGrant) -> None:
        self._execute("DELETE FROM peer_relays WHERE network = ? AND member = ?", (grant.network, grant.member))

    def peer_relays(self, network: str | None = None) -> list[PeerRelayGrant]:
        where, args = ("", ()) if network is None else ("WHERE network = ?", (network,))
        rows = self._execute(f"SELECT network, member FROM peer_relays {where} ORDER BY network, member", args)
        return [PeerRelayGrant(row["network"], row["member"]) for row in rows]

    def close(self) -> None:
        self._db.close()


class SqliteStore(SqlStore):
    """A `Store` in one SQLite file (WAL, synchronous=FULL: a returned write survives power loss)."""

    dialect = Dialect(marker="?", begin="BEGIN IMMEDIATE")
    conflicts = (sqlite3.IntegrityError,)

    def __init__(self, path: str, schema_version: int = SCHEMA_VERSION) -> None:
        self.path = path
        _create_private(path)
        db = sqlite3.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        super().__init__(db, path, schema_version)


def open_store(database: Path | str) -> SqlStore:
    """The store the `database` setting names: a path is a SQLite file, a string a PostgreSQL
    connection string (`meshvpn.coord.pgstore`, imported only then: psycopg is optional).
    ConfigError names the database when it cannot be opened."""
    if isinstance(database, str):
        from meshvpn.coord.pgstore import PostgresStore

        return PostgresStore(database)
    try:  # create the file's directory (mode 0700) as systemd's StateDirectory= would
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return SqliteStore(str(database))
    except OSError as exc:
        raise ConfigError(f"database: cannot create the directory of {database}: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise ConfigError(f"database: cannot open {database}: {exc}") from None
