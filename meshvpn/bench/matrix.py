"""`python -m meshvpn.bench.matrix`: the NAT traversal matrix, meshvpn and Nebula 1.6 in one run.

For each pair of NAT kinds (`KINDS`; unordered unless `--pairs` names an order) each VPN gets
a fresh lab: the internet with the VPN's servers, and sites `a` and `b` with one host each
behind the two NATs. meshvpn runs its coord and a relay (`meshvpn.lab.mesh`); Nebula runs a
lighthouse that is also its relay (`am_relay`), and two nodes with punchy and relays on.
Host `a1` pings `b1` through the tunnel, so the row's kind is the side that starts.

An attempt records the path of the first reply, the time from both ends being up (meshvpn:
both control sockets answer; Nebula: both TUN devices exist) to that reply, and, if the path
becomes peer-to-peer within the cell's time, the time of the first reply over it. meshvpn's
path is what `a1`'s status says after the reply; Nebula's is read from the lighthouse: a
burst of pings that raises its UDP packet counter by at least one packet per reply went
through the relay. The `peer-relay` kind adds a third site `h` behind a port-preserving NAT whose
host `h1` may relay (meshvpn: `meshvpn coord relays allow h1`; Nebula: `am_relay` on `h1`, listed
first in the others' `relays`), and holds the server relay's (lighthouse's) packets back 40 ms each
way, so that `h1` is the nearer relay; a reply that `h1` carried is labelled `peer-relay` (meshvpn:
`a1`'s status names the relay; Nebula: `h1`'s UDP counter). Everything a cell starts runs through `Namespace.popen` and dies with its
lab, which is also torn down on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, get_args

import yaml

from meshvpn.bench.measure import MeasureError, parse_ping
from meshvpn.bench.peers import BenchLab
from meshvpn.bench.peervpns import NEBULA_PORT
from meshvpn.bench.tunnels import link_mtu, spawn
from meshvpn.bench.report import write_json
from meshvpn.bench.matrix_kinds import (
    COORD_ADDR, KINDS, KINDS_BY_NAME, LIGHTHOUSE_ADDR, PEER_RELAY, RELAY_ADDR, START_SECONDS, Kind, all_pairs, parse_pair,
)
from meshvpn.configkinds import LogLevel
from meshvpn.errors import MeshError
from meshvpn.lab import NatKind, Namespace, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.upnp import add_stun_server
from meshvpn.localsock import DaemonNotRunning

MESHVPN, NEBULA = "meshvpn", "nebula"
VPNS = (MESHVPN, NEBULA)
P2P_PATHS = ("lan", "direct", "tcp")
"""Paths that do not pass a relay: what an attempt may upgrade to."""
NO_REPLY = "none"
ERROR = "error"
CELL_SECONDS = 25.0
"""Default time an attempt may take from both ends being up (first reply and upgrade)."""
NEBULA_NET = "100.81.0"
NEBULA_TUN = "nebula1"
COUNT_TABLE = "mvmatrix"
BURST = 10
"""Pings per path check through Nebula, 20 ms apart."""
FIRST_PING_TIMEOUT = 0.3
LOG_LEVELS = get_args(LogLevel)
"""What `--log-level` takes: meshvpn's levels, which Nebula's logging knows by the same names."""
LOG_LEVEL = "info"
"""The default: the daemons' own default, quiet enough for a whole matrix's logs."""


# ---- results (pure: table and JSON logic)


@dataclass
class Attempt:
    """One try of one cell."""

    first_path: str | None = None
    """Path of the first ping reply; None if nothing came back."""
    first_ping_s: float | None = None
    """Seconds from both ends being up to the first reply."""
    final_path: str | None = None
    """Path of the last reply seen (the first peer-to-peer one, if any)."""
    direct_s: float | None = None
    """Seconds from both ends being up to the first reply over a peer-to-peer path."""
    error: str | None = None
    """Why the attempt could not be run (set up failed), or None."""

    @property
    def label(self) -> str:
        """`direct`, `relay`, `relay→direct` (upgraded), `none` (no reply) or `error`."""
        if self.error is not None:
            return ERROR
        if self.first_path is None:
            return NO_REPLY
        if self.final_path != self.first_path:
            return f"{self.first_path}→{self.final_path}"
        return self.first_path


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


@dataclass
class Cell:
    """Every attempt of one VPN on one pair of NAT kinds; `a` pings `b`."""

    vpn: str
    a: str
    b: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def outcome(self) -> tuple[str, int]:
        """The most frequent label and how many attempts had it (ties: the first seen)."""
        if not self.attempts:
            return NO_REPLY, 0
        return Counter(attempt.label for attempt in self.attempts).most_common(1)[0]

    @property
    def p2p_runs(self) -> int:
        """Attempts that ended on a peer-to-peer path: the traversal success count."""
        return sum(attempt.direct_s is not None for attempt in self.attempts)

    @property
    def first_ping_median(self) -> float | None:
        return _median([attempt.first_ping_s for attempt in self.attempts])

    @property
    def direct_median(self) -> float | None:
        return _median([attempt.direct_s for attempt in self.attempts])

    def text(self) -> str:
        """The table cell: the usual outcome (with its count over several runs), the median time to
        the first reply and, if that outcome is an upgrade, to the first peer-to-peer one."""
        label, count = self.outcome
        runs = len(self.attempts)
        words = [label] + ([f"{count}/{runs}"] if runs > 1 else [])
        first, direct = self.first_ping_median, self.direct_median
        if first is not None:
            upgraded = "→" in label and direct is not None
            words.append(f"{first:.1f}s" + (f"→{direct:.1f}s" if upgraded else ""))
        if runs > 1 and 0 < self.p2p_runs < runs:
            words.append(f"(p2p {self.p2p_runs}/{runs})")
        return " ".join(words)


def render_table(cells: list[Cell], vpn: str, kinds: tuple[Kind, ...] = KINDS) -> str:
    """A Markdown table of `vpn`'s cells: a's kind down, b's kind across, empty where not run."""
    by_pair = {(cell.a, cell.b): cell for cell in cells if cell.vpn == vpn}
    rows = [kind.name for kind in kinds if any(a == kind.name for a, _ in by_pair)]
    columns = [kind.name for kind in kinds if any(b == kind.name for _, b in by_pair)]
    lines = [f"| a \\ b | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        texts = [by_pair[row, column].text() if (row, column) in by_pair else "" for column in columns]
        lines.append(f"| {row} | {' | '.join(texts)} |")
    return "\n".join(lines)


def to_json(cells: list[Cell], settings: dict, host: dict, kinds: tuple[Kind, ...] = KINDS) -> dict:
    """The JSON document: settings, host, the kinds and every cell with its attempts and summary."""
    return {
        "settings": settings,
        "host": host,
        "kinds": [{"name": kind.name, "description": kind.description} for kind in kinds],
        "cells": [
            {
                "vpn": cell.vpn, "a": cell.a, "b": cell.b, "runs": len(cell.attempts),
                "outcome": cell.outcome[0], "outcome_runs": cell.outcome[1], "p2p_runs": cell.p2p_runs,
                "first_ping_median_s": cell.first_ping_median, "direct_median_s": cell.direct_median,
                "attempts": [{**asdict(attempt), "label": attempt.label} for attempt in cell.attempts],
            }
            for cell in cells
        ],
    }


# ---- running an attempt


def watch(started: float, seconds: float, ping: Callable[[], bool], path_of: Callable[[], str | None]) -> Attempt:
    """Ping until a reply comes over a peer-to-peer path or `seconds` after `started` have passed.

    `path_of` is asked after every reply; None means it could not tell, and the reply is not counted.
    """
    result = Attempt()
    while time.monotonic() < started + seconds:
        if not ping():
            continue
        replied = time.monotonic() - started
        path = path_of()
        if path is None:
            continue
        if result.first_path is None:
            result.first_path, result.first_ping_s = path, replied
        result.final_path = path
        if path in P2P_PATHS:
            result.direct_s = replied
            break
    return result


def run_meshvpn(topo: Topology, workdir: Path, seconds: float, peer_relay: bool = False,
                log_level: str = LOG_LEVEL) -> Attempt:
    """Coord and relay on the internet, a daemon in `a1` and `b1`; `a1`'s status names the path.

    The coord listens on port 443 and the relay offers TLS there too, as a deployment that serves
    port-443-only networks does; the other cells do not use either. Every program logs at `log_level`."""
    mesh = Mesh(workdir, topo.host("coord"), COORD_ADDR, log_level=log_level, coord_port=443)
    mesh.coord_ipv6 = topo.addr6("coord") if topo.ipv6 else None
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, tls_port=443, dual=topo.ipv6)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name in ("a1", "b1", "h1") if peer_relay else ("a1", "b1"):
        mesh.start_node(name, topo.host(name), key)
    wait_for(lambda: mesh.status("a1") and mesh.status("b1"), START_SECONDS, "both daemons answering")
    if peer_relay:
        wait_for(lambda: mesh.status("h1").get("self", {}).get("overlay"), START_SECONDS, "h1 registered")
        mesh.admin("relays", "allow", "h1")
    started = time.monotonic()
    target = wait_for(lambda: mesh.peer_overlay("a1", "b1"), seconds, "b1 in a1's peers")

    def path_of() -> str | None:
        try:
            peer = mesh.peer("a1", "b1")
        except (DaemonNotRunning, OSError, ValueError, KeyError, MeshError):
            return None
        return PEER_RELAY if peer.get("peer_relay") else peer["path"] if peer["path"] != "-" else None

    return watch(started, seconds, lambda: topo.host("a1").ping(target, FIRST_PING_TIMEOUT), path_of)


