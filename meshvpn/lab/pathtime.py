"""How long a path took to come up, measured from events rather than from polls.

A loaded machine takes a second or more to start a process in a namespace, so timing a path
from the test's side (start a clock, spawn `ping` until the status shows the path) measures
mostly the spawns. Here both ends of the interval are events with their own clock readings:
the first datagram a trickle sender in the source namespace sends to the peer (the packet that
starts the path search; the sender prints the wall clock as it sends it), and the line the
source daemon logs when it switches to the path (`path to PEER: OLD -> NEW`, stamped by its
logging to the millisecond). The status is only polled, over the control socket and without
spawning anything, to know when to stop waiting.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from meshvpn.lab.mesh import Mesh, MeshTimeout

TRICKLE_PORT = 9
"""UDP discard: the datagrams only need to enter the source's TUN towards the peer."""
TRICKLE_INTERVAL = 0.05
"""Seconds between the trickle's datagrams, so the node always has traffic for the peer."""
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

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


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


def time_to_path(mesh: Mesh, src: str, dst: str, kinds: tuple[str, ...], timeout: float = 10.0) -> float:
    """Seconds from `src`'s first datagram to `dst` until `src`'s daemon logged a path of one of `kinds`.

    Raises MeshTimeout when `src`'s status shows no such path within `timeout` seconds.
    """
    ns = mesh.nodes[src].ns
    trickle = ns.popen([sys.executable, "-c", TRICKLE, mesh.overlay(dst), str(TRICKLE_PORT),
                        str(TRICKLE_INTERVAL), str(timeout)], stdout=subprocess.PIPE, text=True)
    try:
        first_sent = float(trickle.stdout.readline())
        deadline = time.monotonic() + timeout
        while mesh.peer(src, dst)["path"] not in kinds:
            if time.monotonic() >= deadline:
                raise MeshTimeout(f"no {'/'.join(kinds)} path from {src} to {dst} within {timeout:g}s")
            time.sleep(POLL_INTERVAL)
    finally:
        ns.stop(trickle)
    needle = re.compile(rf"path to {re.escape(dst)}: .* -> (?:{'|'.join(map(re.escape, kinds))})\b")
    switched = logged_at(mesh.dir / f"{src}.log", needle, first_sent)
    if switched is None:
        raise MeshTimeout(f"{src}'s status shows the path to {dst}, its log does not")
    return switched - first_sent
