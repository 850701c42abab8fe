"""A checksummed TCP transfer through a tunnel: one sink, one source, each run in a namespace.

`python -m meshvpn.lab.transfer sink ADDRESS` listens on ADDRESS (port `PORT`), prints
`ready`, takes one connection and counts what arrives until the sender closes.
`python -m meshvpn.lab.transfer source ADDRESS --size N [--over S]` sends N random bytes
(spread evenly over S seconds when given, so something can happen during the transfer), or
`--duration S` sends 1 MiB blocks for S seconds; it prints `started` once connected. Each end
then prints one JSON line: the bytes it counted, their SHA-256 and the seconds it took (the
sink from the first byte, the source from the connect), and the sink's progress over time, so a
rate can be read for any stretch of the transfer (`meshvpn.lab.rates`). The lab tests and the demo start both
ends with `start_sink`/`start_source` (or `transfer` for the whole run) and compare the two
results: equal bytes and digests mean the tunnel delivered the stream intact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from meshvpn.lab.netns import LabError, Namespace, python_command

PORT = 9000
BLOCK = 1 << 20
"""Bytes per send of a `--duration` transfer."""
PACED_CHUNKS = 64
"""A paced transfer (`--over`) is sent in this many equal chunks, evenly spaced."""
ACCEPT_TIMEOUT = 60.0
"""Seconds the sink waits for the connection, and then for each receive."""
CONNECT_TIMEOUT = 30.0
PROGRESS_EVERY = 0.01
"""Seconds between two of the sink's progress samples (at most: a sample follows a receive)."""


@dataclass(frozen=True)
class TransferResult:
    """What one end of a transfer counted."""

    bytes: int
    sha256: str
    """Hex digest of every byte, in order."""
    seconds: float
    """Sink: first byte to end of stream. Source: connect to close."""
    progress: list[tuple[float, int]] = field(default_factory=list)
    """Sink: `(time.monotonic(), bytes so far)` from the first byte to the end of the stream, a
    sample at most every `PROGRESS_EVERY` seconds (the clock is the whole machine's, namespaces
    share it). Source: empty."""

    def same_data(self, other: TransferResult) -> bool:
        """Whether both ends saw the same stream (length and digest; the times differ)."""
        return (self.bytes, self.sha256) == (other.bytes, other.sha256)

    def mbit_per_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


# ---- the two ends, as run inside a namespace


