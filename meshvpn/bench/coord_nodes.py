"""The node side of `coord_scale`: simulated nodes, run by worker processes the bench drives.

Each simulated node is a channel (`meshvpn.channel`) from its own loopback source address
(127.1.x.y), registering with its endpoints as a node does after STUN, taking the `peer_delta`
format the bench names (`--delta-format`: 2, field-level changes, as a node does; 1, whole peer
infos, as the release before; 0, one frame per change). Nodes do not decode what they get: each
keeps the number of peers it knows online from the ``"online"`` flags in its peer map and in
every update or delta after it (a field-level change names `online` only when it changed), and
counts the tracked changes it sees.

With 10,000 nodes the nodes' reading and decrypting, all in one process, was slower than the
coord's sending, so the bench measured itself. Nodes therefore live in `--workers` processes
(node i in worker i mod W), each with its own event loop; the bench process sends them
commands over a pipe and adds up what they report. Times are `time.perf_counter()`, which is
CLOCK_MONOTONIC and so the same clock in every process.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from typing import Any

from meshvpn import keys, noise
from meshvpn.channel import ClientChannel
from meshvpn.control import messages as m
from meshvpn.errors import MeshError, RemoteProtocolError
from meshvpn.node.coordlink import CONNECT_TIMEOUT, backoff_delay

REGISTRATION_TIMEOUT = 120.0
"""Seconds a node waits for `registered` before it gives up."""
MAP_TIMEOUT = 900.0
"""Seconds a registered node waits for its whole peer map: the coord sends maps as its budget
of map bytes in flight allows, so after a restart of 10,000 nodes the last waits minutes."""
TRACKED_HOST = "203.0.113.9"
"""Endpoint changes the bench times use this host; the others use UNTRACKED_HOST."""
UNTRACKED_HOST = "203.0.113.7"
_TRACKED = re.compile(rb'"public_endpoint":"203\.0\.113\.9:(\d+)"')


class Worker:
    """One worker's nodes and what they received since the bench last asked."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.delta_format: int = spec["delta_format"]
        self.frames = 0
        self.payload_bytes = 0
        """Bytes of the frames counted (after decryption)."""
        self.receipts: dict[int, list] = {}
        """Tracked endpoint changes seen since the last report: port → [count, last time]."""
        self.removal: bytes | None = None
        """The base64 key of a revoked node whose removal the nodes look for."""
        self.removed = [0, 0.0]
        self.failures: list[str] = []
        self.reconnecting = False
        """The server restarts: lost connections reconnect with backoff."""
        self.closing = False
        self.nodes = [SimNode(self, i, f"net{i // spec['per_network']}") for i in spec["indices"]]
        self.by_index = {node.index: node for node in self.nodes}

    def fail(self, text: str) -> None:
        self.failures.append(text)

    def address(self, node: SimNode) -> tuple[str, int]:
        ports = self.spec["ports"]
        return ("127.0.0.1", ports[node.index % len(ports)])

    def live(self) -> list[SimNode]:
        return [node for node in self.nodes if node.joined and not node.lost]


