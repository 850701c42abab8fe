"""Coordination server at scale: N simulated nodes against a real `meshvpn coord` process.

Run: ``nice .venv/bin/python -m meshvpn.bench.coord_scale [--nodes 1000] [--per-network 1000]``.

The server runs as a child process (so its RSS and CPU are its own, `coord_servers`); the
nodes run in ``--workers`` processes of their own (`coord_nodes`, `coord_workers`), so that
their reading does not set the pace. Nodes take `peer_delta` in the format ``--delta-format``
names (default 2, field-level changes; 1, whole peer infos; 0, one frame per change). Phases, each with the server's CPU and RSS, the workers' CPU, the
load average and the fan-out's rounds in it (how long they waited and took, from each instance's
metrics endpoint):

1. cold start: every node joins (at most 100 between TCP connect and `registered` at once) and
   the time until every node's view has all its peers online;
2. churn: ``--churn`` of the nodes (default 1 %) send new endpoints each second for
   ``--churn-seconds``; for a sample of the changes (at most ``--tracked`` a second), the time
   until every online peer has it (p50, p99, max); halfway through, one node (that does not
   change) is revoked through the admin socket, and the time until every peer was told to
   remove it, under the churn;
3. revocation: another node revoked the same way with nothing else going on;
4. restart (last, as it takes longest): SIGTERM, a fresh server process on the same database,
   every node reconnecting at once with the node's jittered backoff
   (`meshvpn.node.coordlink.backoff_delay`; at most 400 between TCP connect and `registered` at
   once, as the worker processes cannot send thousands of handshakes within the coord's 10 s
   deadline), and the time until every view is whole again.

With ``--instances N --database postgresql://...`` (or ``--database throwaway``: a temporary
PostgreSQL from `meshvpn.lab.postgres`, as root) N instances share the database and node i
connects to instance i mod N, so every change must cross between instances through PostgreSQL;
the revoked node is on the last instance and the revocation goes through the first. Server CPU
and RSS are then the sums over the instances.

Nothing is asserted: it prints figures. ``--timeout`` bounds the whole run. With
``MESHVPN_BENCH_PROFILE=DIR`` in the environment every coord process runs under cProfile and
writes ``DIR/coordI-N.prof`` (instance I, its N-th start) when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from meshvpn import keys
from meshvpn.bench.coord_servers import Coords, Phase, Server, free_tcp_port, write_config
from meshvpn.bench.coord_workers import CONCURRENT_JOINS, CONCURRENT_REJOINS, Workers
from meshvpn.control import messages as m
from meshvpn.lab.postgres import throwaway_postgres
from meshvpn.localsock import request

_FORMATS = {0: "one frame per change", 1: "taking peer_delta with whole peer infos",
            2: "taking peer_delta with field-level changes"}
POLL = 0.1
"""Seconds between the bench's questions to the workers while it waits for something."""


@dataclass
class Watch:
    """One change on its way to `pending` nodes."""

    started: float
    pending: int
    took: float | None = None

    def reached(self, count: int, last: float) -> None:
        self.pending -= count
        if self.pending <= 0 and self.took is None:
            self.took = last - self.started


class Run:
    """The coord instances, the node workers and what the phases share."""

    def __init__(self, args, server: Coords, workers: Workers) -> None:
        self.args, self.server, self.workers = args, server, workers

    def phase(self, name: str) -> Phase:
        return Phase(self.server, name, self.workers.cpu)

    async def live(self) -> dict[int, str]:
        """Node index → network of every node joined and not lost."""
        return {index: network for part in await self.workers.ask_all("live") for index, network in part}

    async def views_complete(self, started: float) -> tuple[float, int]:
        """Seconds from `started` until every live node's view has all its live peers online, or
        (when that stops progressing for --quiet seconds) until then; and how many views lack peers."""
        live: dict[str, int] = {}
        for network in (await self.live()).values():
            live[network] = live.get(network, 0) + 1
        last, last_change = -1, time.perf_counter()
        while True:
            missing = sum(await self.workers.ask_all("missing", live))
            now = time.perf_counter()
            if missing == 0:
                return now - started, 0
            if missing != last:
                last, last_change = missing, now
            elif now - last_change > self.args.quiet:
                return last_change - started, missing
            await asyncio.sleep(POLL)

    async def follow(self, watches: dict[int, Watch], removal: Watch | None, until: float) -> None:
        """Add the workers' receipts to `watches` (by port) and `removal` until all are done or `until`."""
        while time.perf_counter() < until:
            for receipts, (removed, last) in await self.workers.ask_all("receipts"):
                for port, (count, seen) in receipts.items():
                    if port in watches:
                        watches[port].reached(count, seen)
                if removal is not None and removed:
                    removal.reached(removed, last)
            if all(w.took is not None for w in watches.values()) and (removal is None or removal.took is not None):
                return
            await asyncio.sleep(POLL)