def _nebula_config(pki: Path, name: str, index: int, lighthouse: str, lighthouse6: str | None = None,
                   peer_relay: str | None = None, log_level: str = LOG_LEVEL) -> dict:
    """Node `index` (0: the lighthouse, also a relay). With `lighthouse6` (a dual-stack lab) it listens
    on both families and knows the lighthouse at its IPv6 address too; `peer_relay`, the overlay
    address of `h1` when it may relay: `am_relay` there, and first in every other node's relays.
    It logs at `log_level` (Nebula's names for the levels are meshvpn's)."""
    am_lighthouse = index == 0
    hosts = [f"{LIGHTHOUSE_ADDR}:{NEBULA_PORT}"] + ([f"[{lighthouse6}]:{NEBULA_PORT}"] if lighthouse6 else [])
    relays = [] if am_lighthouse or name == "h1" else [r for r in (peer_relay, lighthouse) if r]
    return {
        "pki": {"ca": str(pki / "ca.crt"), "cert": str(pki / f"{name}.crt"), "key": str(pki / f"{name}.key")},
        "static_host_map": {lighthouse: hosts},
        "lighthouse": {"am_lighthouse": am_lighthouse, "hosts": [] if am_lighthouse else [lighthouse]},
        "listen": {"host": "[::]" if lighthouse6 else "0.0.0.0", "port": NEBULA_PORT},
        "punchy": {"punch": True, "respond": True},
        "relay": {"am_relay": am_lighthouse or name == "h1", "use_relays": True, "relays": relays},
        "tun": {"dev": NEBULA_TUN},
        "logging": {"level": log_level},
        "firewall": {rule: [{"port": "any", "proto": "any", "host": "any"}] for rule in ("outbound", "inbound")},
    }


