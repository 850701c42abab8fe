"""Several coord instances on one PostgreSQL database tell each other of changes through it.

Each instance keeps its own membership core for the nodes connected to it, and the database is
the one source of truth for records. What a record does not hold (who is online where, with
which observed address, relay and NAT) an instance learns from the others: every peer update
or removal its core announces is also published with ``pg_notify`` on `CHANNEL`, and every
instance LISTENs there and hands what the others published to its core
(`Membership.changed_elsewhere`), which re-reads the record and tells its own nodes. Admin
approvals and revocations are published too (without a message), so an admin verb on any
instance acts on the whole network. PostgreSQL delivers notifications in commit order to every
listening session; that is all the cluster protocol there is.

A notification is JSON: ``{"from": instance, "network": name, "key": base64, "frame": text or
null}``, the frame exactly as this instance's own nodes got it (far below PostgreSQL's 8000-byte
payload limit). An instance skips its own. A notification that does not parse is logged and
dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Callable

from meshvpn.coord.pgstore import connect, redact
from meshvpn.errors import ConfigError, MeshError
from meshvpn.keys import decode_key, encode_key

log = logging.getLogger("meshvpn.coord.instances")

CHANNEL = "meshvpn_coord"

Changed = Callable[[str, bytes, "bytes | None"], None]
"""Called with (network, node key, frame or None) for each change another instance made."""


class InstanceLink:
    """This instance's LISTEN session and the connection it publishes on."""

    def __init__(self, dsn: str, on_change: Changed) -> None:
        self.dsn = dsn
        self.instance = os.urandom(8).hex()
        self._on_change = on_change
        self._publisher: Any = None
        self._listener: Any = None
        self._task: asyncio.Task | None = None
        self.published = 0
        self.received = 0

    async def start(self) -> None:
        """Connect both sessions and LISTEN; ConfigError if the database cannot be reached."""
        import psycopg
        from psycopg.rows import dict_row

        self._publisher = connect(self.dsn)
        try:
            self._listener = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row)
        except psycopg.Error as exc:
            raise ConfigError(f"database: cannot connect to {redact(self.dsn)}: {str(exc).strip()}") from None
        await self._listener.execute(f"LISTEN {CHANNEL}")
        self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._listener is not None:
            await self._listener.close()
        if self._publisher is not None:
            self._publisher.close()

    def publish(self, network: str, key: bytes, frame: bytes | None) -> None:
        """Tell the other instances that `key`'s record changed and, with `frame`, what its
        peers on this instance were told."""
        payload = {"from": self.instance, "network": network, "key": encode_key(key),
                   "frame": None if frame is None else frame.decode()}
        self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(payload, separators=(",", ":"))))
        self.published += 1

    async def _listen(self) -> None:
        async for notify in self._listener.notifies():
            try:
                change = json.loads(notify.payload)
                if change["from"] == self.instance:
                    continue
                network, key, frame = change["network"], decode_key(change["key"]), change["frame"]
                if not isinstance(network, str) or not (frame is None or isinstance(frame, str)):
                    raise ValueError("bad field types")
            except (ValueError, KeyError, TypeError, MeshError) as exc:
                log.warning("dropping a notification on %s that does not parse: %s", CHANNEL, exc)
                continue
            self.received += 1
            try:
                self._on_change(network, key, None if frame is None else frame.encode())
            except Exception:
                log.exception("internal error applying a change from another instance")