def sink(address: str, port: int = PORT, timeout: float = ACCEPT_TIMEOUT) -> TransferResult:
    """Accept one connection on `address:port` and count the stream until the peer closes."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(1)
        server.settimeout(timeout)
        print("ready", flush=True)
        conn, _ = server.accept()
    with conn:
        conn.settimeout(timeout)
        digest, total, progress = hashlib.sha256(), 0, []
        buffer = bytearray(1 << 16)
        view = memoryview(buffer)
        while count := conn.recv_into(buffer):
            now = time.monotonic()
            digest.update(view[:count])
            total += count
            if not progress or now - progress[-1][0] >= PROGRESS_EVERY:
                progress.append((now, total))
        end = time.monotonic()
    if progress:
        progress.append((end, total))
    return TransferResult(total, digest.hexdigest(), end - (progress[0][0] if progress else end), progress)


def source(address: str, port: int = PORT, size: int | None = None, over: float = 0.0,
           duration: float | None = None) -> TransferResult:
    """Send `size` random bytes (in `PACED_CHUNKS` chunks over `over` seconds if > 0), or
    `BLOCK`-sized random blocks for `duration` seconds."""
    with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT) as conn:
        print("started", flush=True)
        digest, total, started = hashlib.sha256(), 0, time.monotonic()

        def send(data: bytes) -> None:
            nonlocal total
            conn.sendall(data)
            digest.update(data)
            total += len(data)

        if duration is not None:
            block = os.urandom(BLOCK)
            while time.monotonic() < started + duration:
                send(block)
        elif over > 0:
            chunk = os.urandom(size // PACED_CHUNKS)
            for _ in range(PACED_CHUNKS):
                send(chunk)
                time.sleep(over / PACED_CHUNKS)
            send(os.urandom(size - total))
        else:
            send(os.urandom(size))
    return TransferResult(total, digest.hexdigest(), time.monotonic() - started)


# ---- driving both ends from the lab


def _read_line(proc: subprocess.Popen, what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        raise LabError(f"the transfer's {what} ended without a word")
    return line


def _expect(proc: subprocess.Popen, word: str, what: str) -> None:
    line = _read_line(proc, what)
    if line != word:
        raise LabError(f"the transfer's {what} said {line!r}, not {word!r}")


def result(proc: subprocess.Popen, what: str = "end") -> TransferResult:
    """The result line of a sink or source started by `start_sink`/`start_source`."""
    line = _read_line(proc, what)
    try:
        fields = json.loads(line)
        return TransferResult(**{**fields, "progress": [tuple(sample) for sample in fields.get("progress", [])]})
    except (ValueError, TypeError):
        raise LabError(f"the transfer's {what} printed {line!r}") from None


def start_sink(ns: Namespace, address: str, port: int = PORT, timeout: float = ACCEPT_TIMEOUT) -> subprocess.Popen:
    """Start a sink in `ns` on `address:port` and wait until it listens."""
    proc = ns.popen(python_command("meshvpn.lab.transfer", "sink", address, "--port", str(port),
                                   "--timeout", str(timeout)), stdout=subprocess.PIPE, text=True)
    _expect(proc, "ready", "sink")
    return proc


def start_source(ns: Namespace, address: str, port: int = PORT, size: int | None = None, over: float = 0.0,
                 duration: float | None = None) -> subprocess.Popen:
    """Start a source in `ns` towards `address:port` (see `source`) and wait until it connected."""
    amount = ["--duration", str(duration)] if duration is not None else ["--size", str(size), "--over", str(over)]
    proc = ns.popen(python_command("meshvpn.lab.transfer", "source", address, "--port", str(port), *amount),
                    stdout=subprocess.PIPE, text=True)
    _expect(proc, "started", "source")
    return proc


def transfer(src: Namespace, dst: Namespace, address: str, port: int = PORT, size: int | None = None,
             over: float = 0.0, duration: float | None = None,
             during: Callable[[], None] | None = None) -> tuple[TransferResult, TransferResult]:
    """Send from `src` to a sink in `dst` at `address:port`; `during()` runs while data flows.

    Returns (sent, received). Both processes are stopped before it returns, also on failure.
    """
    sink_proc = start_sink(dst, address, port)
    source_proc = None
    try:
        source_proc = start_source(src, address, port, size=size, over=over, duration=duration)
        if during is not None:
            during()
        return result(source_proc, "source"), result(sink_proc, "sink")
    finally:
        if source_proc is not None:
            src.stop(source_proc)
        dst.stop(sink_proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.lab.transfer", description=__doc__.split("\n\n")[0])
    ends = parser.add_subparsers(dest="end", required=True)
    sink_args = ends.add_parser("sink", help="receive one stream and count it")
    sink_args.add_argument("address")
    sink_args.add_argument("--port", type=int, default=PORT)
    sink_args.add_argument("--timeout", type=float, default=ACCEPT_TIMEOUT)
    source_args = ends.add_parser("source", help="send random data and count it")
    source_args.add_argument("address")
    source_args.add_argument("--port", type=int, default=PORT)
    amount = source_args.add_mutually_exclusive_group(required=True)
    amount.add_argument("--size", type=int, help="bytes to send")
    amount.add_argument("--duration", type=float, help="send for this many seconds")
    source_args.add_argument("--over", type=float, default=0.0, help="with --size: spread it over these seconds")
    args = parser.parse_args(argv)
    if args.end == "sink":
        done = sink(args.address, args.port, args.timeout)
    else:
        done = source(args.address, args.port, size=args.size, over=args.over, duration=args.duration)
    print(json.dumps(asdict(done)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
