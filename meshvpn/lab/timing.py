"""Timing lab events by their own clocks rather than by the test's polls.

A loaded machine takes a second or more to start a process in a namespace, so timing from the
test's side (start a clock, spawn `ping` until something shows) measures mostly the spawns.
Here both ends of an interval are events stamped where they happen: a trickle sender prints
the wall clock as it sends its first datagram, a receiver prints it as each datagram arrives,
and a daemon's or relay's log stamps its lines to the millisecond. The test only polls, cheaply
and without spawning anything, to know when to stop waiting; every helper is bounded in time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

from meshvpn.lab.mesh import Mesh, MeshTimeout, wait_for
from meshvpn.lab.netns import Namespace

TRICKLE_INTERVAL = 0.05
"""Seconds between a trickle's datagrams, so a node always has traffic for the peer."""
DISCARD_PORT = 9
"""Where a trickle goes when only the sending side matters: nothing listens."""
POLL_INTERVAL = 0.05

TRICKLE = r"""
import socket, sys, time
dst, port, interval, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + seconds
sent = time.time()
sock.sendto(b"trickle", (dst, port))
print(repr(sent), flush=True)
while time.monotonic() < end:
    time.sleep(interval)
    sock.sendto(b"trickle", (dst, port))
"""

RECEIVER = r"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(0.1)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        data, source = sock.recvfrom(2048)
    except socket.timeout:
        continue
    print(repr(time.time()), flush=True)
    sock.sendto(data, source)