def _count_nebula_packets(ns: Namespace) -> None:
    """Count the UDP packets `ns` receives on Nebula's port from now on (`_nebula_packets`)."""
    ns.run(["nft", "-f", "-"], input=(
        f"table inet {COUNT_TABLE} {{\n  counter udp_in {{ }}\n"
        f"  chain input {{ type filter hook input priority 0; policy accept; udp dport {NEBULA_PORT} counter name udp_in; }}\n}}\n"
    ))


def _nebula_packets(ns: Namespace) -> int:
    """UDP packets `ns` has received on Nebula's port since the counter was made."""
    out = ns.run(["nft", "-j", "list", "counter", "inet", COUNT_TABLE, "udp_in"]).stdout
    return next(item["counter"]["packets"] for item in json.loads(out)["nftables"] if "counter" in item)


def run_nebula(topo: Topology, workdir: Path, seconds: float, peer_relay: bool = False,
               log_level: str = LOG_LEVEL) -> Attempt:
    """A lighthouse and relay on the internet, Nebula in `a1` and `b1` (and `h1`, a relay too, with
    `peer_relay`), logging at `log_level`; the relays' counters name the path."""
    lighthouse_ns = topo.host("lighthouse")
    counted = [lighthouse_ns, topo.host("h1")] if peer_relay else [lighthouse_ns]
    for ns in counted:
        _count_nebula_packets(ns)
    lighthouse_ns.run(["nebula-cert", "ca", "-name", "mvmatrix", "-out-crt", str(workdir / "ca.crt"),
                       "-out-key", str(workdir / "ca.key")])
    lighthouse = f"{NEBULA_NET}.1"
    logs = []
    for index, name in enumerate(("lighthouse", "a1", "b1", "h1") if peer_relay else ("lighthouse", "a1", "b1")):
        lighthouse_ns.run(["nebula-cert", "sign", "-name", name, "-ip", f"{NEBULA_NET}.{index + 1}/24",
                           "-ca-crt", str(workdir / "ca.crt"), "-ca-key", str(workdir / "ca.key"),
                           "-out-crt", str(workdir / f"{name}.crt"), "-out-key", str(workdir / f"{name}.key")])
        config = workdir / f"{name}.yaml"
        lighthouse6 = topo.addr6("lighthouse") if topo.ipv6 else None
        config.write_text(yaml.safe_dump(_nebula_config(workdir, name, index, lighthouse, lighthouse6,
                                                        f"{NEBULA_NET}.4" if peer_relay else None, log_level)))
        logs.append(workdir / f"nebula-{name}.log")
        spawn(topo.host(name), ["nebula", "-config", str(config)], logs[-1])
        if index == 0:
            wait_for(lambda: link_mtu(lighthouse_ns, NEBULA_TUN), START_SECONDS, "the lighthouse's TUN device")
    wait_for(lambda: link_mtu(topo.host("a1"), NEBULA_TUN) and link_mtu(topo.host("b1"), NEBULA_TUN),
             START_SECONDS, "both Nebula TUN devices")
    started = time.monotonic()
    target, a1 = f"{NEBULA_NET}.3", topo.host("a1")

    def path_of() -> str | None:
        before = [_nebula_packets(ns) for ns in counted]
        done = a1.run(["ping", "-q", "-n", "-c", str(BURST), "-i", "0.02", "-W", "1", target], check=False, timeout=10)
        try:
            received = parse_ping(done.stdout).received
        except MeasureError:
            return None
        if received < BURST // 2:
            return None
        carried = [_nebula_packets(ns) - b >= received for ns, b in zip(counted, before)]
        return PEER_RELAY if carried[-1] and peer_relay else "relay" if carried[0] else "direct"

    return watch(started, seconds, lambda: a1.ping(target, FIRST_PING_TIMEOUT), path_of)