class SimNode(asyncio.Protocol):
    """One simulated node's channel: registers, takes its peer map, then counts what comes."""

    def __init__(self, worker: Worker, index: int, network: str, keepalive: float = 10.0) -> None:
        self.worker = worker
        self.index = index
        self.network = network
        self.identity = noise.StaticIdentity.from_private(keys.generate_private_key())
        self.keepalive = keepalive
        self.channel: ClientChannel | None = None
        self.transport: asyncio.Transport | None = None
        self.accepted: asyncio.Future | None = None
        """Done when `registered` arrived."""
        self.registered: asyncio.Future | None = None
        """Done when the whole peer map arrived too."""
        self.online_peers = 0
        """Peers this node's view has online: from its map, then every update and delta."""
        self._map_online = 0
        self._ping: asyncio.TimerHandle | None = None
        self.lost = False
        """The connection ended and is not coming back (revoked, or gave up)."""
        self.revoked = False
        self.doomed = False
        """To be revoked while changes are timed: its receipts do not count (it stops hearing any)."""

    async def join(self, address, server_public: bytes, register: m.Register, gate: asyncio.Semaphore) -> None:
        """Connect and register while holding `gate` (the worker's share of nodes between TCP
        connect and `registered` at once: one process cannot act for thousands of machines in
        the same instant, and the coord drops a connection whose handshake is late), then wait
        for the whole peer map."""
        loop = asyncio.get_running_loop()
        self.channel = ClientChannel(self.identity, server_public, os.urandom(32), time.time())
        self.accepted, self.registered = loop.create_future(), loop.create_future()
        self._map_online = 0
        async with gate:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, *address, local_addr=source_address(self.index)), CONNECT_TIMEOUT
            )
            self.send(register)
            await asyncio.wait_for(asyncio.shield(self.accepted), REGISTRATION_TIMEOUT)
        await asyncio.wait_for(asyncio.shield(self.registered), MAP_TIMEOUT)

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
        if payload.startswith(b'{"type":"pong"'):
            return
        if payload.startswith(b'{"type":"peer_map"') and self.accepted.done():
            self._map_online += payload.count(b'"online":true')
            tail = payload[-32:]
            if b'"part":' not in tail or tail.endswith(b'"last":true}'):
                self.online_peers = self._map_online
                self.registered.set_result(None)
            return
        message = m.decode(payload)
        if isinstance(message, m.Registered):
            self.accepted.set_result(None)
            self._arm_ping()  # as a node does: its map may be minutes away, its silence limit is not
        else:
            self._fail(f"unexpected {message.TYPE} while registering")

    def _count(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"pong"'):
            return
        worker = self.worker
        worker.frames += 1
        worker.payload_bytes += len(payload)
        self.online_peers += payload.count(b'"online":true') - payload.count(b'"online":false')
        if b'"public_endpoint":"203.0.113.9:' in payload and not self.doomed:
            now = time.perf_counter()
            for port in _TRACKED.findall(payload):
                receipt = worker.receipts.setdefault(int(port), [0, 0.0])
                receipt[0] += 1
                receipt[1] = now
        if worker.removal is not None:
            removed_at = payload.find(b'"removed":[')
            if (payload.startswith(b'{"type":"peer_remove"') and worker.removal in payload) or (
                    removed_at >= 0 and payload.find(worker.removal, removed_at) >= 0):
                worker.removed[0] += 1
                worker.removed[1] = time.perf_counter()

    def send(self, message: m.Message) -> None:
        self.channel.send(m.encode(message))
        self._flush()

    def connection_lost(self, exc) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self.joined and self.worker.reconnecting and not self.revoked:
            return
        self._fail(f"connection lost: {exc or 'closed by the server'}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, reason: str) -> None:
        for waiting in (self.accepted, self.registered):
            if waiting is not None and not waiting.done():
                waiting.set_exception(MeshError(reason))
                waiting.exception()  # a join that already timed out no longer awaits it
        if self.joined and not self.worker.closing and not self.revoked:
            self.lost = True
            self.worker.fail(f"node-{self.index} after joining: {reason}")
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


def source_address(index: int) -> tuple[str, int]:
    """A loopback source address per node, so the per-address connection cap does not apply."""
    return (f"127.1.{index // 250}.{index % 250 + 1}", 0)


def register_message(node: SimNode) -> m.Register:
    return m.Register(
        f"node-{node.index}", "bench", (m.Endpoint("10.0.0.1", 41641), m.Endpoint("192.168.1.10", 41641)),
        auth_key=node.worker.spec["tokens"][node.network],
        public_endpoint=m.Endpoint("198.51.100.1", 20000 + node.index % 40000),
        deltas=node.worker.delta_format > 0 or None, delta_version=node.worker.delta_format or None,
    )


async def join(node: SimNode, gate: asyncio.Semaphore) -> None:
    try:
        await node.join(node.worker.address(node), node.worker.spec["server_public"], register_message(node), gate)
    except (MeshError, OSError, asyncio.TimeoutError) as exc:
        node.worker.fail(f"node-{node.index}: {exc or type(exc).__name__}")
        node.close()


async def rejoin(node: SimNode, deadline: float, gate: asyncio.Semaphore) -> None:
    """Reconnect as the node does after losing the coord: jittered, doubling backoff."""
    failures = 0
    worker = node.worker
    while time.monotonic() < deadline:
        failures += 1
        await asyncio.sleep(backoff_delay(failures, random.random()))
        try:
            await node.join(worker.address(node), worker.spec["server_public"], register_message(node), gate)
            return
        except (MeshError, OSError, asyncio.TimeoutError):
            node.close()
    node.lost = True
    worker.fail(f"node-{node.index}: gave up reconnecting")