"""

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_PATH_CHANGE = re.compile(r"path to (\S+): .* -> (\S+)")


def logged_at(log: Path, needle: re.Pattern[str], after: float) -> float | None:
    """Wall-clock time of the first line of `log` stamped at or after `after` that matches `needle`."""
    for line in log.read_text(errors="replace").splitlines():
        stamp = _LOG_TIME.match(line)
        if stamp is None or not needle.search(line):
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if when >= after - 0.001:  # the log keeps milliseconds, the sender's clock more
            return when
    return None


def path_kinds(log: Path, peer: str, after: float) -> list[tuple[float, str]]:
    """The wall-clock times and new path kinds (`direct`, `relay`, ...) of the path changes to
    `peer` that `log` stamped at or after `after`."""
    changes = []
    for line in log.read_text(errors="replace").splitlines():
        stamp, change = _LOG_TIME.match(line), _PATH_CHANGE.search(line)
        if stamp is None or change is None or change.group(1) != peer:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if when >= after - 0.001:
            changes.append((when, change.group(2)))
    return changes


def trickle(ns: Namespace, dst: str, port: int, seconds: float) -> tuple[subprocess.Popen, float]:
    """Start sending a datagram to `dst`:`port` every `TRICKLE_INTERVAL` for `seconds`; the
    process and the wall-clock time of its first datagram. Stop it with `ns.stop`."""
    proc = ns.popen([sys.executable, "-c", TRICKLE, dst, str(port), str(TRICKLE_INTERVAL), str(seconds)],
                    stdout=subprocess.PIPE, text=True)
    return proc, float(proc.stdout.readline())


def receiver(ns: Namespace, address: str, port: int, seconds: float) -> subprocess.Popen:
    """A UDP receiver on `address`:`port` for `seconds`, printing the wall clock of each arrival
    and echoing it, so the receiving node sends as much as it gets (as a ping's answer would)."""
    proc = ns.popen([sys.executable, "-c", RECEIVER, address, str(port), str(seconds)],
                    stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise MeshTimeout(f"the receiver on {address}:{port} did not start")
    return proc


def arrivals(proc: subprocess.Popen) -> Iterator[float]:
    """Arrival times a `receiver` prints, as they come; ends when the receiver does."""
    for line in proc.stdout:
        yield float(line)


def time_to_path(mesh: Mesh, src: str, dst: str, kinds: tuple[str, ...], timeout: float = 10.0) -> float:
    """Seconds from `src`'s first datagram to `dst` until `src`'s daemon logged a path of one of `kinds`.

    Raises MeshTimeout when `src`'s status shows no such path within `timeout` seconds.
    """
    ns = mesh.nodes[src].ns
    proc, first_sent = trickle(ns, mesh.overlay(dst), DISCARD_PORT, timeout)
    try:
        deadline = time.monotonic() + timeout
        while mesh.peer(src, dst)["path"] not in kinds:
            if time.monotonic() >= deadline:
                raise MeshTimeout(f"no {'/'.join(kinds)} path from {src} to {dst} within {timeout:g}s")
            time.sleep(POLL_INTERVAL)
    finally:
        ns.stop(proc)
    needle = re.compile(rf"path to {re.escape(dst)}: .* -> (?:{'|'.join(map(re.escape, kinds))})\b")
    switched = logged_at(mesh.dir / f"{src}.log", needle, first_sent)
    if switched is None:
        raise MeshTimeout(f"{src}'s status shows the path to {dst}, its log does not")
    return switched - first_sent


def recovery_after_relay_restart(mesh: Mesh, relay: str, src: str, dst: str, port: int = 9002,
                                 timeout: float = 15.0) -> float:
    """Seconds from the restarted relay's "listening" log line to the first datagram of a steady
    trickle `src` → `dst` that arrives after it. Traffic must flow before the restart (else
    MeshTimeout), so the figure is a recovery, not a first path."""
    dst_ns, address = mesh.nodes[dst].ns, mesh.overlay(dst)
    listening = receiver(dst_ns, address, port, 3 * timeout)
    sender, _ = trickle(mesh.nodes[src].ns, address, port, 3 * timeout)
    try:
        flow = arrivals(listening)
        if next(flow, None) is None:
            raise MeshTimeout(f"no traffic from {src} to {dst} before the restart")
        stopped = time.time()
        mesh.restart_relay(relay)
        back = wait_for(lambda: logged_at(mesh.relays[relay].log, re.compile(r" listening on "), stopped),
                        timeout, f"{relay} to listen again")
        arrived = next((t for t in flow if t >= back), None)
    finally:
        mesh.nodes[src].ns.stop(sender)
        dst_ns.stop(listening)
    if arrived is None:
        raise MeshTimeout(f"no traffic from {src} to {dst} after {relay} restarted")
    return arrived - back


class TcpPayloads:
    """When TCP segments carrying data from `src` reached `dst`:`port`, seen by tcpdump in `ns`
    (`dst`'s namespace: the time it heard them), while the capture runs; a context manager."""

    _LINE = re.compile(r"^(\d+\.\d+) .* length (\d+)")

    def __init__(self, ns: Namespace, src: str, dst: str, port: int, timeout: float = 10.0) -> None:
        self.ns, self.timeout = ns, timeout
        self.filter = f"tcp and src host {src} and dst host {dst} and dst port {port}"
        self._proc: subprocess.Popen | None = None
        self.times: list[float] = []
        """The arrival times of the data segments, in order, once `stop` ended the capture."""

    def __enter__(self) -> TcpPayloads:
        self._out = tempfile.TemporaryFile("w+")
        self._proc = self.ns.popen(["tcpdump", "-i", "any", "-n", "-tt", "-l", self.filter],
                                   stdout=self._out, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.timeout
        while "listening on" not in self._proc.stderr.readline():  # tcpdump says so once it captures
            if time.monotonic() >= deadline or self._proc.poll() is not None:
                self.ns.stop(self._proc)
                raise MeshTimeout(f"tcpdump did not start in {self.ns.name}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> list[float]:
        """End the capture; the arrival times of the data segments, in order."""
        if self._proc is None:
            return self.times
        proc, self._proc = self._proc, None
        self.ns.stop(proc)
        with self._out:
            self._out.seek(0)
            self.times = [float(found.group(1)) for line in self._out.read().splitlines()
                          if (found := self._LINE.match(line)) and int(found.group(2)) > 0]
        return self.times
