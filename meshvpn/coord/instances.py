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

A notification is JSON, of one of three kinds:

* a change, ``{"from": instance, "network": name, "key": base64, "frame": text or null}``, the
  frame exactly as this instance's own nodes got it (far below PostgreSQL's 8000-byte payload
  limit);
* a punch, ``{"from": instance, "network": name, "punch": base64, "frame": text}``: a node here
  asked to punch node ``punch``, online on another instance, which sends it ``frame`` (the
  encoded `punch` towards the requester) if it has it online (`Membership.punched_elsewhere`);
* a heartbeat ``{"from": instance}`` every `HEARTBEAT` seconds.

An instance skips its own. Whatever another instance sends renews its lease (`elsewhere.LEASE`):
a killed instance falls silent, and the others then count its nodes offline. A notification
that does not parse (`parse`) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from meshvpn.coord.pgstore import connect, redact
from meshvpn.errors import ConfigError, MeshError, RemoteProtocolError
from meshvpn.keys import decode_key, encode_key

log = logging.getLogger("meshvpn.coord.instances")

CHANNEL = "meshvpn_coord"
HEARTBEAT = 5.0
"""Seconds between an instance's heartbeats."""

Changed = Callable[[str, bytes, "bytes | None", str], None]
"""Called with (network, node key, frame or None, instance) for each change another instance made."""
Heard = Callable[[str], None]
"""Called with the instance whenever another instance spoke (a change or a heartbeat)."""
Punched = Callable[[str, bytes, bytes, str], None]
"""Called with (network, node key, punch frame, instance) for each punch another instance asks for."""


@dataclass(frozen=True)
class Notification:
    """One notification as `parse` read it; `key` and `network` are None for a heartbeat."""

    origin: str
    network: str | None = None
    key: bytes | None = None
    frame: bytes | None = None
    punch: bool = False
    """A punch for node `key` (`frame` its encoded `punch`), else a change of `key`'s record."""


def parse(payload: str) -> Notification:
    """The notification in `payload`; RemoteProtocolError for anything else."""
    try:
        note = json.loads(payload)
        if not isinstance(note, dict) or not isinstance(note.get("from"), str):
            raise ValueError("no sender")
        if "key" not in note and "punch" not in note:
            return Notification(note["from"])
        network, frame = note["network"], note["frame"]
        punch = "punch" in note
        key = decode_key(note["punch" if punch else "key"])
        if not isinstance(network, str) or not (isinstance(frame, str) or frame is None and not punch):
            raise ValueError("bad field types")
    except (ValueError, KeyError, TypeError, MeshError) as exc:
        raise RemoteProtocolError(f"notification does not parse: {exc}") from None
    return Notification(note["from"], network, key, None if frame is None else frame.encode(), punch)


class InstanceLink:
    """This instance's LISTEN session and the connection it publishes on."""

    def __init__(self, dsn: str, on_change: Changed, on_heard: Heard, on_punch: Punched) -> None:
        self.dsn = dsn
        self.instance = os.urandom(8).hex()
        self._on_change = on_change
        self._on_heard = on_heard
        self._on_punch = on_punch
        self._beats: asyncio.Task | None = None
        self._publisher: Any = None
        self._listener: Any = None
        self._task: asyncio.Task | None = None
        self._pending: list[str] = []
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
        self._notify({"from": self.instance, "network": network, "key": encode_key(key),
                      "frame": None if frame is None else frame.decode()})

    def punch(self, network: str, key: bytes, frame: bytes) -> None:
        """Ask the instance that has node `key` online to send it `frame`, an encoded `punch`."""
        self._notify({"from": self.instance, "network": network, "punch": encode_key(key), "frame": frame.decode()})

    def _notify(self, payload: dict) -> None:
        """Queue a notification until `flush`."""
        self._pending.append(json.dumps(payload, separators=(",", ":")))
        self.published += 1

    def flush(self) -> None:
        """Publish the queued notifications in one statement, in order: a round trip to the
        database per announcement kept the event loop waiting when thousands of nodes joined."""
        if not self._pending:
            return
        payloads, self._pending = self._pending, []
        self._publisher.execute("SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload", (CHANNEL, payloads))

    async def _heartbeats(self) -> None:
        while True:
            self._pending.append(json.dumps({"from": self.instance}))
            self.flush()
            await asyncio.sleep(HEARTBEAT)

    async def _listen(self) -> None:
        async for notify in self._listener.notifies():
            try:
                note = parse(notify.payload)
            except RemoteProtocolError as exc:
                log.warning("dropping a notification on %s: %s", CHANNEL, exc)
                continue
            if note.origin == self.instance:
                continue
            self._on_heard(note.origin)
            if note.key is None:
                continue
            self.received += 1
            try:
                if note.punch:
                    self._on_punch(note.network, note.key, note.frame, note.origin)
                else:
                    self._on_change(note.network, note.key, note.frame, note.origin)
            except Exception:
                log.exception("internal error applying a notification from another instance")
