"""Coordination server at scale: N simulated nodes against a real `meshvpn coord` process.

Run: ``.venv/bin/python bench/coord_scale.py [--nodes 1000] [--per-network 1000]``.

The server runs as a child process (so its RSS and CPU are its own); every node is a channel
(`meshvpn.channel`) in this process, from its own loopback source address (127.1.x.y),
registering with its endpoints as a node does after STUN and reading its whole peer map. After
that a node counts the frames it gets and decodes only those that may be the update the bench
waits for, so that the bench's own CPU does not set the pace. Prints: time until every node is
registered, until every peer update of the joins is delivered, the server's RSS and CPU for
that, and the time for one node's endpoint change to reach every peer in its network.
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
from meshvpn.channel import ClientChannel
from meshvpn.control import messages as m
from meshvpn.coord.peermap import PeerMapAssembler
from meshvpn.errors import MeshError, RemoteProtocolError

CONCURRENT_JOINS = 100
"""Connections in their handshake or registration at once (a realistic restart stampede)."""
NETWORK_BLOCK = ipaddress.ip_network("100.64.0.0/10")


@dataclass
class Watch:
    """Waiting for one peer update (a key and its new public endpoint) to reach `pending` nodes."""

    key: bytes
    endpoint: m.Endpoint
    pending: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_at: float = 0.0

    @property
    def needle(self) -> bytes:
        """Bytes every frame announcing the change contains (cheap to look for, then decoded)."""
        return f'"public_endpoint":"{self.endpoint}"'.encode()


class Bench:
    """What the simulated nodes received, for the whole run."""

    def __init__(self) -> None:
        self.received = 0
        self.watch: Watch | None = None
        self.failures: list[str] = []
        self.closing = False
        """The bench is closing every node: lost connections are expected."""


class SimNode(asyncio.Protocol):
    """One simulated node's channel: registers, takes its peer map, then counts what comes."""

    def __init__(self, bench: Bench, index: int, network: str, keepalive: float = 10.0) -> None:
        self.bench = bench
        self.index = index
        self.network = network
        self.identity = noise.StaticIdentity.from_private(keys.generate_private_key())
        self.keepalive = keepalive
        self.channel: ClientChannel | None = None
        self.transport: asyncio.Transport | None = None
        self.registered: asyncio.Future | None = None
        self._assembler = PeerMapAssembler()
        self._got_registered = False
        self._ping: asyncio.TimerHandle | None = None
        self.lost = False
        """The connection ended (a node the server dropped after joining gets no more updates)."""

    async def join(self, address, server_public: bytes, register: m.Register, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.channel = ClientChannel(self.identity, server_public, os.urandom(32), time.time())
        self.registered = loop.create_future()
        await asyncio.wait_for(
            loop.create_connection(lambda: self, *address, local_addr=source_address(self.index)), timeout
        )
        self.send(register)
        await asyncio.wait_for(asyncio.shield(self.registered), timeout)

    @property
    def joined(self) -> bool:
        return self.registered is not None and self.registered.done() and self.registered.exception() is None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.channel.receive_data(data)
        except RemoteProtocolError as exc:
            self._fail(f"channel error: {exc}")
            return
        self._flush()
        for payload in payloads:
            if self.joined:
                self._count(payload)
            elif not self.registered.done():
                self._registration(payload)

    def _registration(self, payload: bytes) -> None:
        message = m.decode(payload)
        if isinstance(message, m.Registered):
            self._got_registered = True
        elif isinstance(message, m.PeerMap) and self._got_registered:
            if self._assembler.add(message) is not None:
                self.registered.set_result(None)
                self._arm_ping()
        else:
            self.registered.set_exception(MeshError(f"unexpected {message.TYPE} while registering"))

    def _count(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"pong"'):
            return
        bench = self.bench
        bench.received += 1
        watch = bench.watch
        if watch is None or watch.needle not in payload:
            return
        message = m.decode(payload)
        if isinstance(message, m.PeerUpdate) and message.peer.key == watch.key:
            watch.pending -= 1
            if watch.pending == 0:
                watch.last_at = time.perf_counter()
                watch.done.set()

    def send(self, message: m.Message) -> None:
        self.channel.send(m.encode(message))
        self._flush()

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self._ping is not None:
            self._ping.cancel()
        self._fail(f"connection lost: {exc or 'closed by the server'}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, reason: str) -> None:
        if self.registered is not None and not self.registered.done():
            self.registered.set_exception(MeshError(reason))
        elif self.joined and not self.bench.closing:
            self.bench.failures.append(f"node-{self.index} after joining: {reason}")
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        data = self.channel.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _arm_ping(self) -> None:
        self._ping = asyncio.get_running_loop().call_later(self.keepalive, self._send_ping)

    def _send_ping(self) -> None:
        if not self.transport.is_closing():
            self.send(m.Ping())
            self._arm_ping()


def write_config(directory: Path, port: int, networks: int, per_network: int) -> Path:
    keys.write_private_key(directory / "coord.key")
    lines = [
        "private_key_file: coord.key", "database: coord.db", f"listen: 127.0.0.1:{port}",
        "stun_listen: 127.0.0.1:0", "admin_socket: admin.sock", "keepalive: 30s",
        "log:", "  level: warning", "networks:",
    ]
    prefix = min(20, 32 - (per_network + 3).bit_length())  # room for every node besides .0, .1 and broadcast
    for index, cidr in enumerate(NETWORK_BLOCK.subnets(new_prefix=prefix)):
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


async def join(node: SimNode, address, server_public: bytes, tokens: dict, gate: asyncio.Semaphore) -> None:
    register = m.Register(
        f"node-{node.index}", "bench", (m.Endpoint("10.0.0.1", 41641), m.Endpoint("192.168.1.10", 41641)),
        auth_key=tokens[node.network], public_endpoint=m.Endpoint("198.51.100.1", 20000 + node.index % 40000),
    )
    async with gate:
        try:
            await node.join(address, server_public, register, timeout=120)
        except (MeshError, OSError, asyncio.TimeoutError) as exc:
            node.bench.failures.append(f"node-{node.index}: {exc or type(exc).__name__}")
            node.close()


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


async def endpoint_change(bench: Bench, nodes: list[SimNode], mover: SimNode, round_: int) -> float:
    """Seconds from `mover` sending new endpoints until every online peer in its network has them."""
    new_public = m.Endpoint("203.0.113.7", 1000 + round_)
    peers = sum(1 for node in nodes if node.network == mover.network and node is not mover and not node.lost)
    bench.watch = watch = Watch(mover.identity.public, new_public, peers)
    started = time.perf_counter()
    mover.send(m.Endpoints(local=(m.Endpoint("10.0.0.1", 41641),), public=new_public))
    await asyncio.wait_for(watch.done.wait(), 300)
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
        config = write_config(directory, port, networks, args.per_network)
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
    bench = Bench()
    nodes = [SimNode(bench, i, f"net{i // args.per_network}") for i in range(args.nodes)]
    cpu_before, _, _ = process_usage(proc.pid)
    gate = asyncio.Semaphore(CONCURRENT_JOINS)
    started = time.perf_counter()
    await asyncio.gather(*(join(node, address, server_public, tokens, gate) for node in nodes))
    all_registered = time.perf_counter() - started
    joined = [node for node in nodes if node.joined]
    sizes = [sum(1 for n in joined if n.network == name) for name in tokens]
    expected = sum(n * (n - 1) // 2 for n in sizes)
    all_delivered = await wait_for_count(bench, expected) - started
    cpu_after, rss, peak = process_usage(proc.pid)
    print(f"nodes                       {args.nodes} in {networks} network(s) of up to {args.per_network}")
    print(f"all registered              {all_registered:.2f} s ({len(joined) / all_registered:.0f} joins/s)")
    if bench.failures:
        print(f"failures                    {len(bench.failures)}, e.g. {bench.failures[0]}, last {bench.failures[-1]}")
    print(f"all join updates delivered  {all_delivered:.2f} s ({expected} messages)")
    print(f"server CPU for the joins    {cpu_after - cpu_before:.2f} s")
    print(f"server RSS                  {rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB, "
          f"{rss * 1024 / args.nodes / 1024:.1f} KiB per node)", flush=True)
    online = [node for node in joined if not node.lost]
    changes = [await endpoint_change(bench, online, online[(7 * r) % len(online)], r) for r in range(args.rounds)]
    cpu_end, _, _ = process_usage(proc.pid)
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(f"endpoint change to all {max(sizes) - 1} peers: median {statistics.median(changes) * 1000:.1f} ms, "
          f"max {max(changes) * 1000:.1f} ms over {len(changes)} rounds "
          f"(server CPU {(cpu_end - cpu_after) / len(changes) * 1000:.0f} ms each)")
    print(f"bench process CPU           {own.ru_utime + own.ru_stime:.1f} s (clients' share of the machine)")
    bench.closing = True
    for node in joined:
        node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    parser.add_argument("--per-network", type=int, default=1000, help="nodes per network (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="endpoint changes to time (default 5)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