async def cold_start(run: Run, nodes: int) -> None:
    phase = run.phase("cold start")
    started = time.perf_counter()
    gate = max(1, CONCURRENT_JOINS // len(run.workers.pipes))
    joined = sum(await run.workers.ask_all("join", gate))
    registered = time.perf_counter() - started
    whole, missing = await run.views_complete(started)
    phase.report(f"{joined} of {nodes} registered in {registered:.1f} s, every view whole at {whole:.1f} s"
                 + (f" ({missing} views still missing peers)" if missing else ""))


async def restart(run: Run) -> None:
    run.workers.tell_all("reconnecting", True)
    run.server.stop()
    await asyncio.sleep(1.0)  # every node has seen its connection drop
    phase = run.phase("restart")
    started = time.perf_counter()
    await run.server.start()
    listening = time.perf_counter() - started
    gate = max(1, CONCURRENT_REJOINS // len(run.workers.pipes))
    rejoined = sum(await run.workers.ask_all("rejoin", run.args.quiet + 600, gate))
    registered = time.perf_counter() - started
    run.workers.tell_all("reconnecting", False)
    whole, missing = await run.views_complete(started)
    phase.report(f"listening after {listening:.1f} s, {rejoined} re-registered in {registered:.1f} s, every view "
                 f"whole at {whole:.1f} s" + (f" ({missing} views still missing peers)" if missing else ""))


async def churn(run: Run) -> None:
    """`--churn` of the nodes change endpoints every second; time a sample of the changes, and
    halfway through revoke a node (not one that changes) and time its removal under the churn."""
    args = run.args
    live = await run.live()
    victim = pick_victim(run, live, 3)
    online = sorted(index for index in live if index != victim)
    sizes = {network: list(live.values()).count(network) for network in set(live.values())}
    per_second = max(1, round(len(online) * args.churn))
    tracked_every = max(1, -(-per_second // args.tracked))
    key = await run.workers.ask(run.workers.owner(victim), "key", victim)
    run.workers.tell(run.workers.owner(victim), "doomed", victim)
    sizes[live[victim]] -= 1  # the peers a change must reach: neither its mover nor the victim
    read_before = sum(await run.workers.ask_all("bytes"))
    phase = run.phase("churn")
    watches: dict[int, Watch] = {}
    removal: Watch | None = None
    revoked: asyncio.Task | None = None
    changes = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.churn_seconds:
        due = int((time.perf_counter() - started) * per_second)
        while changes < due:
            mover = online[(changes * 7919) % len(online)]
            tracked = changes % tracked_every == 0
            port = 1024 + changes % 64000
            if tracked:
                watches[port] = Watch(time.perf_counter(), sizes[live[mover]] - 1)
            run.workers.tell(run.workers.owner(mover), "change", mover, tracked, port)
            changes += 1
        if revoked is None and time.perf_counter() - started >= args.churn_seconds / 2:
            await run.workers.ask_all("removal", key, victim)  # acknowledged: busy workers read it late
            removal = Watch(time.perf_counter(), sizes[live[victim]])
            revoked = asyncio.create_task(admin_revoke(run, victim))
        await run.follow(watches, removal, time.perf_counter() + 0.05)
    await run.follow(watches, removal, time.perf_counter() + args.quiet)
    took = sorted(w.took for w in watches.values() if w.took is not None)
    read = (sum(await run.workers.ask_all("bytes")) - read_before) / 1e6
    if not took:
        phase.report(f"{changes} changes, none of the {len(watches)} timed reached every peer; {read:.0f} MB read")
        return
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    revocation = "" if revoked is None else "; revoked halfway: " + reach(removal, *await revoked, args.quiet)
    phase.report(f"{changes} changes ({per_second}/s for {args.churn_seconds:.0f} s), {len(took)} of {len(watches)} "
                 f"timed reached every peer: p50 {statistics.median(took) * 1000:.0f} ms, "
                 f"p99 {p99 * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms{revocation}; nodes read {read:.0f} MB")


def pick_victim(run: Run, live: dict[int, str], share: int) -> int:
    """A node connected to the last instance, `1/share` of the way through them."""
    instances = len(run.server.servers)
    candidates = sorted(index for index in live if index % instances == instances - 1)
    return candidates[len(candidates) // share]


async def admin_revoke(run: Run, victim: int) -> tuple[float, dict]:
    """Revoke node `victim` through instance 0's admin socket: how long the answer took, and the answer."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_unix_connection(str(run.server.admin_socket))
    writer.write(json.dumps({"cmd": "node_revoke", "node": f"node-{victim}"}).encode() + b"\n")
    answer = json.loads(await reader.readline())
    writer.close()
    return time.perf_counter() - started, answer


def reach(watch: Watch, answered: float, answer: dict, quiet: float) -> str:
    """How a revocation went: the admin's answer and the time until every peer was told."""
    told = (f"every peer told in {watch.took * 1000:.0f} ms" if watch.took is not None
            else f"{watch.pending} peers not told after {quiet:.0f} s")
    error = f" (admin error: {answer['error']})" if "error" in answer else ""
    return f"admin answered in {answered * 1000:.0f} ms{error}, {told}"


async def revocation(run: Run) -> None:
    """Revoke through instance 0 a node connected to the last instance, with nothing else going on."""
    live = await run.live()
    victim = pick_victim(run, live, 2)
    peers = sum(1 for index, network in live.items() if network == live[victim] and index != victim)
    key = await run.workers.ask(run.workers.owner(victim), "key", victim)
    phase = run.phase("revocation")
    await run.workers.ask_all("removal", key, victim)
    watch = Watch(time.perf_counter(), peers)
    answered, answer = await admin_revoke(run, victim)
    await run.follow({}, watch, time.perf_counter() + run.args.quiet)
    phase.report(reach(watch, answered, answer, run.args.quiet))


async def run_all(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the coord processes inherit it
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
        port, metrics_port = free_tcp_port(), free_tcp_port()
        config = write_config(directory, index, port, database, networks, args.per_network, metrics_port)
        servers.append(Server(directory, config, port, index, metrics_port))
    server = Coords(servers)
    workers: Workers | None = None
    frames, failures = 0, []
    try:
        await server.start()
        workers = Workers(args.workers, {
            "nodes": args.nodes, "per_network": args.per_network, "delta_format": args.delta_format,
            "ports": server.ports(), "tokens": create_tokens(server, networks),
            "server_public": keys.public_key(keys.read_private_key(directory / "coord.key")),
        })
        print(f"nodes        {args.nodes} in {networks} network(s) of up to {args.per_network}, "
              f"{_FORMATS[args.delta_format]}, "
              f"{len(server.servers)} coord instance(s) on {'PostgreSQL' if args.database else 'SQLite'}, "
              f"{args.workers} node worker process(es)", flush=True)
        await asyncio.wait_for(measure(Run(args, server, workers)), args.timeout)
    except asyncio.TimeoutError:
        print(f"stopped at the --timeout of {args.timeout:.0f} s")
    finally:
        if workers is not None:
            with contextlib.suppress(asyncio.TimeoutError, OSError, EOFError):
                reports = await asyncio.wait_for(workers.ask_all("report"), 60)
                frames = sum(frames for frames, _, _ in reports)
                failures = [failure for _, worker_failures, _ in reports for failure in worker_failures]
                cpu = sum(cpu for _, _, cpu in reports)
                print(f"node workers CPU {cpu:.1f} s (the clients' share of the machine); frames counted {frames}")
            await workers.close()
        server.stop()
        if failures:
            print(f"failures {len(failures)}, e.g. {failures[0]}; last {failures[-1]}")
        problems = server.problems()
        if problems:
            print(f"server warnings and errors: {len(problems)}, first ones:\n  " + "\n  ".join(problems[:5]))


def create_tokens(server: Coords, networks: int) -> dict[str, str]:
    """A reusable pre-auth key per network, through the admin socket, before any node runs."""
    tokens = {}
    for index in range(networks):
        create = {"cmd": "key_create", "network": f"net{index}", "reusable": True, "ephemeral": False, "expires": None}
        answer = list(request(str(server.admin_socket), create))[-1]
        tokens[f"net{index}"] = answer["token"]
    return tokens


async def measure(run: Run) -> None:
    await cold_start(run, run.args.nodes)
    if run.args.churn_seconds > 0:
        await churn(run)
    await revocation(run)
    if not run.args.no_restart:
        await restart(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    parser.add_argument("--per-network", type=int, default=1000, help="nodes per network (default 1000)")
    parser.add_argument("--delta-format", type=int, choices=sorted(_FORMATS), default=m.DELTA_VERSION,
                        help="the peer_delta format nodes take: 2 field-level changes (default), 1 whole "
                             "peer infos, 0 none (one frame per change)")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart phase")
    parser.add_argument("--churn", type=float, default=0.01, help="share of nodes changing endpoints per second")
    parser.add_argument("--churn-seconds", type=float, default=20.0, help="length of the churn phase (0: none)")
    parser.add_argument("--tracked", type=int, default=10, help="endpoint changes timed per second at most")
    parser.add_argument("--quiet", type=float, default=60.0,
                        help="seconds without progress after which a phase gives up (default 60)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on the whole run (default 1800 s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes the simulated nodes run in (default: the CPUs, at most 4)")
    parser.add_argument("--instances", type=int, default=1, help="coord instances; node i uses instance i mod N")
    parser.add_argument("--database", default="",
                        help="a postgresql:// URI the instances share, or 'throwaway' for a temporary PostgreSQL "
                             "(needs root; meshvpn.lab.postgres); default: one SQLite file")
    asyncio.run(run_all(parser.parse_args()))


if __name__ == "__main__":
    main()
