"""The coord side of `coord_scale`: configs, `meshvpn coord` child processes, their CPU and RSS.

Each instance is a child process, so its CPU and RSS are its own; `Phase` prints a phase's
figures with what the servers (and the bench's node workers) spent in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from meshvpn import keys

NETWORK_BLOCK = ipaddress.ip_network("100.64.0.0/10")


def write_config(directory: Path, index: int, port: int, database: str, networks: int, per_network: int,
                 metrics_port: int) -> Path:
    """Instance `index`'s config: the shared key and database, its own ports and admin socket."""
    if not (directory / "coord.key").exists():
        keys.write_private_key(directory / "coord.key")
    lines = [
        "private_key_file: coord.key", f"database: {json.dumps(database)}", f"listen: 127.0.0.1:{port}",
        "stun_listen: 127.0.0.1:0", f"admin_socket: admin{index}.sock", "keepalive: 30s",
        "metrics:", f"  listen: 127.0.0.1:{metrics_port}", "log:", "  level: warning", "networks:",
    ]
    prefix = min(20, 32 - (per_network + 3).bit_length())  # room for every node besides .0, .1 and broadcast
    for number, cidr in enumerate(NETWORK_BLOCK.subnets(new_prefix=prefix)):
        if number == networks:
            break
        lines += [f"  - name: net{number}", f"    cidr: {cidr}"]
    path = directory / f"coord{index}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_usage(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user + system), RSS and peak RSS in KiB of a child process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


async def wait_until_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"coord exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise SystemExit("coord did not start listening")


def fanout_times(metrics_port: int) -> tuple[float, float, float]:
    """An instance's fan-out rounds, and the seconds they waited and took, summed
    (`meshvpn.coord.fanout.RoundTimes`, from its metrics endpoint); zeros when it does not answer."""
    wanted = ("meshvpn_coord_fanout_rounds_total", "meshvpn_coord_fanout_wait_seconds_total",
              "meshvpn_coord_fanout_serve_seconds_total")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            lines = answer.read().decode().splitlines()
    except OSError:
        return 0.0, 0.0, 0.0
    values = dict(line.split()[:2] for line in lines if line.startswith(wanted))
    return tuple(float(values.get(name, 0.0)) for name in wanted)  # type: ignore[return-value]


class Server:
    """One `meshvpn coord` child process, started again for the restart."""

    def __init__(self, directory: Path, config: Path, port: int, index: int, metrics_port: int) -> None:
        self.directory, self.config, self.port, self.index = directory, config, port, index
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen | None = None
        self.cpu_spent = 0.0
        """CPU seconds of the processes before the current one."""
        self.starts = 0

    async def start(self) -> None:
        profile = os.environ.get("MESHVPN_BENCH_PROFILE")
        python = [sys.executable]
        if profile:
            self.starts += 1
            python += ["-m", "cProfile", "-o", f"{profile}/coord{self.index}-{self.starts}.prof"]
        with (self.directory / f"coord{self.index}.log").open("a") as server_log:
            self.proc = subprocess.Popen([*python, "-m", "meshvpn", "coord", "-c", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=server_log)
        await wait_until_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        cpu, _, _ = process_usage(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.cpu_spent += cpu

    def usage(self) -> tuple[float, int, int]:
        """CPU seconds of every server process so far, RSS and peak RSS (KiB) of the current one."""
        if self.proc is None or self.proc.poll() is not None:
            return self.cpu_spent, 0, 0
        cpu, rss, peak = process_usage(self.proc.pid)
        return self.cpu_spent + cpu, rss, peak

    def problems(self) -> list[str]:
        log = self.directory / f"coord{self.index}.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if " WARNING " in line or " ERROR " in line]


class Coords:
    """Every coord instance of the run; node i connects to instance i mod N."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.config = servers[0].config
        self.admin_socket = servers[0].directory / "admin0.sock"

    def ports(self) -> list[int]:
        """The instances' ports: node i connects to the one at i mod N."""
        return [server.port for server in self.servers]

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def usage(self) -> tuple[float, int, int]:
        """CPU seconds of every instance so far, summed RSS and summed peak RSS (KiB)."""
        usages = [server.usage() for server in self.servers]
        return tuple(sum(column) for column in zip(*usages))  # type: ignore[return-value]

    def problems(self) -> list[str]:
        return [line for server in self.servers for line in server.problems()]

    def fanout_times(self) -> tuple[float, float, float]:
        """`fanout_times` summed over the instances."""
        return tuple(sum(column) for column in zip(*(fanout_times(s.metrics_port) for s in self.servers)))  # type: ignore


class Phase:
    """Prints one phase's figures with the server CPU it took and its RSS, and the CPU the
    bench's node workers took (`clients`: their CPU seconds so far)."""

    def __init__(self, server: Coords, name: str, clients: Callable[[], float]) -> None:
        self.server, self.name, self.clients = server, name, clients
        self.cpu_before, _, _ = server.usage()
        self.clients_before = clients()
        self.rounds_before = server.fanout_times()
        self.started = time.perf_counter()

    def report(self, text: str) -> None:
        cpu, rss, peak = self.server.usage()
        clients = self.clients() - self.clients_before
        load = os.getloadavg()[0]
        rounds, waited, served = (now - before for now, before in zip(self.server.fanout_times(), self.rounds_before))
        if rounds > 0:
            text += (f"; {rounds:.0f} fan-out rounds, each waited {waited / rounds * 1000:.0f} ms on average from its "
                     f"first change and took {served / rounds * 1000:.0f} ms to reach every node")
        print(f"{self.name:<12} {text}; server CPU {cpu - self.cpu_before:.1f} s, "
              f"RSS {rss / 1024:.0f} MiB (peak {peak / 1024:.0f} MiB); node workers CPU {clients:.1f} s "
              f"in {time.perf_counter() - self.started:.0f} s; load average {load:.1f}", flush=True)
