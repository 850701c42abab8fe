"""Coordination server at scale: N simulated nodes against a real `meshvpn coord` process.

Run: ``.venv/bin/python bench/coord_scale.py [--nodes 1000] [--per-network 1000]``.

The server runs as a child process (so its RSS and CPU are its own); every node is a
`meshvpn.coord.client` connection in this process, from its own loopback source address
(127.1.x.y), registering with its endpoints as a node does after STUN. Prints: time until every
node is registered, until every peer update of the joins is delivered, the server's RSS and CPU
for that, and the time for one node's endpoint change to reach every peer in its network.
Joins cost O(n²) messages per network (each join is announced to every online peer), so nodes are
split into networks of ``--per-network``. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshvpn import keys, noise
from meshvpn.coord import messages as m
from meshvpn.coord.client import CoordClient, connect
from meshvpn.errors import MeshError

CONCURRENT_JOINS = 100
"""Connections in their handshake or registration at once (a realistic restart stampede)."""
NETWORK_BLOCK = ipaddress.ip_network("100.64.0.0/10")


@dataclass
class SimNode:
    """One simulated node: identity, network and what it has received."""

    index: int
    identity: noise.StaticIdentity
    network: str
    client: CoordClient | None = None
    received: int = 0
    registered_at: float | None = None


@dataclass
class Watch:
    """Waiting for one peer update (a key and its new public endpoint) to reach `pending` nodes."""

    key: bytes
    endpoint: m.Endpoint
    pending: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_at: float = 0.0


class Bench:
    """The simulated nodes and the counters their readers update."""

    def __init__(self, nodes: list[SimNode]) -> None:
        self.nodes = nodes
        self.received = 0
        self.watch: Watch | None = None
        self.failures: list[str] = []

    async def read(self, node: SimNode) -> None:
        async for message in node.client:
            if isinstance(message, m.Pong):
                continue
            node.received += 1
            self.received += 1
            watch = self.watch
            if (watch is not None and isinstance(message, m.PeerUpdate) and message.peer.key == watch.key
                    and message.peer.public_endpoint == watch.endpoint):
                watch.pending -= 1
                if watch.pending == 0:
                    watch.last_at = time.perf_counter()
                    watch.done.set()


def write_config(directory: Path, port: int, networks: int) -> Path:
    keys.write_private_key(directory / "coord.key")
    lines = [
        "private_key_file: coord.key", "database: coord.db", f"listen: 127.0.0.1:{port}",
        "stun_listen: 127.0.0.1:0", "admin_socket: admin.sock", "keepalive: 30s",
        "log:", "  level: warning", "networks:",
    ]
    for index, cidr in enumerate(NETWORK_BLOCK.subnets(new_prefix=20)):
        if index == networks:
            break
        lines += [f"  - name: net{index}", f"    cidr: {cidr}"]
    path = directory / "coord.yaml"
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


def source_address(index: int) -> tuple[str, int]:
    """A loopback source address per node, so the per-address connection cap does not apply."""
    return (f"127.1.{index // 250}.{index % 250 + 1}", 0)


async def join(bench: Bench, node: SimNode, address, server_public: bytes, tokens: dict, gate: asyncio.Semaphore,
               readers: list) -> None:
    register = m.Register(
        f"node-{node.index}", "bench", (m.Endpoint("10.0.0.1", 41641), m.Endpoint("192.168.1.10", 41641)),
        auth_key=tokens[node.network], public_endpoint=m.Endpoint("198.51.100.1", 20000 + node.index % 40000),
    )
    async with gate:
        try:
            node.client = await connect(address, server_public, node.identity, keepalive=10.0,
                                        local_addr=source_address(node.index), timeout=60)
            await node.client.register(register, timeout=120)
        except (MeshError, asyncio.TimeoutError) as exc:
            bench.failures.append(f"node-{node.index}: {exc or type(exc).__name__}")
            if node.client is not None:
                node.client.close()
            node.client = None
            return
        node.registered_at = time.perf_counter()
    readers.append(asyncio.create_task(bench.read(node)))


async def wait_for_count(bench: Bench, expected: int, quiet: float = 3.0) -> float:
    """When `expected` messages have arrived, or (after failed joins) none for `quiet` seconds."""
    last, last_change = bench.received, time.perf_counter()
    while bench.received < expected:
        await asyncio.sleep(0.005)
        if bench.received != last:
            last, last_change = bench.received, time.perf_counter()
        elif time.perf_counter() - last_change > quiet:
            print(f"only {bench.received} of {expected} join updates arrived")
            return last_change
    return time.perf_counter()


async def endpoint_change(bench: Bench, mover: SimNode, round_: int) -> float:
    """Seconds from `mover` sending new endpoints until every online peer in its network has them."""
    new_public = m.Endpoint("203.0.113.7", 1000 + round_)
    peers = sum(1 for node in bench.nodes
                if node.network == mover.network and node is not mover and node.client is not None)
    bench.watch = watch = Watch(mover.identity.public, new_public, peers)
    started = time.perf_counter()
    mover.client.send(m.Endpoints(local=(m.Endpoint("10.0.0.1", 41641),), public=new_public))
    await asyncio.wait_for(watch.done.wait(), 120)
    bench.watch = None
    return watch.last_at - started


async def run(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.nodes + 100:
        raise SystemExit(f"the open-file limit {hard} is too low for {args.nodes} nodes")
    networks = -(-args.nodes // args.per_network)
    with tempfile.TemporaryDirectory(prefix="coord-scale-") as tmp:
        directory = Path(tmp)
        port = free_tcp_port()
        config = write_config(directory, port, networks)
        server_public = keys.public_key(keys.read_private_key(directory / "coord.key"))
        with (directory / "coord.log").open("w") as server_log:
            proc = subprocess.Popen([sys.executable, "-m", "meshvpn", "coord", "-c", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=server_log)
        try:
            await wait_until_listening(port, proc)
            await measure(args, proc, ("127.0.0.1", port), server_public, config, networks)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            problems = [line for line in (directory / "coord.log").read_text().splitlines()
                        if " WARNING " in line or " ERROR " in line]
            if problems:
                print(f"server warnings and errors: {len(problems)}, first ones:\n  " + "\n  ".join(problems[:5]))


async def measure(args, proc: subprocess.Popen, address, server_public: bytes, config: Path, networks: int) -> None:
    tokens = {}
    for index in range(networks):
        created = subprocess.run(
            [sys.executable, "-m", "meshvpn", "coord", "-c", str(config), "key", "create",
             "--network", f"net{index}", "--reusable"],
            capture_output=True, text=True, check=True,
        )
        tokens[f"net{index}"] = created.stdout.strip().splitlines()[-1]
    nodes = [
        SimNode(i, noise.StaticIdentity.from_private(keys.generate_private_key()), f"net{i // args.per_network}")
        for i in range(args.nodes)
    ]
    bench = Bench(nodes)
    cpu_before, _, _ = process_usage(proc.pid)
    gate = asyncio.Semaphore(CONCURRENT_JOINS)
    readers: list[asyncio.Task] = []
    started = time.perf_counter()
    await asyncio.gather(*(join(bench, node, address, server_public, tokens, gate, readers) for node in nodes))
    all_registered = time.perf_counter() - started
    joined = [node for node in nodes if node.client is not None]
    sizes = [sum(1 for n in joined if n.network == name) for name in tokens]
    expected = sum(n * (n - 1) // 2 for n in sizes)
    all_delivered = await wait_for_count(bench, expected) - started
    cpu_after, rss, peak = process_usage(proc.pid)
    changes = [await endpoint_change(bench, joined[(7 * r) % len(joined)], r) for r in range(args.rounds)]
    cpu_end, rss_end, peak_end = process_usage(proc.pid)
    own = resource.getrusage(resource.RUSAGE_SELF)

    print(f"nodes                       {args.nodes} in {networks} network(s) of up to {args.per_network}")
    print(f"all registered              {all_registered:.2f} s ({len(joined) / all_registered:.0f} joins/s)")
    if bench.failures:
        print(f"failed joins                {len(bench.failures)}, e.g. {bench.failures[0]}")
    print(f"all join updates delivered  {all_delivered:.2f} s ({expected} messages)")
    print(f"server CPU for the joins    {cpu_after - cpu_before:.2f} s")
    print(f"server RSS                  {rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB, "
          f"{rss * 1024 / args.nodes / 1024:.1f} KiB per node)")
    print(f"endpoint change to all {max(sizes) - 1} peers: median {statistics.median(changes) * 1000:.1f} ms, "
          f"max {max(changes) * 1000:.1f} ms over {len(changes)} rounds "
          f"(server CPU {(cpu_end - cpu_after) / len(changes) * 1000:.0f} ms each)")
    print(f"bench process CPU           {own.ru_utime + own.ru_stime:.1f} s (clients' share of the machine)")
    for node in joined:
        node.client.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    parser.add_argument("--per-network", type=int, default=1000, help="nodes per network (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="endpoint changes to time (default 5)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
