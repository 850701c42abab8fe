"""`python -m meshvpn.bench.rtt`: idle round trips of two builds, alternated in one sitting.

Why: the bench's 20 pings per row, averaged, cannot tell a 10-20 µs change of the tunnel's idle
round trip from the load on a shared 2-core machine (a few pings of tens of ms move an average
by more). Here each round runs, for every build in turn, plain veth, meshvpn direct and
quicktun on a fresh bench net (`meshvpn.bench.peers`), `--pings` pings `--interval` apart
after `--warmup` unrecorded ones, and keeps every reply. What a row adds is its median minus
the same round's veth median, so the load of that minute cancels; the table gives the median
of those per-round figures and their spread (least and largest) over the rounds, and the tail of
every reply of every round together (p90, p99, mean), where a slow ping shows that a median hides.

A build is a checkout with its own `.venv` (`make setup`): its interpreter runs this file
(`--one`), so that checkout's package, C extension and daemons are what is measured, whatever
this file's own tree holds. With `--idle` the round also reads node `a`'s CPU (every thread's
`schedstat`) over that many idle seconds; with `--seconds` it runs one iperf3 transfer through
meshvpn direct, pinging every 10 ms as the bench does (Mbit/s and p50/p99 under load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROW_NAMES = ("plain veth", "meshvpn direct", "quicktun nacltai")
VETH = ROW_NAMES[0]
ONE_TIMEOUT = 600.0
"""Seconds one build's round may take before the sitting stops."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench.rtt", description=__doc__.split("\n")[0])
    parser.add_argument("builds", nargs="*", type=Path, metavar="CHECKOUT",
                        help="checkouts with a .venv, alternated in each round (default: this one)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each runs every build once (default 4)")
    parser.add_argument("--pings", type=int, default=500, help="recorded pings per row and round (default 500)")
    parser.add_argument("--warmup", type=int, default=20, help="pings sent first and not recorded (default 20)")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between pings (default 0.005)")
    parser.add_argument("--rows", nargs="+", choices=ROW_NAMES, default=list(ROW_NAMES), metavar="NAME")
    parser.add_argument("--idle", type=float, default=0.0, metavar="S",
                        help="also read node a's CPU over S idle seconds (default 0: not)")
    parser.add_argument("--seconds", type=float, default=0.0, metavar="S",
                        help="also run iperf3 for S seconds through meshvpn direct (default 0: not)")
    parser.add_argument("--pin", nargs=2, type=int, metavar=("CPU_A", "CPU_B"),
                        help="pin node a's processes and ping to CPU_A, node b's to CPU_B (default: not)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every round's figures here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pings < 1 or args.warmup < 0 or not 0.002 <= args.interval <= 1:
        parser.error("--rounds and --pings must be positive, --interval 0.002 to 1 s")
    if VETH not in args.rows:
        parser.error("the rows must include 'plain veth': what a row adds is measured against it")
    return args


def ping_times(ns, address: str, count: int, interval: float, cpu: int | None = None) -> list[float]:
    """Every reply's RTT (ms) of `count` pings from `ns`, `interval` apart (on `cpu` if given)."""
    from meshvpn.bench.measure import parse_ping_times, ping_command

    pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
    done = ns.run([*pin, *ping_command(address, count, interval)], check=False, timeout=count * (interval + 0.01) + 30)
    return parse_ping_times(done.stdout)


def task_cpu_ns(pid: int) -> dict[int, int]:
    """CPU nanoseconds so far of each thread of `pid` (`/proc/PID/task/TID/schedstat`)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def idle_cpu(pid: int, seconds: float) -> dict:
    """Node `pid`'s CPU ms over `seconds` of no traffic: the whole process, and its busiest other thread."""
    before = task_cpu_ns(pid)
    time.sleep(seconds)
    after = task_cpu_ns(pid)
    spent = {tid: (after[tid] - before.get(tid, 0)) / 1e6 for tid in after}
    others = [ms for tid, ms in spent.items() if tid != pid]
    return {"seconds": seconds, "process_ms": round(sum(spent.values()), 3),
            "busiest_thread_ms": round(max(others, default=0.0), 3)}


def measure_row(row, net, workdir: Path, args: argparse.Namespace) -> dict:
    """Bring `row` up, ping through it (and for meshvpn read idle CPU, run iperf3), stop it."""
    from meshvpn.bench.measure import throughput_runs

    rowdir = workdir / row.name.replace(" ", "-")
    rowdir.mkdir()
    try:
        tunnel = row.start(net, rowdir)
        cpu = None
        if args.pin:
            cpu = args.pin[0]
            for ns, pinned in ((net.a, args.pin[0]), (net.b, args.pin[1])):
                for proc in ns.processes:
                    subprocess.run(["taskset", "-a", "-cp", str(pinned), str(proc.pid)], check=True, capture_output=True)
        ping_times(net.a, tunnel.target, args.warmup, args.interval, cpu) if args.warmup else None
        daemon = net.a.processes[0].pid if row.name == "meshvpn direct" else None
        before = task_cpu_ns(daemon) if daemon else {}
        result: dict = {"times_ms": ping_times(net.a, tunnel.target, args.pings, args.interval, cpu)}
        if daemon:
            result["ping_cpu_ms"] = round(sum(task_cpu_ns(daemon).values()) / 1e6 - sum(before.values()) / 1e6, 3)
        if daemon and args.idle:
            result["idle"] = idle_cpu(daemon, args.idle)
        if row.name == "meshvpn direct" and args.seconds:
            runs, loaded = throughput_runs(net.a, net.b, tunnel.target, args.seconds, 1, rowdir / "iperf3.log")
            result.update(mbit=round(runs[0]), loaded_p50_ms=loaded.p50, loaded_p99_ms=loaded.p99)
        return result
    finally:
        net.stop_all()


def run_one(args: argparse.Namespace) -> dict:
    """One round of this interpreter's build: every row on a fresh bench net."""
    from meshvpn.bench.peers import ROWS, BenchLab, build_net

    rows = [row for row in ROWS if row.name in args.rows]
    load = os.getloadavg()[0]
    with BenchLab() as lab, tempfile.TemporaryDirectory(prefix="meshvpn-rtt-") as workdir:
        net = build_net(lab)
        results = {row.name: measure_row(row, net, Path(workdir), args) for row in rows}
    return {"load": [load, os.getloadavg()[0]], "rows": results}


def summarize(rounds: list[dict]) -> dict:
    """Per row: the median of the per-round medians, their spread, and what it adds over veth; and
    the tail, the p90, p99 and mean of every round's replies together."""
    from meshvpn.bench.measure import PingTimes, percentile

    out = {}
    for name in rounds[0]["rows"]:
        every = PingTimes(0, [ms for r in rounds for ms in r["rows"][name]["times_ms"]])
        medians = [statistics.median(r["rows"][name]["times_ms"]) for r in rounds if r["rows"][name]["times_ms"]]
        added = [statistics.median(r["rows"][name]["times_ms"]) - statistics.median(r["rows"][VETH]["times_ms"])
                 for r in rounds if r["rows"][name]["times_ms"] and r["rows"][VETH]["times_ms"]]
        row = {"median_ms": statistics.median(medians), "least_ms": min(medians), "largest_ms": max(medians),
               "adds_ms": statistics.median(added), "adds_least_ms": min(added), "adds_largest_ms": max(added),
               "p90_ms": percentile(every.times_ms, 0.9), "p99_ms": every.p99, "mean_ms": every.mean}
        extra = [r["rows"][name] for r in rounds]
        for key in ("mbit", "loaded_p50_ms", "loaded_p99_ms", "ping_cpu_ms"):
            if all(key in e for e in extra):
                row[key] = statistics.median(e[key] for e in extra)
        if all("idle" in e for e in extra):
            row["idle_process_ms"] = statistics.median(e["idle"]["process_ms"] for e in extra)
            row["idle_thread_ms"] = statistics.median(e["idle"]["busiest_thread_ms"] for e in extra)
        out[name] = row
    return out


def render(summaries: dict[str, dict], rounds: int) -> str:
    """One line per build and row: median (least-largest of the rounds), adds over veth, extras."""
    lines = [f"medians of {rounds} rounds (least-largest), ms"]
    for build, rows in summaries.items():
        for name, r in rows.items():
            text = (f"{build}  {name:17} {r['median_ms']:.3f} ({r['least_ms']:.3f}-{r['largest_ms']:.3f})  "
                    f"adds {r['adds_ms'] * 1000:.0f} µs ({r['adds_least_ms'] * 1000:.0f} to {r['adds_largest_ms'] * 1000:.0f})"
                    f"  all pings p90/p99/mean {r['p90_ms']:.3f}/{r['p99_ms']:.3f}/{r['mean_ms']:.3f}")
            if "mbit" in r:
                text += f"  {r['mbit']:.0f} Mbit/s, load p50/p99 {r['loaded_p50_ms']:.2f}/{r['loaded_p99_ms']:.2f}"
            if "ping_cpu_ms" in r:
                text += f"  node a CPU ms over the pings {r['ping_cpu_ms']:.1f}"
            if "idle_process_ms" in r:
                text += f"  idle CPU ms: process {r['idle_process_ms']:.1f}, thread {r['idle_thread_ms']:.2f}"
            lines.append(text)
    return "\n".join(lines)


def run_round(build: Path, argv: list[str]) -> dict:
    """One round of `build`: its interpreter runs this file with `--one` from its own tree."""
    python = build / ".venv" / "bin" / "python"
    code = f"import runpy, sys; sys.argv = {[__file__, *argv, '--one']!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    done = subprocess.run([str(python), "-c", code], cwd=build, capture_output=True, text=True, timeout=ONE_TIMEOUT)
    if done.returncode:
        raise SystemExit(f"meshvpn rtt: {build}: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("meshvpn rtt: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    builds = [b.resolve() for b in args.builds] or [Path(__file__).resolve().parents[2]]
    passed = ["--pings", str(args.pings), "--warmup", str(args.warmup), "--interval", str(args.interval),
              "--idle", str(args.idle), "--seconds", str(args.seconds), "--rows", *args.rows,
              *(["--pin", *map(str, args.pin)] if args.pin else [])]
    rounds: dict[str, list[dict]] = {str(b): [] for b in builds}
    for number in range(args.rounds):
        for build in builds if number % 2 == 0 else reversed(builds):
            result = run_round(build, passed)
            rounds[str(build)].append(result)
            print(f"round {number + 1} {build}: load {result['load'][0]:.1f} → {result['load'][1]:.1f}", file=sys.stderr,
                  flush=True)
    summaries = {build: summarize(results) for build, results in rounds.items()}
    print(render(summaries, args.rounds))
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"builds": [str(b) for b in builds], "json": None,
                                                                   "one": None}, "rounds": rounds,
                                         "summary": summaries}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
