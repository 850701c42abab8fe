"""The coord's store in PostgreSQL, so that several coord instances can share one database.

`PostgresStore` is `SqlStore` on a psycopg 3 connection: the same tables, statements and
migrations as SQLite, with PostgreSQL's column types and parameter markers (`POSTGRES`). A read
inside a transaction locks its row (``FOR UPDATE``), so two instances admitting nodes with one
one-off pre-auth key at the same moment take turns and the second sees it used. Migrations take
an advisory lock, so instances starting together migrate once; so does admitting a node to a
network (`lock_network`), so that two instances never pick the same name or address.

The connection runs in autocommit mode with explicit ``BEGIN``/``COMMIT`` from `SqlStore`, like
the SQLite one: every write is committed when the call (or the outermost transaction) returns.
"""

from __future__ import annotations

import re
from pathlib import Path

from meshvpn.coord.store import SCHEMA_VERSION, Dialect, SqlStore
from meshvpn.errors import ConfigError

POSTGRES = Dialect(marker="%s", begin="BEGIN", lock_row=" FOR UPDATE",
                   types=(("BLOB", "BYTEA"), ("REAL", "DOUBLE PRECISION")))
SCHEMA_LOCK = 0x6D76706E
"""Advisory lock key ("mvpn") held while the schema is checked and migrated."""
NETWORK_LOCK = 0x6D76616E
"""First half of the advisory lock key ("mvan", then the hash of the network's name) held while
a node is admitted to a network: two instances admitting at once would pick the same address."""
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def is_postgres(database: str | Path) -> bool:
    """Whether the `database` setting names a PostgreSQL server (a libpq URI) rather than a file."""
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


def redact(dsn: str) -> str:
    """`dsn` without its password, for logs and error messages."""
    return _PASSWORD.sub(r"\1***@", dsn)


def connect(dsn: str, **options):
    """A psycopg connection in autocommit mode with rows as dicts; ConfigError if it fails."""
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise ConfigError("database: a postgresql:// database needs psycopg (pip install 'meshvpn[postgresql]')") from None
    try:
        return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, **options)
    except psycopg.Error as exc:
        raise ConfigError(f"database: cannot connect to {redact(dsn)}: {str(exc).strip()}") from None


class PostgresStore(SqlStore):
    """A `Store` in a PostgreSQL database (libpq URI or socket DSN)."""

    dialect = POSTGRES

    def __init__(self, dsn: str, schema_version: int = SCHEMA_VERSION) -> None:
        import psycopg

        self.dsn = dsn
        self.conflicts = (psycopg.errors.UniqueViolation,)
        super().__init__(connect(dsn), redact(dsn), schema_version)

    def _lock_schema(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))

    def lock_network(self, network: str) -> None:
        """Admissions to `network` take turns across instances until this transaction ends."""
        self._execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (NETWORK_LOCK, network))
