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

A notification is JSON, of one of four kinds:

* a change, ``{"from": instance, "network": name, "key": base64, "frame": text or null}``, the
  frame exactly as this instance's own nodes got it (far below PostgreSQL's 8000-byte payload
  limit), with ``"to": instance`` when it answers that instance's `sync` alone (the others skip it;
  an instance of the previous release applies it again, which changes nothing);
* a punch, ``{"from": instance, "network": name, "punch": base64, "frame": text}``: a node here
  asked to punch node ``punch``, online on another instance, which sends it ``frame`` (the
  encoded `punch` towards the requester) if it has it online (`Membership.punched_elsewhere`);
* a sync, ``{"from": instance, "sync": true}``, once an instance LISTENs, before it takes any node:
  every other instance answers with a change for each node online there, since the new one heard
  none of their joins (an instance of the previous release takes it for a heartbeat);
* a heartbeat ``{"from": instance}`` every `HEARTBEAT` seconds, for instances of the previous
  release, which judge liveness by it.

An instance skips its own. Which instances are alive PostgreSQL itself says: every session of an
instance carries ``application_name`` `APPLICATION` and the instance, and `alive` lists the
instances with a session on the same database in ``pg_stat_activity``. A killed instance's sessions end with its
process (on another host, within about 11 s of its last answer: the sessions ask the server for
TCP keepalives), and the others then count its nodes offline; an instance that is merely slow,
or whose notifications another reads late, keeps its nodes in every view. A notification that
does not parse (`parse`) is logged and dropped.
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
"""Seconds between an instance's heartbeats (for instances of the previous release)."""
CHECK = 5.0
"""Seconds between looks at which instances are alive (`alive`)."""
APPLICATION = "meshvpn-coord"
"""The ``application_name`` of an instance's sessions, followed by a space and the instance."""
KEEPALIVES = ("SELECT set_config('tcp_keepalives_idle', '5', false), set_config('tcp_keepalives_interval', '2', false),"
              " set_config('tcp_keepalives_count', '3', false)")
"""The database server drops a session whose host stopped answering within about 11 s (ignored
on a unix socket, where a process's end closes its sessions at once)."""

Changed = Callable[[str, bytes, "bytes | None", str], None]
"""Called with (network, node key, frame or None, instance) for each change another instance made."""
Synced = Callable[[str], None]
"""Called with an instance that just started and asks what is online here (`answer`)."""
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
    to: str | None = None
    """The one instance a change is for (an answer to its sync); None: every instance."""
    sync: bool = False
    """The sender just started and asks what is online on the others."""


def parse(payload: str) -> Notification:
    """The notification in `payload`; RemoteProtocolError for anything else."""
    try:
        note = json.loads(payload)
        if not isinstance(note, dict) or not isinstance(note.get("from"), str):
            raise ValueError("no sender")
        if "key" not in note and "punch" not in note:
            return Notification(note["from"], sync=note.get("sync") is True)
        to = note.get("to")
        if not isinstance(to, str | None):
            raise ValueError("bad addressee")
        network, frame = note["network"], note["frame"]
        punch = "punch" in note
        key = decode_key(note["punch" if punch else "key"])
        if not isinstance(network, str) or not (isinstance(frame, str) or frame is None and not punch):
            raise ValueError("bad field types")
    except (ValueError, KeyError, TypeError, MeshError) as exc:
        raise RemoteProtocolError(f"notification does not parse: {exc}") from None
    return Notification(note["from"], network, key, None if frame is None else frame.encode(), punch, to)


class InstanceLink:
    """This instance's LISTEN session and the connection it publishes on."""

    def __init__(self, dsn: str, on_change: Changed, on_sync: Synced, on_punch: Punched) -> None:
        self.dsn = dsn
        self.instance = os.urandom(8).hex()
        self._on_change = on_change
        self._on_sync = on_sync
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

        name = f"{APPLICATION} {self.instance}"
        self._publisher = connect(self.dsn, application_name=name)
        try:
            self._listener = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row,
                                                                   application_name=name)
        except psycopg.Error as exc:
            raise ConfigError(f"database: cannot connect to {redact(self.dsn)}: {str(exc).strip()}") from None
        self._publisher.execute(KEEPALIVES)
        await self._listener.execute(KEEPALIVES)
        await self._listener.execute(f"LISTEN {CHANNEL}")
        self._task = asyncio.create_task(self._listen())
        self._notify({"from": self.instance, "sync": True})
        self.flush()
        self._beats = asyncio.create_task(self._heartbeats())

    def alive(self) -> set[str] | None:
        """The instances (this one too) with a session on the database now; None when the
        database does not answer (then nobody's nodes should go offline for it)."""
        import psycopg

        try:
            rows = self._publisher.execute("SELECT application_name FROM pg_stat_activity"
                                           " WHERE datname = current_database() AND application_name LIKE %s",
                                           (APPLICATION + " %",)).fetchall()
        except psycopg.Error as exc:
            log.warning("cannot tell which coord instances are alive: %s", str(exc).strip())
            return None
        return {row["application_name"].split(" ", 1)[1] for row in rows}

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

    def answer(self, instance: str, online: list[tuple[str, bytes, bytes]]) -> None:
        """Tell `instance`, which asked in its sync, of each (network, key, `peer_update` frame) online here."""
        for network, key, frame in online:
            self._notify({"from": self.instance, "to": instance, "network": network, "key": encode_key(key),
                          "frame": frame.decode()})
        self.flush()

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
            if note.origin == self.instance or note.to not in (None, self.instance):
                continue
            if note.key is None and not note.sync:
                continue
            self.received += 1
            try:
                if note.sync:
                    self._on_sync(note.origin)
                elif note.punch:
                    self._on_punch(note.network, note.key, note.frame, note.origin)
                else:
                    self._on_change(note.network, note.key, note.frame, note.origin)
            except Exception:
                log.exception("internal error applying a notification from another instance")
