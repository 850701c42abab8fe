"""`coord_scale`'s node worker processes and the bench's handle on them.

A worker (`serve`, run in a spawned process) owns the simulated nodes i with i mod W equal to
its number and answers the bench's commands, one pickled tuple each over a pipe, in order.
Commands that change something reply nothing; the others reply one object.
`Workers` is the bench's side: it asks every worker and adds up the answers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from meshvpn.bench.coord_nodes import TRACKED_HOST, UNTRACKED_HOST, Worker, join, rejoin
from meshvpn.bench.coord_servers import process_usage
from meshvpn.control import messages as m
from meshvpn.keys import encode_key

CONCURRENT_JOINS = 100
"""Nodes between TCP connect and `registered` at once (over all workers) in the cold start;
after a restart, `CONCURRENT_REJOINS`."""
CONCURRENT_REJOINS = 400
"""The same after a restart, where every node reconnects on its own jittered backoff: as many as
two worker processes (on a loaded 2-core machine) serve well within the coord's 10 s handshake
deadline."""


def serve(pipe: Connection, spec: dict[str, Any]) -> None:
    """A worker process: its nodes and its event loop, until the bench says `close`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(pipe, Worker(spec)))


_NO_REPLY = object()


async def _serve(pipe: Connection, worker: Worker) -> None:
    """Answer commands as they come; `join` and `rejoin` run on while others are answered, and
    every reply names its command, so a bench that stopped waiting for one is not misled."""
    commands: asyncio.Queue = asyncio.Queue()
    asyncio.get_running_loop().add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    running: set[asyncio.Task] = set()
    while True:
        command, *args = await commands.get()
        if command == "close":
            worker.closing = True
            for task in running:
                task.cancel()
            for node in worker.nodes:
                node.close()
            await asyncio.sleep(0.2)
            pipe.send((command, None))
            return
        if command in ("join", "rejoin"):
            task = asyncio.create_task(_answer(pipe, worker, command, args))
            running.add(task)
            task.add_done_callback(running.discard)
        else:
            await _answer(pipe, worker, command, args)


async def _answer(pipe: Connection, worker: Worker, command: str, args: list) -> None:
    reply = await _command(worker, command, args)
    if reply is not _NO_REPLY:
        pipe.send((command, reply))


async def _command(worker: Worker, command: str, args: list) -> Any:
    """Carry out one command; what to reply, or `_NO_REPLY`."""
    if command == "join":
        gate = asyncio.Semaphore(args[0])
        await asyncio.gather(*(join(node, gate) for node in worker.nodes))
        return sum(1 for node in worker.nodes if node.joined)
    if command == "rejoin":
        deadline, gate = time.monotonic() + args[0], asyncio.Semaphore(args[1])
        await asyncio.gather(*(rejoin(node, deadline, gate) for node in worker.live()))
        return sum(1 for node in worker.live())
    if command == "live":
        return [(node.index, node.network) for node in worker.live()]
    if command == "missing":
        live = args[0]
        return sum(1 for node in worker.live() if node.online_peers < live[node.network] - 1)
    if command == "receipts":
        receipts, worker.receipts = worker.receipts, {}
        removed, worker.removed = worker.removed, [0, 0.0]
        return receipts, removed
    if command == "change":
        index, tracked, port = args
        host = TRACKED_HOST if tracked else UNTRACKED_HOST
        worker.by_index[index].send(m.Endpoints(local=(m.Endpoint("10.0.0.1", 41641),), public=m.Endpoint(host, port)))
        return _NO_REPLY
    if command == "key":
        return encode_key(worker.by_index[args[0]].identity.public).encode()
    if command == "bytes":
        return worker.payload_bytes
    if command == "doomed":
        worker.by_index[args[0]].doomed = True
        return _NO_REPLY
    if command == "removal":
        key, victim = args
        worker.removal = key
        if victim in worker.by_index:
            worker.by_index[victim].revoked = worker.by_index[victim].lost = True
        return True
    if command == "reconnecting":
        worker.reconnecting = args[0]
        return _NO_REPLY
    if command == "report":
        own = resource.getrusage(resource.RUSAGE_SELF)
        return worker.frames, worker.failures, own.ru_utime + own.ru_stime
    raise ValueError(f"unknown command {command!r}")


def _reply(pipe: Connection, command: str) -> Any:
    """The reply to `command`, skipping replies to commands the bench stopped waiting for."""
    while True:
        answered, reply = pipe.recv()
        if answered == command:
            return reply


class Workers:
    """The node worker processes of one run, node i in worker i mod W."""

    def __init__(self, count: int, spec: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for number in range(count):
            ours, theirs = context.Pipe()
            own = dict(spec, indices=range(number, spec["nodes"], count))
            process = context.Process(target=serve, args=(theirs, own), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        self._lock = asyncio.Lock()

    def owner(self, index: int) -> Connection:
        return self.pipes[index % len(self.pipes)]

    def tell(self, pipe: Connection, *command: Any) -> None:
        pipe.send(command)

    def tell_all(self, *command: Any) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    async def ask(self, pipe: Connection, *command: Any) -> Any:
        async with self._lock:
            pipe.send(command)
            return await asyncio.to_thread(_reply, pipe, command[0])

    async def ask_all(self, *command: Any) -> list[Any]:
        async with self._lock:
            for pipe in self.pipes:
                pipe.send(command)
            return await asyncio.gather(*(asyncio.to_thread(_reply, pipe, command[0]) for pipe in self.pipes))

    def cpu(self) -> float:
        """CPU seconds the workers took so far."""
        total = 0.0
        for process in self.processes:
            if process.is_alive():
                total += process_usage(process.pid)[0]
        return total

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ask_all("close"), 30)
        except (asyncio.TimeoutError, OSError, EOFError):
            pass  # a worker that does not answer is killed below
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
