"""The daemon's side of relays over TCP or TLS: one secure stream per relay the node asks for.

The node decides everything (hellos, the fallback to a stream when UDP gets no answer, plain
TCP or TLS, home); UDP hellos leave from the node's main socket like any datagram. The streams
themselves are `meshvpn.node.streams`; here each runs a :class:`~meshvpn.channel.ClientChannel`
pinned to the relay's key: the shell seals the frames it is given (``SendRelayFrames``) and
reports the channel coming up and every frame it receives back to the node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from meshvpn.channel import ClientChannel
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.events import CloseRelayStream, OpenRelayStream, SendRelayFrames
from meshvpn.node.node import Node
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
        channel = None if stream is None else stream.state
        if channel is None or not channel.established:
            return
        for frame in frames:
            channel.send(frame)
        stream.write(channel.data_to_send())

    async def handshake(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> tuple[ClientChannel, list[bytes]]:
        """The channel handshake pinned to the relay's key; the channel and any frames that came with it."""
        channel = ClientChannel(self.identity_private, self._keys[name], os.urandom(32), time.time())
        writer.write(channel.data_to_send())
        frames: list[bytes] = []
        while not channel.established:
            data = await reader.read(READ_SIZE)
            if not data:
                raise EOFError("the relay closed the connection during the handshake")
            frames += channel.receive_data(data)
            writer.write(channel.data_to_send())
        return channel, frames

    def connected(self, stream: Stream) -> None:
        stream.state, frames = stream.state
        name = stream.name
        log.info("relay %s: %s connected to %s", name, "TLS" if stream.tls else "TCP", stream.endpoint,
                 extra={"RELAY": name})
        self.node.relay_stream_up(name, self.clock(), stream.target)
        if frames:
            self.node.receive_relay_frames(name, frames, self.clock())

    def received(self, stream: Stream, data: bytes) -> None:
        channel, name = stream.state, stream.name
        try:
            frames = channel.receive_data(data)
        except RemoteProtocolError as exc:
            log.info("relay %s: channel error: %s", name, exc, extra={"RELAY": name})
            stream.close()
            return
        stream.write(channel.data_to_send())
        if frames:
            self.node.receive_relay_frames(name, frames, self.clock())

    def ended(self, name: str) -> None:
        self.node.relay_stream_ended(name, self.clock())
