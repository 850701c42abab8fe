"""The node's control channel to the coord: connect, register, keep alive, reconnect.

The link is a TCP connection carrying a :mod:`meshvpn.channel` stream (the coord's key
is pinned from the config).  The first message is ``register``; after that every frame
is handed to ``on_message``.  The link pings every ``keepalive`` seconds and answers the
coord's pings; three intervals of silence mean the coord is gone.  Losing the coord never
stops the node: the data path keeps running, peers are kept, and the link reconnects
with exponential backoff and jitter (so a restarted coord is not hit by every node at
the same instant) until it is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from typing import Callable, Optional

from meshvpn.channel import ClientChannel
from meshvpn.coord import messages as m
from meshvpn.errors import MeshError, RemoteProtocolError
from meshvpn.noise import StaticIdentity

log = logging.getLogger("meshvpn.node.coordlink")

BACKOFF_INITIAL = 1.0
"""Seconds before the first reconnect; doubles per failure."""
BACKOFF_MAX = 30.0
"""Longest wait between reconnects."""
CONNECT_TIMEOUT = 10.0
"""Seconds for TCP connect plus the channel handshake."""
READ_SIZE = 65536


def backoff_delay(failures: int, jitter: float) -> float:
    """Wait before reconnect number ``failures`` (1-based); ``jitter`` in [0, 1) spreads it ±50%."""
    base = min(BACKOFF_INITIAL * 2 ** min(failures - 1, 16), BACKOFF_MAX)
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
    ) -> None:
        self.host, self.port = host, port
        self.server_public = server_public
        self.identity = identity
        self.register = register
        """Builds the register message at connect time (endpoints may have changed)."""
        self.on_message = on_message
        self.on_state = on_state
        """Called with True once registered frames flow, False when the link drops."""
        self.keepalive = keepalive
        self.connected = False
        self.failures = 0
        self._channel: Optional[ClientChannel] = None
        self._writer: Optional[asyncio.StreamWriter] = None
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
        if self._channel is None or self._writer is None:
            return False
        self._channel.send(m.encode(msg))
        self._writer.write(self._channel.data_to_send())
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, EOFError, MeshError) as exc:
                log.warning("coord link to %s:%d lost: %s", self.host, self.port, exc or type(exc).__name__)
            finally:
                self._drop()
            self.failures += 1
            delay = backoff_delay(self.failures, self._rng.random())
            log.info("reconnecting to the coord in %.1f s", delay)
            await asyncio.sleep(delay)

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._channel = None
        if self.connected:
            self.connected = False
            self.on_state(False)

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT)
        self._writer = writer
        channel = ClientChannel(self.identity, self.server_public, os.urandom(32), time.time())
        writer.write(channel.data_to_send())
        self._channel = channel
        self.send(self.register())
        clock = asyncio.get_running_loop().time
        heard = pinged = clock()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), max(0.0, pinged + self.keepalive - clock()))
            except asyncio.TimeoutError:
                data = None
            now = clock()
            if data is not None:
                if not data:
                    raise EOFError("coord closed the connection")
                heard = now
                for payload in channel.receive_data(data):
                    self._handle(payload)
                writer.write(channel.data_to_send())
            if now - heard > 3 * self.keepalive:
                raise EOFError("coord silent for three keepalive intervals")
            if now >= pinged + self.keepalive:
                pinged = now
                self.send(m.Ping())

    def _handle(self, payload: bytes) -> None:
        try:
            msg = m.decode(payload)
        except RemoteProtocolError as exc:
            log.warning("ignoring a malformed message from the coord: %s", exc)
            return
        if isinstance(msg, m.Ping):
            self.send(m.Pong())
            return
        if isinstance(msg, m.Registered):
            self.failures = 0
            if not self.connected:
                self.connected = True
                self.on_state(True)
        if not isinstance(msg, m.Pong):
            self.on_message(msg)
