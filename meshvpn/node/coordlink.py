"""The node's control channel to the coord: connect, register, keep alive, reconnect.

The link is a :mod:`meshvpn.coord.client` connection (a :mod:`meshvpn.channel` stream over
TCP; the coord's key is pinned from the config).  The first message is ``register``; after
that every message is handed to ``on_message``.  The link pings every ``keepalive`` seconds
and answers the coord's pings; three intervals of silence mean the coord is gone.  Losing
the coord never stops the node: the data path keeps running, peers are kept, and the link
reconnects with exponential backoff and jitter (so a restarted coord is not hit by every
node at the same instant) until it is closed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Callable, Optional

from meshvpn.backoff import doubling
from meshvpn.config import Address
from meshvpn.control import messages as m
from meshvpn.coord.client import CoordClient, connect
from meshvpn.errors import MeshError
from meshvpn.noise import StaticIdentity
from meshvpn.node.startup import explain_coord_failure

log = logging.getLogger("meshvpn.node.coordlink")

BACKOFF_INITIAL = 1.0
"""Seconds before the first reconnect; doubles per failure."""
BACKOFF_MAX = 30.0
"""Longest wait between reconnects."""
CONNECT_TIMEOUT = 10.0
"""Seconds for TCP connect plus the channel handshake."""


def backoff_delay(failures: int, jitter: float) -> float:
    """Wait before reconnect number ``failures`` (1-based); ``jitter`` in [0, 1) spreads it ±50%."""
    base = doubling(BACKOFF_INITIAL, BACKOFF_MAX, failures - 1)
    return base * (0.5 + jitter)


class CoordLink:
    """Keeps one registered control channel to the coord while the node runs."""

    def __init__(
        self,
        host: str,
        port: int,
        server_public: bytes,
        identity: StaticIdentity,
        register: Callable[[], m.Register],
        on_message: Callable[[m.Message], None],
        on_state: Callable[[bool], None],
        keepalive: float = 15.0,
        local_socket: Optional[Callable[[], socket.socket]] = None,
    ) -> None:
        self.host, self.port = host, port
        self.local_socket = local_socket
        """Makes the socket each connection comes from (the node's TCP punch port); None: any."""
        self.server_public = server_public
        self.identity = identity
        self.register = register
        """Builds the register message at connect time (endpoints may have changed)."""
        self.on_message = on_message
        self.on_state = on_state
        """Called with True once registered frames flow, False when the link drops (or the first attempt fails)."""
        self.keepalive = keepalive
        self.connected = False
        self.failures = 0
        self._client: Optional[CoordClient] = None
        self._task: Optional[asyncio.Task] = None
        self._rng = random.Random()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def send(self, msg: m.Message) -> bool:
        """Send if connected; False (dropped) otherwise: state is re-sent on reconnect."""
        if self._client is None or self._client.close_reason is not None:
            return False
        self._client.send(msg)
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, EOFError, MeshError) as exc:
                log.warning("%s", explain_coord_failure(Address(self.host, self.port), exc))
            finally:
                self._drop()
            self.failures += 1
            delay = backoff_delay(self.failures, self._rng.random())
            log.info("reconnecting to the coord in %.1f s", delay)
            await asyncio.sleep(delay)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        if self.connected or self.failures == 0:
            self.connected = False
            self.on_state(False)

    async def _session(self) -> None:
        client = await connect((self.host, self.port), self.server_public, self.identity,
                               keepalive=self.keepalive, timeout=CONNECT_TIMEOUT,
                               sock=None if self.local_socket is None else self.local_socket())
        self._client = client
        client.send(self.register())
        while True:
            try:
                msg = await client.recv(3 * self.keepalive)
            except asyncio.TimeoutError:
                raise EOFError("coord silent for three keepalive intervals") from None
            if isinstance(msg, m.Registered):
                self.failures = 0
                if not self.connected:
                    self.connected = True
                    self.on_state(True)
            if not isinstance(msg, m.Pong):
                self.on_message(msg)
