"""`python -m meshvpn.bench.memory`: a daemon's memory with many peers, idle and during a transfer.

The lab: a coord on the simulated internet and two sites behind port-preserving NATs with a
real daemon each (`a1`, `b1`), plus `--peers` - 2 registered peers without daemons
(`meshvpn.bench.fakepeers`), so `a1` holds a peer entry, a path finder and probes for every
one of them. After the whole peer map arrived and `--idle` seconds passed, `a1`'s resident set
is read (``VmRSS``); then an iperf3 TCP transfer of `--seconds` runs from `a1` to `b1` through
the tunnel, and `a1`'s resident set and peak (``VmHWM``) are read again. Everything runs in
namespaces that are removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from meshvpn.bench.measure import throughput_runs
from meshvpn.bench.peers import BenchLab
from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import COORD_PORT, Mesh, wait_for
from meshvpn.lab.netns import python_command

COORD_ADDR = "203.0.113.10"


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of process `pid`, KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("VmRSS", "VmHWM")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=100, help="nodes in the network, a1 included (default 100)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds idle before the first reading (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the transfer (default 10)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.peers < 2 or args.idle < 0 or args.seconds <= 0:
        parser.error("--peers must be at least 2, --idle at least 0 and --seconds positive")
    return args


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    with BenchLab() as lab:
        topo = Topology(lab)
        topo.add_server("coord", addrs=[COORD_ADDR])
        for site in ("a", "b"):
            topo.add_site(site, nat=NatKind.PORT_PRESERVING)
        mesh = Mesh(workdir, topo.host("coord"), COORD_ADDR, log_level="info")
        mesh.start_coord()
        key, _ = mesh.create_auth_key()
        fakes = topo.host("coord").popen(
            python_command("meshvpn.bench.fakepeers", f"{COORD_ADDR}:{COORD_PORT}", mesh.coord_public, key,
                           str(args.peers - 2)), stdout=(workdir / "fakepeers.log").open("w"))
        for name in ("a1", "b1"):
            mesh.start_node(name, topo.host(name), key)
        mesh.wait_registered()
        wait_for(lambda: len(mesh.status("a1")["peers"]) >= args.peers - 1, 60, f"{args.peers - 1} peers in a1's status")
        time.sleep(args.idle)
        pid = mesh.nodes["a1"].proc.pid
        idle = memory_kib(pid)
        runs, loaded = throughput_runs(topo.host("a1"), topo.host("b1"), mesh.overlay("b1"), args.seconds, 1,
                                       workdir / "iperf3-server.log")
        busy = memory_kib(pid)
        topo.host("coord").stop(fakes)
        return {"peers": args.peers, "idle_s": args.idle, "idle_rss_kib": idle["VmRSS"],
                "transfer_mbit_s": runs[0], "transfer_rss_kib": busy["VmRSS"], "peak_rss_kib": busy["VmHWM"],
                "load_average_after": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("meshvpn bench memory: needs root (network namespaces)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="meshvpn-memory-") as workdir:
        figures = measure(args, Path(workdir))
    figures["load_average_before"] = load_before
    mib = {key: value / 1024 for key, value in figures.items() if key.endswith("_kib")}
    print(f"a1 with {args.peers - 1} peers: idle {mib['idle_rss_kib']:.1f} MiB after {args.idle:g} s; "
          f"during a {args.seconds:g} s transfer ({figures['transfer_mbit_s']:.0f} Mbit/s) "
          f"{mib['transfer_rss_kib']:.1f} MiB, peak {mib['peak_rss_kib']:.1f} MiB")
    print(f"load average (1, 5, 15 min): {load_before} before, {figures['load_average_after']} after")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
