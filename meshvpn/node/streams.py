"""The daemon's outgoing streams to servers: TCP or TLS (`meshvpn.tlsenvelope`), opened on the node's wish.

A node falls back to a stream when UDP to a server gets no answer: to a meshvpn relay (its
secure channel over TCP, `meshvpn.node.relay.shell`) or to a TURN server (RFC 8656 over TCP,
`meshvpn.node.turn.shell`). Connecting, reading until the end, closing and reporting are the
same for both and live here; what the bytes mean is the subclass's (`connected`, `received`,
`ended`). The node decides when to open and close (`meshvpn.node.streamdial`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional, Sequence

from meshvpn import tlsenvelope
from meshvpn.errors import MeshError
from meshvpn.node.node import Node
from meshvpn.node.streamdial import StreamTarget
from meshvpn.node.streamrace import first_connection
from meshvpn.node.tcpinfo import retransmitting
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node.streams")

CONNECT_TIMEOUT = 5.0
"""Seconds for the TCP connect, the TLS handshake and the subclass's own handshake."""
READ_SIZE = 65536


class Stream:
    """One connection to a server, by the name the node gave it."""

    def __init__(self, owner: StreamSet, name: str, targets: Sequence[StreamTarget]) -> None:
        self.owner = owner
        self.name = name
        self.targets = tuple(targets)
        self.target = self.targets[0]
        """Where the stream goes; once connected, the one of `targets` that won the race."""
        self.state: Any = None
        """The subclass's per-stream state (a relay's secure channel)."""
        self.writer: Optional[asyncio.StreamWriter] = None
        self.reset = False
        """The server reset the connection (it no longer knows it), rather than closing it."""
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def endpoint(self) -> Endpoint:
        return self.target.endpoint

    @property
    def tls(self) -> bool:
        return self.target.tls

    def write(self, data: bytes) -> None:
        if self.writer is not None and data:
            self.writer.write(data)

    def close(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        owner = self.owner
        contexts = {True: tlsenvelope.client_context()} if any(t.tls for t in self.targets) else {}

        async def connect(target: StreamTarget) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
            async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
                reader, writer = await asyncio.open_connection(*target.endpoint, ssl=contexts.get(target.tls))
                try:
                    return reader, writer, await owner.handshake(self.name, reader, writer)
                except BaseException:
                    writer.close()
                    raise
            return await asyncio.wait_for(opened(), CONNECT_TIMEOUT)

        try:
            (reader, self.writer, self.state), self.target = await first_connection(
                self.targets, connect, lambda won: won[1].close())
            owner.connected(self)
            owner.transmit()
            while data := await reader.read(READ_SIZE):
                owner.received(self, data)
                owner.transmit()
            raise EOFError("the server closed the connection")
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError, EOFError, MeshError) as exc:
            self.reset = isinstance(exc, ConnectionResetError)
            log.info("%s %s: %s connection lost: %s", owner.what, self.name, "TLS" if self.tls else "TCP",
                     exc or type(exc).__name__)
        finally:
            if self.writer is not None:
                self.writer.close()
            owner.forget(self)


class StreamSet:
    """The streams of one kind (to relays, or to TURN servers) of one node daemon, by name."""

    what = "server"
    """What the streams go to, for the log."""

    def __init__(self, node: Node, transmit: Callable[[], None], clock: Callable[[], float]) -> None:
        self.node = node
        self.transmit = transmit
        """The daemon's drain of the node's outputs, called after every input."""
        self.clock = clock
        self._streams: dict[str, Stream] = {}
        self._closed = False

    def open(self, name: str, targets: Sequence[StreamTarget]) -> None:
        """Connect to the first of `targets` to finish its handshake (`meshvpn.node.streamrace`). A
        stream of that name still open is closed first, unreported: the node asks again only once it
        no longer counts on that one, and waits to hear of the new one."""
        if not self._closed and targets:
            self.close_stream(name)
            log.info("%s %s: no answer over UDP yet, racing %s", self.what, name,
                     ", ".join(f"{'TLS' if t.tls else 'TCP'} {t.endpoint}" for t in targets))
            self._streams[name] = Stream(self, name, targets)

    def close_stream(self, name: str) -> None:
        stream = self._streams.pop(name, None)
        if stream is not None:
            log.info("%s %s: closing its stream", self.what, name)
            stream.close()

    def get(self, name: str) -> Optional[Stream]:
        return self._streams.get(name)

    def retransmitting(self) -> dict[str, Optional[bool]]:
        """Whether each connected stream waits for a backed-off retransmission, by name, as the kernel
        says (`meshvpn.node.tcpinfo`; None where it does not say)."""
        return {name: retransmitting(stream.writer.get_extra_info("socket"))
                for name, stream in self._streams.items() if stream.writer is not None}

    def forget(self, stream: Stream) -> None:
        """`stream` ended: tell the node, unless it was closed on the node's wish or at shutdown."""
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            if not self._closed:
                self.ended(stream.name, stream.reset)
                self.transmit()

    async def close(self) -> None:
        self._closed = True
        for stream in list(self._streams.values()):
            stream.close()

    # ---- what the bytes mean: the subclass's ----------------------------------------------

    async def handshake(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        """Bring the server's protocol up on a fresh connection (inside the race, so that a
        connection that gets through but carries nothing loses it); the stream's `state`."""
        return None

    def connected(self, stream: Stream) -> None:
        """The race's winner is up (its handshake done)."""

    def received(self, stream: Stream, data: bytes) -> None:
        """Bytes from the server."""

    def ended(self, name: str, reset: bool) -> None:
        """The stream to `name` failed or closed by itself (the server `reset` it)."""
