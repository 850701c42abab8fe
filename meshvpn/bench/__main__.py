"""`python -m meshvpn.bench`: run every row, print the table, write the JSON."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from meshvpn.bench.measure import (idle_pings, peak_rss_mib, process_cpu_seconds, process_tree, throughput_runs,
                                   tree_cpu_seconds)
from meshvpn.bench.loss import apply_loss, loss_drops
from meshvpn.bench.peers import ROWS, BenchLab, BenchNet, Row, build_nat_net, build_net
from meshvpn.bench.report import RowResult, render_table, to_json, write_json
from meshvpn.errors import MeshError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each iperf3 run (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="iperf3 runs per row; the median is reported (default 3)")
    parser.add_argument("--pings", type=int, default=120,
                        help="pings per row, 40 ms apart, for the idle p50 and p99 (default 120; a p99 needs 100)")
    parser.add_argument("--rows", nargs="+", metavar="NAME", choices=[row.name for row in ROWS],
                        help="run only these rows (default: all)")
    parser.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                        help="drop this %% of the datagrams on the a-b link, each direction (default 0)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="where to write the results (default bench-results/bench-<date>.json)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.runs < 1 or args.pings < 1:
        parser.error("--seconds, --runs and --pings must be positive")
    if not 0 <= args.loss < 100:
        parser.error("--loss must be at least 0 and below 100")
    return args


def run_row(row: Row, net: BenchNet, workdir: Path, args: argparse.Namespace) -> RowResult:
    """Bring `row`'s tunnel up, measure it and stop it; failures become the row's error."""
    result = RowResult(row.name, row.kind)
    missing = [program for program in row.programs if shutil.which(program) is None]
    if missing:
        result.error = f"not installed: {', '.join(missing)}"
        return result
    rowdir = workdir / row.name.replace(" ", "-")
    rowdir.mkdir()
    try:
        tunnel = row.start(net, rowdir)
        result.mtu, result.first_ping_s, result.path = tunnel.mtu, tunnel.first_ping_s, tunnel.path
        idle = idle_pings(net.a, tunnel.target, args.pings)
        result.idle_p50_ms, result.idle_p99_ms, result.idle_mean_ms, result.idle_lost = idle.p50, idle.p99, idle.mean, idle.lost
        pids = process_tree([proc.pid for ns in (net.a, net.b, net.side) for proc in ns.processes])
        cpu_before = None if tunnel.relay_pid is None else process_cpu_seconds(tunnel.relay_pid)
        tree_before = tree_cpu_seconds(pids)
        result.throughput_runs, loaded = throughput_runs(net.a, net.b, tunnel.target, args.seconds, args.runs,
                                                         rowdir / "iperf3-server.log")
        gbit = sum(result.throughput_runs) * args.seconds / 1000
        if pids and gbit:
            result.cpu_s_per_gb = (tree_cpu_seconds(pids) - tree_before) / (gbit / 8)
            result.peak_rss_mib = peak_rss_mib(pids)
        result.loaded_p50_ms, result.loaded_p99_ms = loaded.p50, loaded.p99
        result.loaded_lost = loaded.lost
        if cpu_before is not None:
            result.relay_cpu_s_per_gbit = (process_cpu_seconds(tunnel.relay_pid) - cpu_before) / gbit
    except MeshError as err:
        result.error = " ".join(str(err).split())
    finally:
        net.stop_all()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("meshvpn bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    rows = [row for row in ROWS if args.rows is None or row.name in args.rows]
    results = []
    try:
        with BenchLab() as lab, tempfile.TemporaryDirectory(prefix="meshvpn-bench-") as workdir:
            nets = {"link": build_net(lab)}
            if any(row.net == "nat" for row in rows):
                nets["nat"] = build_nat_net(lab)
            if args.loss:
                apply_loss(nets["link"], args.loss)
            for row in rows:
                print(f"bench: {row.name} ...", file=sys.stderr, flush=True)
                result = run_row(row, nets[row.net], Path(workdir), args)
                results.append(result)
                print(f"bench: {row.name}: {result.error or f'{result.throughput:.0f} Mbit/s'}", file=sys.stderr, flush=True)
            dropped = loss_drops(nets["link"]) if args.loss else 0
    except KeyboardInterrupt:
        print("bench: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    print(render_table(results))
    if args.loss:
        print(f"loss: {args.loss}% of the datagrams on the a-b link, each direction ({dropped} dropped)")
    path = args.json or Path("bench-results") / f"bench-{started:%Y-%m-%dT%H%M%S}.json"
    settings = {"seconds": args.seconds, "runs": args.runs, "pings": args.pings, "loss_percent": args.loss,
                "started": started.isoformat()}
    host = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(f"load average (1, 5, 15 min): {load_before} before, {host['load_average_after']} after")
    write_json(path, to_json(results, settings, host))
    print(f"results written to {path}")
    return 0 if all(result.error is None for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
