"""Where a ping waits while a bulk flow fills a tunnel: the queues on its way, sampled.

Why: the bench's "load p50/p99" says how long a ping waits under load, not where. This brings
up one bench row (root, namespaces as in ``python -m meshvpn.bench``), fills it with iperf3 from
`a` to `b` while `a` pings `b` every 10 ms, and meanwhile samples, about every 20 ms:

* the TCP flow's unacknowledged segments in `a` (``ss -tin``): all it has in flight, wherever
  that waits;
* the receiving node's UDP socket in `b` (``/proc/net/udp``, rx_queue: bytes of socket buffer,
  truesize), for the meshvpn rows;
* the backlog of the qdisc on `a`'s TUN (``tc -s qdisc``): a queue there is one a qdisc could
  reorder; the kernel's tun drops when its ring is full instead, so it stays 0.

What is in flight but neither in `b`'s socket nor in a qdisc waits in `a`'s TUN ring or inside
the VPN (docs/dataplane.md, "Latency under load")::

    .venv/bin/python -m meshvpn.bench.queues [--row "meshvpn direct"] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshvpn.bench.measure import IPERF_PORT, LOADED_PING_INTERVAL, parse_ping_times, percentile
from meshvpn.bench.peers import MESHVPN_TUN, NODE_PORT, ROWS, BenchLab, build_net

SAMPLE_EVERY = 0.02
_UNACKED = re.compile(r"\bunacked:(\d+)")
_BACKLOG = re.compile(r"backlog (\d+)b")


def udp_rx_queue(table: str, port: int) -> int | None:
    """rx_queue of the socket bound to `port` in a ``/proc/net/udp`` table; None if there is none."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 4 and fields[1].endswith(f":{port:04X}") and ":" in fields[4]:
            return int(fields[4].split(":")[1], 16)
    return None


def unacked(ss_output: str) -> int | None:
    """The first ``unacked:N`` of ``ss -tin`` output (0 when the flow has nothing in flight)."""
    match = _UNACKED.search(ss_output)
    return int(match.group(1)) if match else (0 if "cwnd:" in ss_output else None)


def qdisc_backlog(tc_output: str) -> int | None:
    """Bytes in the first qdisc's backlog in ``tc -s qdisc show dev X`` output."""
    match = _BACKLOG.search(tc_output)
    return int(match.group(1)) if match else None


def spread(values: list[int]) -> str:
    """p50, p90 and the largest of `values`, or a dash."""
    if not values:
        return "-"
    return f"p50 {percentile(values, 0.5)}, p90 {percentile(values, 0.9)}, max {max(values)} (n={len(values)})"


def sample(net, seconds: float, meshvpn: bool) -> dict[str, list[int]]:
    """Sample the three queues until `seconds` have passed."""
    found: dict[str, list[int]] = {"unacked segments (a)": [], "UDP socket bytes (b)": [], "TUN qdisc backlog bytes (a)": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values = [unacked(net.a.run(["ss", "-tin", "dport", str(IPERF_PORT)], check=False).stdout),
                  udp_rx_queue(net.b.run(["cat", "/proc/net/udp"], check=False).stdout, NODE_PORT) if meshvpn else None,
                  qdisc_backlog(net.a.run(["tc", "-s", "qdisc", "show", "dev", MESHVPN_TUN], check=False).stdout)
                  if meshvpn else None]
        for key, value in zip(found, values):
            if value is not None:
                found[key].append(value)
        time.sleep(SAMPLE_EVERY)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench.queues", description=__doc__.split("\n")[0])
    parser.add_argument("--row", default="meshvpn direct", choices=[row.name for row in ROWS])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the iperf3 run (default 6)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("meshvpn bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    row = next(r for r in ROWS if r.name == args.row)
    with BenchLab() as lab, tempfile.TemporaryDirectory(prefix="meshvpn-queues-") as workdir:
        net = build_net(lab)
        try:
            tunnel = row.start(net, Path(workdir))
            server = net.b.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            client = net.a.popen(["iperf3", "-c", tunnel.target, "-p", str(IPERF_PORT), "-t", str(args.seconds), "-J"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            count = int((args.seconds - 2) / LOADED_PING_INTERVAL)
            pinger = net.a.popen(["ping", "-n", "-c", str(count), "-i", str(LOADED_PING_INTERVAL), "-W", "1", tunnel.target],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            found = sample(net, args.seconds - 2.5, row.name.startswith("meshvpn"))
            times = parse_ping_times(pinger.communicate(timeout=args.seconds + 10)[0].decode(errors="replace"))
            report = json.loads(client.communicate(timeout=args.seconds + 30)[0] or b"{}")
            net.b.stop(server)
        finally:
            net.stop_all()
    rate = report.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e6
    print(f"{row.name}: {rate:.0f} Mbit/s, ping under load p50 {percentile(times, 0.5)} ms, "
          f"p99 {percentile(times, 0.99)} ms ({len(times)} of {count} replies), load average {os.getloadavg()[0]:.1f}")
    for name, values in found.items():
        print(f"  {name}: {spread(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
