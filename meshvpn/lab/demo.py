"""The live demo: a mesh behind real NATs in network namespaces, narrated step by step.

`python -m meshvpn.lab.demo` (as root; `make demo`, `./scripts/demo`) builds a lab internet
with the coordination server and a relay, puts nodes behind four kinds of NAT, joins them with
the real admin verbs, waits for their paths and prints what `meshvpn coord nodes list`,
`meshvpn status`, `meshvpn ping` and a TCP transfer through the tunnel print, then a LAN game's
server browser finding servers by broadcast and a `dig` for a peer's name across the mesh. Everything runs
in namespaces named `mv<PID>-...` and is removed at the end, on failure and on Ctrl-C.
Nothing touches the root namespace.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

from meshvpn.errors import MeshError
from meshvpn.lab import lanplay
from meshvpn.lab.mesh import COORD_PORT, RELAY_PORT, STUN_PORT, Mesh, PathFound
from meshvpn.lab.nat import Nat, NatKind
from meshvpn.lab.netns import Lab, cleanup_stale, lab_namespaces, python_command
from meshvpn.lab.topology import Topology
from meshvpn.lab.transfer import PORT as TRANSFER_PORT
from meshvpn.lab.transfer import transfer

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
NETWORK, CIDR = "demo", "100.80.0.0/24"
BROADCAST = "100.80.0.255"
PATH_TIMEOUT = 15.0
"""Seconds to wait for all paths; the relayed pair needs `paths.relay_after` (2 s) and its relay link."""
PING_COUNT = "3"


@dataclass(frozen=True)
class SitePlan:
    """One site of the demo network."""

    name: str
    nat: Nat
    hosts: int
    says: str
    """What the narration calls its NAT."""


SITES = (
    SitePlan("a", NatKind.PORT_PRESERVING, 1, "port-preserving masquerade"),
    SitePlan("b", NatKind.PORT_RANGE, 1, "range-mapping NAT (ports moved into 30000-40000)"),
    SitePlan("c", NatKind.PORT_PRESERVING, 2, "two nodes behind one port-preserving NAT"),
    SitePlan("d", NatKind.RANDOM_PORTS, 1, "random-port NAT (masquerade fully-random)"),
    SitePlan("e", NatKind.RANDOM_PORTS, 1, "random-port NAT (masquerade fully-random)"),
)

PATHS = {
    ("a1", "b1"): ("direct",),
    ("b1", "c2"): ("direct",),
    ("c1", "a1"): ("direct",),
    ("c1", "c2"): ("lan",),
    ("d1", "e1"): ("relay",),
}
"""The paths the demo makes, and the kinds each may end up as. Two random-port NATs cannot
punch (each side's port for the other is unknowable), so that pair can only use the relay."""
RELAYED = ("d1", "e1")
DIRECT = ("a1", "b1")
PINGS = (("a1", "b1"), ("c1", "c2"), ("b1", "c2"), RELAYED)

class DemoFailed(MeshError):
    """Something the demo shows did not work."""


def shown(argv: Sequence[str]) -> str:
    """A command line as a user would type it: `meshvpn ...` for `python -m meshvpn ...`, `python3`
    for the interpreter's path."""
    words = list(argv)
    if words[1:3] == ["-m", "meshvpn"]:
        words = ["meshvpn", *words[3:]]
    elif words[1:2] == ["-m"]:
        words[0] = "python3"
    return " ".join(words)


class Demo:
    """One run of the demo in a lab; `run()` goes through the steps in order."""

    def __init__(self, lab: Lab, workdir: Path, seconds: float, out: TextIO) -> None:
        self.lab = lab
        self.workdir = workdir
        self.seconds = seconds
        self.out = out
        self.steps = 0
        self.mesh: Mesh | None = None
        self.found: dict[tuple[str, str], PathFound] = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.steps += 1
        self.say(f"\n== {self.steps}. {title}")

    def command(self, who: str, argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> None:
        """Print a command as typed on `who`, then exactly what it printed."""
        self.say(f"{who}$ {shown(argv)}")
        for stream in (done.stdout, done.stderr):
            if stream.strip():
                self.say(stream.rstrip("\n"))

    def run(self) -> None:
        topo = self.build()
        mesh = self.mesh = Mesh(self.workdir, topo.host("coord"), COORD_ADDR, network=NETWORK, cidr=CIDR,
                                log_level="info")
        self.join(topo, mesh)
        self.make_paths(mesh)
        self.step("The coordination server's view: meshvpn coord nodes list")
        self.command("coord", mesh.admin_command("nodes", "list"), mesh.admin("nodes", "list"))
        self.step("Each node's view: meshvpn status")
        for name in mesh.nodes:
            self.command(name, mesh.cli_command(name, "status"), mesh.cli(name, "status", check=False))
        self.step("meshvpn ping across the mesh: the path each answer took and its round trip")
        for src, dst in PINGS:
            argv = mesh.cli_command(src, "ping", dst, "-c", PING_COUNT)
            self.command(src, argv, mesh.cli(src, "ping", dst, "-c", PING_COUNT, check=False))
        missing = [pair for pair in PATHS if pair not in self.found]
        if missing:
            raise DemoFailed("no path for " + ", ".join(f"{src} -> {dst}" for src, dst in missing))
        self.step(f"TCP through the tunnel: {self.seconds:g} s of random data, SHA-256 on both ends")
        self.checked_transfer(mesh, *DIRECT)
        self.checked_transfer(mesh, *RELAYED)
        self.lan_party(mesh)

    def build(self) -> Topology:
        self.step("Building the lab: an internet, the coordination server, a relay and five sites behind NATs")
        topo = Topology(self.lab)
        topo.add_server("coord", addrs=[COORD_ADDR])
        topo.add_server("relay", addrs=[RELAY_ADDR])
        for plan in SITES:
            topo.add_site(plan.name, nat=plan.nat, hosts=plan.hosts)
        self.say(f"  coord    {COORD_ADDR:<15} coordination server (TCP {COORD_PORT}, STUN {STUN_PORT})")
        self.say(f"  relay    {RELAY_ADDR:<15} relay (UDP and TCP {RELAY_PORT})")
        for plan in SITES:
            hosts = ", ".join(f"{node.name} {node.addrs[0]}" for node in topo.site(plan.name).hosts)
            self.say(f"  site {plan.name}   {topo.addr(plan.name):<15} {plan.says}: {hosts}")
        self.say(f"  namespaces: {self.lab.prefix}-*   files: {self.workdir}")
        return topo

    def join(self, topo: Topology, mesh: Mesh) -> None:
        self.step(f"Starting the relay and the coordination server (network {NETWORK!r}, {CIDR}, in coord.yaml)")
        mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR)
        mesh.start_coord()
        self.command("coord", mesh.admin_command("networks", "list"), mesh.admin("networks", "list"))
        self.step("Creating a pre-auth key with the admin verb")
        auth_key, created = mesh.create_auth_key()
        self.command("coord", mesh.admin_command("key", "create", "--network", NETWORK, "--reusable"), created)
        names = [node.name for plan in SITES for node in topo.site(plan.name).hosts]
        self.step(f"Starting {len(names)} daemons ({', '.join(names)}); each registers and learns its peers")
        for name in names:
            mesh.start_node(name, topo.host(name), auth_key)
        mesh.wait_registered()
        for name in names:
            self.say(f"  {name:<3} is {mesh.overlay(name)}")

    def make_paths(self, mesh: Mesh) -> None:
        self.step("Making paths: the first packet to a peer starts a handshake and hole punching")

        def report(src: str, dst: str, found: PathFound) -> None:
            peer = found.peer
            self.say(f"  {src} -> {dst}: {peer['path']} {peer['endpoint']} after {found.seconds:.1f} s")

        self.found = mesh.wait_for_paths(PATHS, PATH_TIMEOUT, on_found=report)
        for (src, dst), kinds in PATHS.items():
            if (src, dst) not in self.found:
                self.say(f"  {src} -> {dst}: no {'/'.join(kinds)} path after {PATH_TIMEOUT:.0f} s")

    def checked_transfer(self, mesh: Mesh, src: str, dst: str) -> None:
        """Send random data from `src` to `dst` through the tunnel for `seconds`; compare digests."""
        target = mesh.overlay(dst)
        sent, received = transfer(mesh.nodes[src].ns, mesh.nodes[dst].ns, target, duration=self.seconds)
        path = mesh.peer(src, dst)["path"]
        self.say(f"  {src} -> {dst} ({target}:{TRANSFER_PORT}, path {path})")
        self.say(f"  {src}: sent {sent.bytes} bytes, sha256 {sent.sha256}")
        self.say(f"  {dst}: received {received.bytes} bytes in {received.seconds:.3f} s, sha256 {received.sha256}")
        if not sent.bytes or not received.same_data(sent):
            raise DemoFailed(f"the transfer from {src} to {dst} did not arrive intact")
        self.say(f"  checksums match: {received.mbit_per_s():.0f} Mbit/s")

    def lan_party(self, mesh: Mesh) -> None:
        """A server browser's broadcast finds the game servers across the mesh; a name resolves across it."""
        self.step("LAN party: a server browser's broadcast finds the games; a peer's name across the mesh")
        browser, servers = "b1", ("a1", "c2")
        for name in servers:
            lanplay.start(mesh.nodes[name].ns, "serve", f"{name}-game")
        self.say(f"  {' and '.join(servers)} run a game server on udp/{lanplay.GAME_PORT}")
        ns = mesh.nodes[browser].ns
        argv = python_command("meshvpn.lab.lanplay", "ask", BROADCAST, "--bind", mesh.overlay(browser))
        done = ns.run(argv, check=False, timeout=30)
        self.command(browser, argv, done)
        found = {line.split()[0] for line in done.stdout.splitlines()}
        if not {f"{name}-game" for name in servers} <= found:
            raise DemoFailed(f"the broadcast query from {browser} found {sorted(found)}")
        name = f"{servers[1]}.{NETWORK}.mesh"
        argv = ["dig", "+short", "+tries=3", "+time=1", f"@{mesh.overlay(servers[0])}", name]
        done = ns.run(argv, check=False, timeout=15)
        self.command(browser, argv, done)
        if done.stdout.split() != [mesh.overlay(servers[1])]:
            raise DemoFailed(f"{name} did not resolve to {mesh.overlay(servers[1])} across the mesh")

    def logs(self) -> str:
        return self.mesh.logs() if self.mesh is not None else ""


def leftovers(lab: Lab, processes: list[subprocess.Popen]) -> list[str]:
    """What a closed lab left behind: its namespaces that still exist, its processes still running."""
    names = [name for name in lab_namespaces() if name.startswith(lab.prefix + "-")]
    running = [f"pid {proc.pid}" for proc in processes if proc.poll() is None]
    return names + running


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"want a number of seconds from 0.1 to 60, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.lab.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=_seconds, default=3.0, help="length of each TCP transfer (default 3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo needs root: it creates network namespaces (try: sudo make demo)", file=sys.stderr)
        return 1
    for name in cleanup_stale():
        print(f"removed {name}, left by an earlier run that was killed", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="mv-demo-"))
    code, demo, processes = 0, None, []
    try:
        with Lab() as lab:
            demo = Demo(lab, workdir, args.seconds, sys.stdout)
            try:
                demo.run()
            except (MeshError, subprocess.SubprocessError, OSError) as err:
                print(f"\ndemo failed: {err}", flush=True)
                print(demo.logs(), file=sys.stderr, flush=True)
                code = 1
            except KeyboardInterrupt:
                print("\ninterrupted", flush=True)
                code = 130
            finally:
                processes = [proc for ns in lab.namespaces.values() for proc in ns.processes]
                demo.step("Cleaning up: stopping every process and deleting every namespace")
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        code = 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if demo is not None:
        left = leftovers(demo.lab, processes)
        print(f"  {len(processes)} processes stopped, namespaces deleted: "
              + (f"LEFT BEHIND {', '.join(left)}" if left else "nothing left behind"), flush=True)
        code = code or (1 if left else 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
