"""Coordination server at scale: N simulated nodes against a real `meshvpn coord` process.

Run: ``nice .venv/bin/python -m meshvpn.bench.coord_scale [--nodes 1000] [--per-network 1000]``.

The server runs as a child process (so its RSS and CPU are its own); every node is a channel
(`meshvpn.channel`) in this process, from its own loopback source address (127.1.x.y),
registering with its endpoints as a node does after STUN. Nodes register with `deltas` (as a
node that applies `peer_delta` does; ``--legacy-nodes``: without, one frame per change) and do
not decode what they get: each keeps the number of peers it knows online from the ``"online"``
flags in its peer map and in every update or delta after it, which is cheap enough that the
bench's own CPU does not set the pace. Phases, each with the server's CPU and RSS:

1. cold start: every node joins (at most 100 in their handshake or registration at once) and
   the time until every node's view has all its peers online;
2. churn: ``--churn`` of the nodes (default 1 %) send new endpoints each second for
   ``--churn-seconds``; for a sample of the changes (at most ``--tracked`` a second), the time
   until every online peer has it (p50, p99, max);
3. revocation: one node revoked through the admin socket, and the time until every peer was
   told to remove it;
4. restart (last, as it takes longest): SIGTERM, a fresh server process on the same database,
   every node reconnecting at once with the node's jittered backoff
   (`meshvpn.node.coordlink.backoff_delay`), and the time until every view is whole again.

With ``--instances N --database postgresql://...`` (or ``--database throwaway``: a temporary
PostgreSQL from `meshvpn.lab.postgres`, as root) N instances share the database and node i
connects to instance i mod N, so every change must cross between instances through PostgreSQL;
the revoked node is on the last instance and the revocation goes through the first. Server CPU
and RSS are then the sums over the instances.

Nothing is asserted: it prints figures. ``--timeout`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import re
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
from meshvpn.errors import MeshError, RemoteProtocolError
from meshvpn.lab.postgres import throwaway_postgres
from meshvpn.localsock import request
from meshvpn.node.coordlink import CONNECT_TIMEOUT, backoff_delay

CONCURRENT_JOINS = 100
"""Connections in their handshake or registration at once during the cold start."""
REGISTRATION_TIMEOUT = 120.0
"""Seconds a node waits for `registered` and its whole peer map before it gives up."""
NETWORK_BLOCK = ipaddress.ip_network("100.64.0.0/10")
TRACKED_HOST = "203.0.113.9"
"""Endpoint changes the bench times use this host; the others use UNTRACKED_HOST."""
UNTRACKED_HOST = "203.0.113.7"
_TRACKED = re.compile(rb'"public_endpoint":"203\.0\.113\.9:(\d+)"')


@dataclass
class Watch:
    """One change on its way to `pending` nodes."""

    started: float
    pending: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    took: float | None = None

    def reached(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.took = time.perf_counter() - self.started
            self.done.set()


class Bench:
    """What the simulated nodes received, for the whole run."""

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.frames = 0
        self.changes: dict[int, Watch] = {}
        """Tracked endpoint changes by the port of their new public endpoint."""
        self.removal: tuple[bytes, Watch] | None = None
        """The base64 key of a revoked node and its watch."""
        self.failures: list[str] = []
        self.reconnecting = False
        """The server restarts: lost connections reconnect with backoff."""
        self.closing = False
        """The bench is closing every node: lost connections are expected."""

    def fail(self, text: str) -> None:
        self.failures.append(text)


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
        self.online_peers = 0
        """Peers this node's view has online: from its map, then every update and delta."""
        self._map_online = 0
        self._got_registered = False
        self._ping: asyncio.TimerHandle | None = None
        self.lost = False
        """The connection ended and is not coming back (revoked, or gave up)."""
        self.revoked = False

    async def join(self, address, server_public: bytes, register: m.Register) -> None:
        loop = asyncio.get_running_loop()
        self.channel = ClientChannel(self.identity, server_public, os.urandom(32), time.time())
        self.registered = loop.create_future()
        self._got_registered, self._map_online = False, 0
        await asyncio.wait_for(
            loop.create_connection(lambda: self, *address, local_addr=source_address(self.index)), CONNECT_TIMEOUT
        )
        self.send(register)
        await asyncio.wait_for(asyncio.shield(self.registered), REGISTRATION_TIMEOUT)

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
        if payload.startswith(b'{"type":"peer_map"') and self._got_registered:
            self._map_online += payload.count(b'"online":true')
            tail = payload[-32:]
            if b'"part":' not in tail or tail.endswith(b'"last":true}'):
                self.online_peers = self._map_online
                self.registered.set_result(None)
                self._arm_ping()
            return
        message = m.decode(payload)
        if isinstance(message, m.Registered):
            self._got_registered = True
        else:
            self.registered.set_exception(MeshError(f"unexpected {message.TYPE} while registering"))

    def _count(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"pong"'):
            return
        bench = self.bench
        bench.frames += 1
        self.online_peers += payload.count(b'"online":true') - payload.count(b'"online":false')
        if bench.changes and b'"public_endpoint":"203.0.113.9:' in payload:
            for port in _TRACKED.findall(payload):
                watch = bench.changes.get(int(port))
                if watch is not None:
                    watch.reached()
        if bench.removal is not None:
            key, watch = bench.removal
            removed_at = payload.find(b'"removed":[')
            if (payload.startswith(b'{"type":"peer_remove"') and key in payload) or (
                    removed_at >= 0 and payload.find(key, removed_at) >= 0):
                watch.reached()

    def send(self, message: m.Message) -> None:
        self.channel.send(m.encode(message))
        self._flush()

    def connection_lost(self, exc) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self.joined and self.bench.reconnecting and not self.revoked:
            return
        self._fail(f"connection lost: {exc or 'closed by the server'}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, reason: str) -> None:
        if self.registered is not None and not self.registered.done():
            self.registered.set_exception(MeshError(reason))
            self.registered.exception()  # a join that already timed out no longer awaits it
        elif self.joined and not self.bench.closing and not self.revoked:
            self.lost = True
            self.bench.fail(f"node-{self.index} after joining: {reason}")
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


def write_config(directory: Path, index: int, port: int, database: str, networks: int, per_network: int) -> Path:
    """Instance `index`'s config: the shared key and database, its own port and admin socket."""
    if not (directory / "coord.key").exists():
        keys.write_private_key(directory / "coord.key")
    lines = [
        "private_key_file: coord.key", f"database: {json.dumps(database)}", f"listen: 127.0.0.1:{port}",
        "stun_listen: 127.0.0.1:0", f"admin_socket: admin{index}.sock", "keepalive: 30s",
        "log:", "  level: warning", "networks:",
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


def source_address(index: int) -> tuple[str, int]:
    """A loopback source address per node, so the per-address connection cap does not apply."""
    return (f"127.1.{index // 250}.{index % 250 + 1}", 0)


def register_message(node: SimNode, token: str) -> m.Register:
    return m.Register(
        f"node-{node.index}", "bench", (m.Endpoint("10.0.0.1", 41641), m.Endpoint("192.168.1.10", 41641)),
        auth_key=token, public_endpoint=m.Endpoint("198.51.100.1", 20000 + node.index % 40000),
        **({} if node.bench.legacy else {"deltas": True}),
    )


async def join(node: SimNode, address, server_public: bytes, token: str, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            await node.join(address, server_public, register_message(node, token))
        except (MeshError, OSError, asyncio.TimeoutError) as exc:
            node.bench.fail(f"node-{node.index}: {exc or type(exc).__name__}")
            node.close()


async def rejoin(node: SimNode, address, server_public: bytes, token: str, deadline: float) -> None:
    """Reconnect as the node does after losing the coord: jittered, doubling backoff."""
    failures = 0
    while time.monotonic() < deadline:
        failures += 1
        await asyncio.sleep(backoff_delay(failures, random.random()))
        try:
            await node.join(address, server_public, register_message(node, token))
            return
        except (MeshError, OSError, asyncio.TimeoutError):
            node.close()
    node.lost = True
    node.bench.fail(f"node-{node.index}: gave up reconnecting")


async def views_complete(nodes: list[SimNode], started: float, quiet: float) -> tuple[float, int]:
    """Seconds from `started` until every joined node's view has all its live peers online, or
    (when that stops progressing for `quiet` seconds) until then; and how many views lack peers."""
    live: dict[str, int] = {}
    for node in nodes:
        if node.joined and not node.lost:
            live[node.network] = live.get(node.network, 0) + 1
    last, last_change = -1, time.perf_counter()
    while True:
        missing = sum(1 for node in nodes if node.joined and not node.lost and node.online_peers < live[node.network] - 1)
        now = time.perf_counter()
        if missing == 0:
            return now - started, 0
        if missing != last:
            last, last_change = missing, now
        elif now - last_change > quiet:
            return last_change - started, missing
        await asyncio.sleep(0.1)


class Server:
    """One `meshvpn coord` child process, started again for the restart."""

    def __init__(self, directory: Path, config: Path, port: int, index: int) -> None:
        self.directory, self.config, self.port, self.index = directory, config, port, index
        self.proc: subprocess.Popen | None = None
        self.cpu_spent = 0.0
        """CPU seconds of the processes before the current one."""

    async def start(self) -> None:
        with (self.directory / f"coord{self.index}.log").open("a") as server_log:
            self.proc = subprocess.Popen([sys.executable, "-m", "meshvpn", "coord", "-c", str(self.config)],
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

    def address(self, node: SimNode) -> tuple[str, int]:
        return ("127.0.0.1", self.servers[node.index % len(self.servers)].port)

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


class Phase:
    """Prints one phase's figures with the server CPU it took and its RSS."""

    def __init__(self, server: Coords, name: str) -> None:
        self.server, self.name = server, name
        self.cpu_before, _, _ = server.usage()

    def report(self, text: str) -> None:
        cpu, rss, peak = self.server.usage()
        print(f"{self.name:<12} {text}; server CPU {cpu - self.cpu_before:.1f} s, "
              f"RSS {rss / 1024:.0f} MiB (peak {peak / 1024:.0f} MiB)", flush=True)


async def cold_start(args, bench: Bench, server: Coords, nodes: list[SimNode], tokens: dict, public) -> None:
    phase = Phase(server, "cold start")
    gate = asyncio.Semaphore(CONCURRENT_JOINS)
    started = time.perf_counter()
    await asyncio.gather(*(join(node, server.address(node), public, tokens[node.network], gate) for node in nodes))
    registered = time.perf_counter() - started
    whole, missing = await views_complete(nodes, started, args.quiet)
    joined = sum(1 for node in nodes if node.joined)
    phase.report(f"{joined} of {len(nodes)} registered in {registered:.1f} s, every view whole at {whole:.1f} s"
                 + (f" ({missing} views still missing peers)" if missing else ""))


async def restart(args, bench: Bench, server: Coords, nodes: list[SimNode], tokens: dict, public) -> None:
    bench.reconnecting = True
    server.stop()
    await asyncio.sleep(1.0)  # every node has seen its connection drop
    phase = Phase(server, "restart")
    started = time.perf_counter()
    await server.start()
    listening = time.perf_counter() - started
    deadline = time.monotonic() + args.quiet + 600
    await asyncio.gather(*(rejoin(node, server.address(node), public, tokens[node.network], deadline)
                           for node in nodes if node.joined and not node.lost))
    registered = time.perf_counter() - started
    bench.reconnecting = False
    whole, missing = await views_complete(nodes, started, args.quiet)
    phase.report(f"listening after {listening:.1f} s, all re-registered {registered:.1f} s, every view whole at "
                 f"{whole:.1f} s" + (f" ({missing} views still missing peers)" if missing else ""))


async def churn(args, bench: Bench, server: Coords, nodes: list[SimNode]) -> None:
    """`args.churn` of the nodes change endpoints every second; time a sample of the changes."""
    online = [node for node in nodes if node.joined and not node.lost]
    per_second = max(1, round(len(online) * args.churn))
    tracked_every = max(1, -(-per_second // args.tracked))
    phase = Phase(server, "churn")
    watches, tick, port = [], 0.05, 1024
    changes = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.churn_seconds:
        due = int((time.perf_counter() - started) * per_second)
        while changes < due:
            mover = online[(changes * 7919) % len(online)]
            tracked = changes % tracked_every == 0
            port = 1024 + changes % 64000
            if tracked:
                peers = sum(1 for n in online if n.network == mover.network and n is not mover and not n.lost)
                bench.changes[port] = watch = Watch(time.perf_counter(), peers)
                watches.append(watch)
            host = TRACKED_HOST if tracked else UNTRACKED_HOST
            mover.send(m.Endpoints(local=(m.Endpoint("10.0.0.1", 41641),), public=m.Endpoint(host, port)))
            changes += 1
        await asyncio.sleep(tick)
    try:
        await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watches)), args.quiet)
    except asyncio.TimeoutError:
        pass
    bench.changes.clear()
    took = sorted(w.took for w in watches if w.took is not None)
    if not took:
        phase.report(f"{changes} changes, none of the {len(watches)} timed reached every peer")
        return
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    phase.report(f"{changes} changes ({per_second}/s for {args.churn_seconds:.0f} s), {len(took)} of {len(watches)} "
                 f"timed reached every peer: p50 {statistics.median(took) * 1000:.0f} ms, "
                 f"p99 {p99 * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms")


async def revocation(args, bench: Bench, server: Coords, nodes: list[SimNode]) -> None:
    """Revoke through instance 0 a node connected to the last instance."""
    online = [node for node in nodes if node.joined and not node.lost]
    last = len(server.servers) - 1
    candidates = [node for node in online if node.index % len(server.servers) == last]
    victim = candidates[len(candidates) // 2]
    peers = sum(1 for n in online if n.network == victim.network and n is not victim)
    phase = Phase(server, "revocation")
    victim.revoked = victim.lost = True
    watch = Watch(time.perf_counter(), peers)
    bench.removal = (keys.encode_key(victim.identity.public).encode(), watch)
    reader, writer = await asyncio.open_unix_connection(str(server.admin_socket))
    writer.write(json.dumps({"cmd": "node_revoke", "node": f"node-{victim.index}"}).encode() + b"\n")
    answer = json.loads(await reader.readline())
    answered = time.perf_counter() - watch.started
    writer.close()
    try:
        await asyncio.wait_for(watch.done.wait(), args.quiet)
        reach = f"every peer told in {watch.took * 1000:.0f} ms"
    except asyncio.TimeoutError:
        reach = f"{watch.pending} of {peers} peers not told after {args.quiet:.0f} s"
    bench.removal = None
    error = f" (admin error: {answer['error']})" if "error" in answer else ""
    phase.report(f"admin answered in {answered * 1000:.0f} ms{error}, {reach}")


async def run(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.nodes + 100:
        raise SystemExit(f"the open-file limit {hard} is too low for {args.nodes} nodes")
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coord-scale-")))
        database = args.database
        if database == "throwaway":
            database = stack.enter_context(throwaway_postgres())
        await run_on(args, directory, database or str(directory / "coord.db"))


async def run_on(args, directory: Path, database: str) -> None:
    networks = -(-args.nodes // args.per_network)
    servers = []
    for index in range(args.instances):
        port = free_tcp_port()
        config = write_config(directory, index, port, database, networks, args.per_network)
        servers.append(Server(directory, config, port, index))
    server_public = keys.public_key(keys.read_private_key(directory / "coord.key"))
    server = Coords(servers)
    bench = Bench(args.legacy_nodes)
    nodes: list[SimNode] = []
    try:
        await server.start()
        await asyncio.wait_for(measure(args, bench, server, nodes, server_public, networks), args.timeout)
    except asyncio.TimeoutError:
        print(f"stopped at the --timeout of {args.timeout:.0f} s")
    finally:
        bench.closing = True
        for node in nodes:
            node.close()
        server.stop()
        own = resource.getrusage(resource.RUSAGE_SELF)
        print(f"bench process CPU {own.ru_utime + own.ru_stime:.1f} s (the clients' share of the machine); "
              f"frames counted {bench.frames}")
        if bench.failures:
            print(f"failures {len(bench.failures)}, e.g. {bench.failures[0]}; last {bench.failures[-1]}")
        problems = server.problems()
        if problems:
            print(f"server warnings and errors: {len(problems)}, first ones:\n  " + "\n  ".join(problems[:5]))


async def measure(args, bench: Bench, server: Coords, nodes: list[SimNode], public: bytes, networks: int) -> None:
    tokens = {}
    for index in range(networks):  # through the admin socket, before any node runs (it blocks)
        create = {"cmd": "key_create", "network": f"net{index}", "reusable": True, "ephemeral": False, "expires": None}
        answer = list(request(str(server.admin_socket), create))[-1]
        tokens[f"net{index}"] = answer["token"]
    nodes.extend(SimNode(bench, i, f"net{i // args.per_network}") for i in range(args.nodes))
    print(f"nodes        {args.nodes} in {networks} network(s) of up to {args.per_network}, "
          f"{'legacy (one frame per change)' if args.legacy_nodes else 'taking peer_delta'}, "
          f"{len(server.servers)} coord instance(s) on {'PostgreSQL' if args.database else 'SQLite'}", flush=True)
    await cold_start(args, bench, server, nodes, tokens, public)
    if args.churn_seconds > 0:
        await churn(args, bench, server, nodes)
    await revocation(args, bench, server, nodes)
    if not args.no_restart:
        await restart(args, bench, server, nodes, tokens, public)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    parser.add_argument("--per-network", type=int, default=1000, help="nodes per network (default 1000)")
    parser.add_argument("--legacy-nodes", action="store_true", help="nodes register without deltas")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart phase")
    parser.add_argument("--churn", type=float, default=0.01, help="share of nodes changing endpoints per second")
    parser.add_argument("--churn-seconds", type=float, default=20.0, help="length of the churn phase (0: none)")
    parser.add_argument("--tracked", type=int, default=10, help="endpoint changes timed per second at most")
    parser.add_argument("--quiet", type=float, default=60.0,
                        help="seconds without progress after which a phase gives up (default 60)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on the whole run (default 1800 s)")
    parser.add_argument("--instances", type=int, default=1, help="coord instances; node i uses instance i mod N")
    parser.add_argument("--database", default="",
                        help="a postgresql:// URI the instances share, or 'throwaway' for a temporary PostgreSQL "
                             "(needs root; meshvpn.lab.postgres); default: one SQLite file")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