SERVERS = {MESHVPN: (("coord", COORD_ADDR), ("relay", RELAY_ADDR)), NEBULA: (("lighthouse", LIGHTHOUSE_ADDR),)}
RUNNERS = {MESHVPN: run_meshvpn, NEBULA: run_nebula}


def attempt(vpn: str, a: Kind, b: Kind, seconds: float, workdir: Path, log_level: str = LOG_LEVEL) -> Attempt:
    """One attempt of one cell in a lab of its own; set-up failures become the attempt's error."""
    with BenchLab() as lab:
        try:
            topo = Topology(lab, ipv6=a.ipv6 or b.ipv6)
            for name, address in SERVERS[vpn]:
                topo.add_server(name, addrs=[address])
            target = SERVERS[vpn][-1][1]
            if a.stun or b.stun:
                add_stun_server(topo, workdir)
            a.build(topo, "a", target, seconds)
            b.build(topo, "b", target, seconds)
            if a.peer_relay or b.peer_relay:
                topo.add_site("h", nat=NatKind.PORT_PRESERVING)
            return RUNNERS[vpn](topo, workdir, seconds, a.peer_relay or b.peer_relay, log_level)
        except MeshError as err:
            return Attempt(error=" ".join(str(err).split())[:500])


# ---- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.bench.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="attempts per cell; the table gives the rate (default 1)")
    parser.add_argument("--pairs", nargs="+", metavar="A:B", help="only these cells, a's kind first "
                        f"(default: every unordered pair); kinds: {', '.join(KINDS_BY_NAME)}")
    parser.add_argument("--vpns", nargs="+", choices=VPNS, default=list(VPNS), help="default: both")
    parser.add_argument("--seconds", type=float, default=CELL_SECONDS,
                        help=f"time per attempt from both ends up (default {CELL_SECONDS:g})")
    parser.add_argument("--json", type=Path, metavar="FILE", help="default bench-results/matrix-<date>.json")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep every attempt's configs and logs here")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=LOG_LEVEL,
                        help=f"what the coord, relay and daemons (or Nebula) log (default {LOG_LEVEL})")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs and --seconds must be positive")
    try:
        args.pairs = [parse_pair(text) for text in args.pairs] if args.pairs else all_pairs()
    except ValueError as err:
        parser.error(str(err))
    return args


