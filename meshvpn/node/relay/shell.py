"""The daemon's side of relays over TCP or TLS: one secure stream per relay the node asks for.

The node decides everything (hellos, the fallback to a stream when UDP gets no answer, plain
TCP or TLS, home); UDP hellos leave from the node's main socket like any datagram. The streams
themselves are `meshvpn.node.streams`; each connection attempt of a race carries a
`RelayStreamEnd` (`meshvpn.node.relay.streamend`: the secure channel pinned to the relay's key)
through its handshake, and the winner's end seals the frames the node gives (``SendRelayFrames``)
and reports the channel and its frames to the node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from meshvpn.errors import RemoteProtocolError
from meshvpn.node.events import CloseRelayStream, OpenRelayStream, SendRelayFrames
from meshvpn.node.node import Node
from meshvpn.node.relay.streamend import RelayStreamEnd
from meshvpn.node.streams import READ_SIZE, Stream, StreamSet

log = logging.getLogger("meshvpn.node.relay")


class RelayStreams(StreamSet):
    """The streams to relays of one node daemon, by relay name; each carries a pinned channel."""

    what = "relay"

    def __init__(self, node: Node, identity_private: bytes, transmit: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        super().__init__(node, transmit, clock)
        self.identity_private = identity_private
        self._keys: dict[str, bytes] = {}

    def follow(self, wish: OpenRelayStream | CloseRelayStream | SendRelayFrames) -> None:
        """Carry out one of the node's stream wishes."""
        if isinstance(wish, SendRelayFrames):
            self.send(wish.name, wish.frames)
        elif isinstance(wish, OpenRelayStream):
            self._keys[wish.name] = wish.public_key
            self.open(wish.name, wish.targets)
        else:
            self.close_stream(wish.name)

    def send(self, name: str, frames: list[bytes]) -> None:
        stream = self.get(name)
        if stream is not None and stream.state is not None:
            stream.write(stream.state.seal(frames))

    async def handshake(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> tuple[RelayStreamEnd, list[bytes]]:
        """Drive a `RelayStreamEnd` through the channel handshake; the end and any frames that came with it."""
        end = RelayStreamEnd(self.node, name, self.identity_private, self._keys[name], os.urandom(32), time.time())
        writer.write(end.opening())
        frames: list[bytes] = []
        while not end.established:
            data = await reader.read(READ_SIZE)
            if not data:
                raise EOFError("the relay closed the connection during the handshake")
            frames += end.handshake(data)
            writer.write(end.pending())
        return end, frames

    def connected(self, stream: Stream) -> None:
        end, frames = stream.state
        stream.state = end
        log.info("relay %s: %s connected to %s", stream.name, "TLS" if stream.tls else "TCP", stream.endpoint,
                 extra={"RELAY": stream.name})
        end.up(self.clock(), stream.target, frames)

    def received(self, stream: Stream, data: bytes) -> None:
        end = stream.state
        try:
            end.receive(data, self.clock())
        except RemoteProtocolError as exc:
            log.info("relay %s: channel error: %s", stream.name, exc, extra={"RELAY": stream.name})
            stream.close()
            return
        stream.write(end.pending())

    def ended(self, name: str, reset: bool) -> None:
        self.node.relay_stream_ended(name, self.clock(), reset)
