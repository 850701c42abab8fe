"""The newest timestamp per key, kept in the state directory across restarts: replays refused after one.

Why: a node's responder accepts an initiation only if its TAI64N timestamp is newer than every
one it accepted from that peer (``meshvpn.noise.InitiationTimestamps``), and a relay a hello only
if its timestamp is newer than every one it accepted from that node (``meshvpn.relay.core``).
Held in memory only, those records died with the process, so a captured initiation or hello
replayed after a restart was taken once more.  The daemon and the relay load their record at
start and write it back when it changed, at most every WRITE_INTERVAL seconds and once more when
they stop (as WireGuard suggests: rarely, not per message).  Only what was accepted in the last
interval before a crash can be replayed after it.

A file is JSON, ``{"version": 1, SECTION: {base64 key: hex timestamp}}`` (the node's
``initiation-timestamps.json``, section ``initiations``, 12-byte TAI64N; the relay's
``relay-hello-timestamps.json``, section ``hellos``, 8-byte big-endian Unix milliseconds),
written to a temporary file with mode 0600, synced and renamed over the old one, so a crash
leaves the old record or the new one, never half of one.  :class:`TimestampJournal` (sans-IO)
decides when to write; :class:`TimestampFile` reads and writes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

from meshvpn.errors import MeshError

log = logging.getLogger("meshvpn.timestamps")

FILE_NAME = "initiation-timestamps.json"
"""The node's record of initiation timestamps inside ``state_dir``."""
SECTION = "initiations"
WRITE_INTERVAL = 10.0
"""Least seconds between two writes of a changed record."""
_VERSION = 1
_TIMESTAMP_LEN = 12
_KEY_LEN = 32


class TimestampFileError(MeshError):
    """The record cannot be read; the message names the file."""


def encode(greatest: dict[bytes, bytes], section: str = SECTION) -> bytes:
    """The file's bytes for ``greatest`` (key -> timestamp bytes, e.g. the node's 12-byte TAI64N)."""
    entries = {base64.b64encode(key).decode(): stamp.hex() for key, stamp in sorted(greatest.items())}
    return json.dumps({"version": _VERSION, section: entries}, indent=1).encode() + b"\n"


def decode(data: bytes, section: str = SECTION, stamp_len: int = _TIMESTAMP_LEN) -> dict[bytes, bytes]:
    """The record in ``data``; ValueError if it is not one."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ValueError("not a version 1 record")
    entries = document.get(section)
    if not isinstance(entries, dict):
        raise ValueError(f"no {section}")
    out = {}
    for key_text, stamp_text in entries.items():
        try:
            key, stamp = base64.b64decode(key_text, validate=True), bytes.fromhex(stamp_text)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ValueError(f"bad entry {key_text!r}") from exc
        if len(key) != _KEY_LEN or len(stamp) != stamp_len:
            raise ValueError(f"bad entry {key_text!r}")
        out[key] = stamp
    return out


class TimestampJournal:
    """Which record must be written, and when: changed, and WRITE_INTERVAL after the last write."""

    def __init__(self, greatest: dict[bytes, object], interval: float = WRITE_INTERVAL) -> None:
        self.greatest = greatest
        """The live record (``InitiationTimestamps.greatest``, the relay's hello floors), read at each check."""
        self.interval = interval
        self._saved = dict(greatest)
        self._written_at = float("-inf")

    def due(self, now: float, stopping: bool = False) -> Optional[dict[bytes, object]]:
        """A copy of the record to write now, or None; ``stopping`` ignores the interval."""
        if self.greatest == self._saved or (not stopping and now < self._written_at + self.interval):
            return None
        return dict(self.greatest)

    def written(self, record: dict[bytes, object], now: float) -> None:
        """``record`` (from :meth:`due`) is on disk."""
        self._saved = record
        self._written_at = now


def restore(greatest: dict[bytes, bytes], file: TimestampFile) -> TimestampJournal:
    """Load the stored record into the live one (``InitiationTimestamps.greatest``) at start; its journal."""
    for key, stamp in file.load().items():
        if stamp > greatest.get(key, b""):
            greatest[key] = stamp
    return TimestampJournal(greatest)


class TimestampFile:
    """A record's file in the state directory (the node's initiations unless told otherwise)."""

    def __init__(self, state_dir: Path, name: str = FILE_NAME, section: str = SECTION,
                 stamp_len: int = _TIMESTAMP_LEN) -> None:
        self.path = Path(state_dir) / name
        self.section, self.stamp_len = section, stamp_len

    def load(self) -> dict[bytes, bytes]:
        """The stored record; empty if there is none yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TimestampFileError(f"{self.path}: cannot read: {exc.strerror}") from exc
        try:
            return decode(data, self.section, self.stamp_len)
        except ValueError as exc:
            raise TimestampFileError(f"{self.path}: not a record of {self.section} ({exc}); move it away to start "
                                     "afresh") from exc

    def save(self, record: dict[bytes, bytes]) -> None:
        """Replace the file atomically with ``record``, mode 0600 (the directory is made 0700 if missing)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o600)
            out.write(encode(record, self.section))
            out.flush()
            os.fsync(fd)
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def keep(self, journal: TimestampJournal, now: float, stopping: bool = False,
             to_bytes: Optional[Callable[[object], bytes]] = None) -> None:
        """Write `journal`'s record if it is due (`TimestampJournal.due`), each timestamp through
        `to_bytes` if given; a failed write is logged and tried again when next due."""
        record = journal.due(now, stopping)
        if record is None:
            return
        try:
            self.save(record if to_bytes is None else {key: to_bytes(stamp) for key, stamp in record.items()})
        except OSError as exc:
            log.warning("cannot keep the newest %s in %s: %s", self.section, self.path, exc)
            return
        journal.written(record, now)