def run_cells(args: argparse.Namespace, workdir: Path, cells: list[Cell]) -> None:
    """Run every attempt of every selected cell, appending to `cells` as each cell completes."""
    missing = [program for program in ("nebula", "nebula-cert") if shutil.which(program) is None]
    for a, b in args.pairs:
        for vpn in args.vpns:
            cell = Cell(vpn, a, b)
            for run in range(args.runs):
                if vpn == NEBULA and missing:
                    cell.attempts.append(Attempt(error=f"not installed: {', '.join(missing)}"))
                    continue
                rundir = workdir / f"{vpn}-{a}-{b}-{run + 1}"
                rundir.mkdir(parents=True)
                cell.attempts.append(attempt(vpn, KINDS_BY_NAME[a], KINDS_BY_NAME[b], args.seconds, rundir,
                                             args.log_level))
                done = cell.attempts[-1]
                print(f"matrix: {vpn} {a} -> {b} #{run + 1}: {done.label} {done.error or ''}".rstrip(),
                      file=sys.stderr, flush=True)
            cells.append(cell)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("meshvpn matrix: needs root (network namespaces)", file=sys.stderr)
        return 2
    started = datetime.datetime.now().astimezone()
    cells: list[Cell] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="meshvpn-matrix-") as scratch:
        try:
            run_cells(args, args.keep or Path(scratch), cells)
        except KeyboardInterrupt:
            interrupted = True
            print("matrix: interrupted; namespaces and processes removed", file=sys.stderr)
    for vpn in args.vpns:
        print(f"\n{vpn} (row: a's NAT, pings b; column: b's NAT)\n\n{render_table(cells, vpn)}")
    path = args.json or Path("bench-results") / f"matrix-{started:%Y-%m-%dT%H%M%S}.json"
    settings = {"runs": args.runs, "seconds": args.seconds, "vpns": args.vpns, "started": started.isoformat(),
                "pairs": [list(pair) for pair in args.pairs], "interrupted": interrupted, "log_level": args.log_level}
    host = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()}
    write_json(path, to_json(cells, settings, host))
    print(f"\nresults written to {path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
