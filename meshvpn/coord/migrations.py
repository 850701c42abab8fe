"""The coord database's schema, as the migrations that build it: one list for every back end.

Version N is reached by running the statements of entries 0 .. N-1 in order (`store.SqlStore`
runs them at start, under a lock when the back end has one). They are written for SQLite;
`store.Dialect.types` renames the column types for another back end.
"""

from __future__ import annotations

SCHEMA_VERSION = 4

MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    (
        # Listings by network, in the order they are read.
        "CREATE INDEX auth_keys_by_network ON auth_keys (network, created, id)",
        "CREATE INDEX nodes_by_network ON nodes (network, created, name)",
    ),
    (
        """CREATE TABLE peer_relays (
            network TEXT NOT NULL REFERENCES networks(name),
            member TEXT NOT NULL,
            PRIMARY KEY (network, member))""",
    ),
)
"""Schema version N is reached by running the statements of entries 0 .. N-1, in order; a
released entry never changes. They are written for SQLite; `Dialect.types` renames its column
types for another back end."""
