"""The daemon's asyncio side of relays over TCP: one secure stream per relay the node asks for.

The node decides everything (hellos, the fallback to TCP when UDP gets no answer, home); UDP
hellos leave from the node's main socket like any datagram. This shell opens and closes the
TCP streams the node asks for (``OpenRelayStream``, ``CloseRelayStream``), seals the frames it
is given (``SendRelayFrames``) on a :class:`~meshvpn.channel.ClientChannel` pinned to the
relay's key, and reports each stream's life and every frame it receives back to the node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Optional

from meshvpn import tlsenvelope
from meshvpn.channel import ClientChannel
from meshvpn.errors import MeshError
from meshvpn.node.events import CloseRelayStream, OpenRelayStream, SendRelayFrames
from meshvpn.node.node import Node

log = logging.getLogger("meshvpn.node.relay")

CONNECT_TIMEOUT = 5.0
"""Seconds for TCP connect plus the channel handshake."""
READ_SIZE = 65536


class _RelayStream:
    """One TCP connection to a relay; frames in go to the node, frames out are sealed here."""

    def __init__(self, streams: RelayStreams, wish: OpenRelayStream) -> None:
        self.streams = streams
        self.wish = wish
        self.channel: Optional[ClientChannel] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def name(self) -> str:
        return self.wish.name

    def send(self, frames: list[bytes]) -> None:
        channel, writer = self.channel, self.writer
        if channel is None or writer is None or not channel.established:
            return
        for frame in frames:
            channel.send(frame)
        writer.write(channel.data_to_send())

    def close(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        streams, name = self.streams, self.name
        try:
            tls = tlsenvelope.client_context() if self.wish.tls else None
            reader, self.writer = await asyncio.wait_for(asyncio.open_connection(*self.wish.endpoint, ssl=tls),
                                                         CONNECT_TIMEOUT)
            self.channel = ClientChannel(streams.identity_private, self.wish.public_key, os.urandom(32), time.time())
            self.writer.write(self.channel.data_to_send())
            up = False
            while data := await reader.read(READ_SIZE):
                frames = self.channel.receive_data(data)
                self.writer.write(self.channel.data_to_send())
                if not up and self.channel.established:
                    up = True
                    log.info("relay %s: %s connected", name, "TLS" if self.wish.tls else "TCP", extra={"RELAY": name})
                    streams.node.relay_stream_up(name, streams.clock())
                if frames:
                    streams.node.receive_relay_frames(name, frames, streams.clock())
                streams.transmit()
            raise EOFError("relay closed the connection")
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError, EOFError, MeshError) as exc:
            log.info("relay %s: TCP connection lost: %s", name, exc or type(exc).__name__, extra={"RELAY": name})
        finally:
            if self.writer is not None:
                self.writer.close()
            streams.ended(self)


class RelayStreams:
    """The TCP streams to relays of one node daemon, by relay name."""

    def __init__(self, node: Node, identity_private: bytes, transmit: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        self.node = node
        self.identity_private = identity_private
        self.transmit = transmit
        """The daemon's drain of the node's outputs, called after every input."""
        self.clock = clock
        self._streams: dict[str, _RelayStream] = {}
        self._closed = False

    def follow(self, wish: OpenRelayStream | CloseRelayStream | SendRelayFrames) -> None:
        """Carry out one of the node's stream wishes."""
        if isinstance(wish, SendRelayFrames):
            self.send(wish.name, wish.frames)
        elif isinstance(wish, OpenRelayStream):
            if not self._closed:
                log.info("relay %s: no answer over UDP, trying %s at %s:%d", wish.name, "TLS" if wish.tls else "TCP",
                         *wish.endpoint, extra={"RELAY": wish.name})
                self._streams[wish.name] = _RelayStream(self, wish)
        else:
            stream = self._streams.pop(wish.name, None)
            if stream is not None:
                log.info("relay %s: closing TCP", wish.name, extra={"RELAY": wish.name})
                stream.close()

    def send(self, name: str, frames: list[bytes]) -> None:
        stream = self._streams.get(name)
        if stream is not None:
            stream.send(frames)

    def ended(self, stream: _RelayStream) -> None:
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            if not self._closed:
                self.node.relay_stream_ended(stream.name, self.clock())
                self.transmit()

    async def close(self) -> None:
        self._closed = True
        for stream in list(self._streams.values()):
            stream.close()
