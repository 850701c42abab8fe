"""iperf3 and ping runs between the bench namespaces, and parsers for what they print.

Throughput is iperf3's TCP receiver-side rate (what actually arrived), one client run per
sample against one server kept for the row. Latency is iputils `ping`, every reply's RTT kept and
summed up as p50 and p99 (`PingTimes`): idle, a ping each `IDLE_PING_INTERVAL` with nothing else
in the tunnel; under load, a ping each `LOADED_PING_INTERVAL` while the first iperf3 run fills the
tunnel in the same direction. Percentiles, not a mean: on a shared 2-core machine one ping that
waits a few ms for a CPU moves the mean of a hundred by more than a tunnel's whole cost. A row's
processes are measured too: CPU seconds (their whole process trees, user plus system) and peak
RSS. The parsers are pure so they are tested on captured output; runners raise `MeasureError`.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from meshvpn.errors import MeshError
from meshvpn.lab import Namespace

IPERF_PORT = 5201
SERVER_START_TIMEOUT = 5.0
IDLE_PING_INTERVAL = 0.04
"""A ping every 40 ms through the idle tunnel: 25 a second, as a game sends its updates (20-60 Hz),
and far longer than anything a tunnel keeps awake after a packet (meshvpn's threads spin 0.1 ms),
so each ping meets a quiet tunnel; 120 pings, enough for a p99, take about 5 s."""
LOADED_PING_INTERVAL = 0.01
"""A ping every 10 ms under load, as a game sends its updates."""
PING_WAIT = 1
"""Seconds `ping` waits for a reply before it counts the ping lost."""

_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev|/stddev)? = [\d.]+/([\d.]+)/")
_PING_REPLY = re.compile(r"icmp_seq=\d+ ttl=\d+ time=(\d+(?:\.\d+)?) ms")


class MeasureError(MeshError):
    """A measurement could not be taken, or its tool printed something unexpected."""


@dataclass(frozen=True)
class PingStats:
    """Summary of one `ping -c N` run."""

    sent: int
    received: int
    avg_ms: float | None
    """Average RTT of the replies; None when nothing came back."""


def parse_iperf3_json(text: str) -> float:
    """Receiver-side TCP throughput in Mbit/s from `iperf3 -J` output."""
    try:
        document = json.loads(text)
    except ValueError:
        raise MeasureError(f"iperf3 printed no JSON: {text[:200]!r}") from None
    if not isinstance(document, dict):
        raise MeasureError("iperf3 JSON is not an object")
    if document.get("error"):
        raise MeasureError(f"iperf3: {document['error']}")
    try:
        bits = document["end"]["sum_received"]["bits_per_second"]
    except (KeyError, TypeError):
        raise MeasureError("iperf3 JSON has no end.sum_received.bits_per_second") from None
    try:
        rate = bits / 1e6 if isinstance(bits, (int, float)) and not isinstance(bits, bool) else math.nan
    except OverflowError:  # an integer beyond any float
        rate = math.inf
    if not 0 <= rate < math.inf:  # also refuses NaN, which Python's json reads
        raise MeasureError(f"iperf3 reported a bad rate: {str(bits)[:40]}")
    return rate


def parse_ping(text: str) -> PingStats:
    """Counts and average RTT from the summary iputils (or busybox) `ping` prints."""
    counts = _PING_COUNTS.search(text)
    if counts is None:
        raise MeasureError(f"no ping summary in: {text[-200:]!r}")
    rtt = _PING_RTT.search(text)
    try:
        return PingStats(int(counts.group(1)), int(counts.group(2)), float(rtt.group(1)) if rtt else None)
    except ValueError:  # "1.2.3" or "." matches [\d.]+; a count may be too long for int()
        raise MeasureError(f"bad numbers in the ping summary: {text[-200:]!r}") from None


def parse_ping_times(text: str) -> list[float]:
    """Every reply's RTT in ms, in order, from `ping` without ``-q``."""
    return [float(match.group(1)) for match in _PING_REPLY.finditer(text)]


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` in 0..1) of `values`; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class PingTimes:
    """One run of pings: how many were sent and every reply's RTT (ms), in order."""

    sent: int
    times_ms: list[float]

    @property
    def p50(self) -> float | None:
        return percentile(self.times_ms, 0.5)

    @property
    def p99(self) -> float | None:
        return percentile(self.times_ms, 0.99)

    @property
    def mean(self) -> float | None:
        """The mean RTT, ms: kept for comparison with older runs; one slow reply moves it."""
        return statistics.fmean(self.times_ms) if self.times_ms else None

    @property
    def lost(self) -> int:
        """Pings without a reply within `PING_WAIT`."""
        return max(0, self.sent - len(self.times_ms))


def ping_command(address: str, count: int, interval: float) -> list[str]:
    """`ping` printing every reply's RTT: `count` pings to `address`, `interval` seconds apart."""
    return ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(PING_WAIT), address]


def _wait_listening(log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if log.exists() and "Server listening" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise MeasureError(f"iperf3 server did not start: {text.strip()[-300:]}")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far, from ``/proc/PID/stat``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as err:
        raise MeasureError(f"cannot read the CPU time of process {pid}: {err}") from None
    return parse_cpu_ticks(stat) / os.sysconf("SC_CLK_TCK")


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (fields 14 and 15) of a ``/proc/PID/stat`` line; the name may hold spaces."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def throughput_runs(client: Namespace, server: Namespace, address: str, seconds: float, runs: int,
                    log: Path) -> tuple[list[float], PingTimes]:
    """`runs` iperf3 TCP runs of `seconds` each from `client` to `address` in `server` (Mbit/s each),
    and the pings `client` sent to `address` during the first run."""
    log.unlink(missing_ok=True)
    proc = server.popen(["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush", "--logfile", str(log)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(log, proc)
        results = []
        count = max(1, int((seconds - 0.5) / LOADED_PING_INTERVAL))
        pings = log.with_name("ping-under-load.txt")
        with pings.open("w") as out:
            pinger = client.popen(ping_command(address, count, LOADED_PING_INTERVAL),
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            for _ in range(runs):
                done = client.run(["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
                                  check=False, timeout=seconds + 30)
                results.append(parse_iperf3_json(done.stdout))
                if len(results) == 1:
                    try:
                        pinger.wait(timeout=5)  # it stops by itself after `count`; its output is flushed then
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            client.stop(pinger)
        return results, PingTimes(count, parse_ping_times(pings.read_text(errors="replace")))
    finally:
        server.stop(proc)


def process_tree(pids: list[int]) -> list[int]:
    """`pids` and all their living descendants (a VPN may fork helpers)."""
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                pass
    return out


def tree_cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of every process in `pids` that still runs."""
    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_seconds(pid)
        except MeasureError:
            pass
    return total


def peak_rss_mib(pids: list[int]) -> float | None:
    """The largest peak resident set (VmHWM) among `pids`, MiB; None if none could be read."""
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if match:
            peaks.append(int(match.group(1)) / 1024)
    return max(peaks, default=None)


def idle_pings(ns: Namespace, address: str, count: int) -> PingTimes:
    """`count` pings from `ns` to `address`, `IDLE_PING_INTERVAL` apart, every reply's RTT kept."""
    done = ns.run(ping_command(address, count, IDLE_PING_INTERVAL), check=False,
                  timeout=count * IDLE_PING_INTERVAL + PING_WAIT + 10)
    pings = PingTimes(count, parse_ping_times(done.stdout))
    if not pings.times_ms:
        raise MeasureError(f"no ping reply from {address} ({count} sent): {done.stdout.strip()[-200:]!r}")
    return pings
