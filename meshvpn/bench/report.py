"""Bench results: one record per row, the side-by-side table and the JSON file.

Every row is compared with the best *peer VPN* (the fastest row of kind `peer`), not with the
plain veth: the veth is the ceiling nobody reaches, the best peer VPN is the bar meshvpn must
clear. Nothing here runs a command, so the table and JSON logic is tested without namespaces.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

BASELINE = "baseline"
"""Row kind of the bare link (no tunnel)."""
MESHVPN = "meshvpn"
"""Row kind of meshvpn itself, on any path."""
PEER = "peer"
"""Row kind of another VPN that meshvpn is measured against."""

COLUMNS = ("row", "Mbit/s", "runs (Mbit/s)", "idle p50/p99", "load p50/p99", "CPU s/GB", "RSS MiB", "MTU",
           "vs best VPN", "notes")


@dataclass
class RowResult:
    """What one row measured; `error` is set instead when the row could not be measured."""

    name: str
    """Row name, e.g. "wireguard-go"."""
    kind: str
    """`BASELINE`, `MESHVPN` or `PEER`."""
    throughput_runs: list[float] = field(default_factory=list)
    """iperf3 TCP throughput of each run, Mbit/s."""
    idle_p50_ms: float | None = None
    """Median RTT of a ping every 40 ms through the idle tunnel, ms."""
    idle_p99_ms: float | None = None
    """99th percentile of the same pings, ms."""
    idle_mean_ms: float | None = None
    """Their mean, ms (in the JSON, for older runs' RTT column, which was a mean of 20 pings)."""
    idle_lost: int | None = None
    """Those pings without a reply within 1 s."""
    loaded_p50_ms: float | None = None
    """Median RTT of a ping every 10 ms while the first iperf3 run fills the tunnel, ms."""
    loaded_p99_ms: float | None = None
    """99th percentile of the same pings, ms."""
    loaded_lost: int | None = None
    """Those pings without a reply within 1 s."""
    cpu_s_per_gb: float | None = None
    """CPU seconds the row's processes (both ends, and any relay or server) spent per GB carried
    (user plus system; the kernel's own softirq work is not in it)."""
    peak_rss_mib: float | None = None
    """The largest peak resident set among the row's processes, MiB."""
    mtu: int | None = None
    """MTU of the tunnel interface (the link's for the baseline)."""
    first_ping_s: float | None = None
    """Seconds from both endpoints being up to the first ping reply (meshvpn rows)."""
    path: str | None = None
    """Path kind the first reply took, as `meshvpn status` reports it (meshvpn rows)."""
    relay_cpu_s_per_gbit: float | None = None
    """The relay's CPU seconds per Gbit carried (its share of a core per Gbit/s), relayed rows."""
    error: str | None = None
    """Why the row has no figures, or None."""

    @property
    def throughput(self) -> float | None:
        """Median throughput over the runs, Mbit/s; None without runs."""
        return statistics.median(self.throughput_runs) if self.throughput_runs else None


def best_peer(results: list[RowResult]) -> RowResult | None:
    """The peer VPN row with the highest median throughput, or None if none was measured."""
    measured = [r for r in results if r.kind == PEER and r.throughput is not None]
    return max(measured, key=lambda r: r.throughput, default=None)


def ratio_to_best(result: RowResult, best: RowResult | None) -> float | None:
    """`result`'s median throughput divided by the best peer VPN's, or None if either is missing."""
    if best is None or result.throughput is None or not best.throughput:
        return None
    return result.throughput / best.throughput


def _notes(result: RowResult) -> str:
    if result.error is not None:
        return f"error: {result.error}"
    parts = []
    if result.first_ping_s is not None:
        parts.append(f"first ping {result.first_ping_s:.2f} s")
    if result.path is not None:
        parts.append(f"path {result.path}")
    if result.relay_cpu_s_per_gbit is not None:
        parts.append(f"relay {result.relay_cpu_s_per_gbit:.2f} CPU s per Gbit")
    if result.idle_lost:
        parts.append(f"{result.idle_lost} pings lost idle")
    if result.loaded_lost:
        parts.append(f"{result.loaded_lost} pings lost under load")
    return ", ".join(parts)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(p50: float | None, p99: float | None, digits: int) -> str:
    return "-" if p50 is None else f"{p50:.{digits}f}/{_number(p99, digits)}"


def table_rows(results: list[RowResult]) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per result, in `COLUMNS` order."""
    best = best_peer(results)
    rows = []
    for result in results:
        ratio = ratio_to_best(result, best)
        rows.append((
            result.name,
            _number(result.throughput, 0),
            " ".join(f"{run:.0f}" for run in result.throughput_runs) or "-",
            _pair(result.idle_p50_ms, result.idle_p99_ms, 3),
            _pair(result.loaded_p50_ms, result.loaded_p99_ms, 2),
            _number(result.cpu_s_per_gb, 1),
            _number(result.peak_rss_mib, 0),
            "-" if result.mtu is None else str(result.mtu),
            "-" if ratio is None else f"{ratio:.2f}x",
            _notes(result),
        ))
    return rows


def render_table(results: list[RowResult]) -> str:
    """A fixed-width text table of every row, then which row was the best peer VPN."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    best = best_peer(results)
    lines.append(f"best peer VPN: {best.name if best else 'none measured'}")
    return "\n".join(lines)


def to_json(results: list[RowResult], settings: dict, host: dict) -> dict:
    """The JSON document `--json` writes: settings, host facts and every row with its ratio."""
    best = best_peer(results)
    return {
        "settings": settings,
        "host": host,
        "best_peer": best.name if best else None,
        "rows": [
            {**asdict(r), "throughput_median": r.throughput, "ratio_to_best_peer": ratio_to_best(r, best)}
            for r in results
        ],
    }


def write_json(path: Path, document: dict) -> None:
    """Write `document` to `path`, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
