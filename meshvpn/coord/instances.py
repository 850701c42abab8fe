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
payload limit), or a heartbeat ``{"from": instance}`` every `HEARTBEAT` seconds. An instance
skips its own. Whatever another instance sends renews its lease (`elsewhere.LEASE`): a killed
instance falls silent, and the others then count its nodes offline. A notification that does
not parse is logged and dropped.
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
HEARTBEAT = 5.0
"""Seconds between an instance's heartbeats."""

Changed = Callable[[str, bytes, "bytes | None", str], None]
"""Called with (network, node key, frame or None, instance) for each change another instance made."""
Heard = Callable[[str], None]
"""Called with the instance whenever another instance spoke (a change or a heartbeat)."""


class InstanceLink:
    """This instance's LISTEN session and the connection it publishes on."""

    def __init__(self, dsn: str, on_change: Changed, on_heard: Heard) -> None:
        self.dsn = dsn
        self.instance = os.urandom(8).hex()
        self._on_change = on_change
        self._on_heard = on_heard
        self._beats: asyncio.Task | None = None
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
        self._beats = asyncio.create_task(self._heartbeats())

    async def close(self) -> None:
        for task in (self._beats, self._task):
            if task is None:
                continue
            task.cancel()
            try:
                await task
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

    async def _heartbeats(self) -> None:
        while True:
            self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps({"from": self.instance})))
            await asyncio.sleep(HEARTBEAT)

    async def _listen(self) -> None:
        async for notify in self._listener.notifies():
            try:
                change = json.loads(notify.payload)
                origin = change["from"]
                if origin == self.instance or not isinstance(origin, str):
                    continue
                self._on_heard(origin)
                if "key" not in change:
                    continue
                network, key, frame = change["network"], decode_key(change["key"]), change["frame"]
                if not isinstance(network, str) or not (frame is None or isinstance(frame, str)):
                    raise ValueError("bad field types")
            except (ValueError, KeyError, TypeError, MeshError) as exc:
                log.warning("dropping a notification on %s that does not parse: %s", CHANNEL, exc)
                continue
            self.received += 1
            try:
                self._on_change(network, key, None if frame is None else frame.encode(), origin)
            except Exception:
                log.exception("internal error applying a change from another instance")
