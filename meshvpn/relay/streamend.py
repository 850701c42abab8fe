"""The relay's end of one node's TCP (or TLS) stream, without I/O: channel bytes in, messages to the core, frames out.

A stream runs a `ServerChannel` (the node pins our key; any node key may open one, since the
hello's relay token decides), and each frame carries exactly one message that would otherwise be
a datagram, so `RelayCore` treats both alike. The asyncio shell (`meshvpn.relay.server`) and the
simulated relay (`meshvpn.sim.relays`) move the bytes; what they mean is decided here once.
"""

from __future__ import annotations

from meshvpn.channel import ServerChannel
from meshvpn.noise import StaticIdentity
from meshvpn.relay.core import RelayCore, Stream

MAX_FRAME = 65535 + 64
"""Largest channel payload: one UDP message plus its relay envelope."""


def _anyone(_node_key: bytes) -> bool:
    """Every key may open a channel: the relay token in the hello decides who is served."""
    return True


class StreamEnd:
    """One node's stream at the relay: its channel, and the core's view of it as `stream`."""

    def __init__(self, core: RelayCore, stream: Stream, identity: StaticIdentity, ephemeral: bytes) -> None:
        self.core, self.stream = core, stream
        self.channel = ServerChannel(identity, _anyone, ephemeral, MAX_FRAME)
        self.opened = False
        """Whether the channel is established and the core knows the stream."""

    def receive(self, data: bytes, now: float) -> bytes:
        """Bytes from the node; returns the bytes to write back. Raises `RemoteProtocolError` for a
        broken channel (the shell closes the stream)."""
        payloads = self.channel.receive_data(data)
        out = self.channel.data_to_send()
        if not self.opened and self.channel.established:
            self.opened = True
            self.core.stream_opened(self.stream, self.channel.remote_public, now)
        self.core.receive_many(payloads, self.stream, now)
        return out

    def queued(self) -> bytes:
        """Every frame the core holds for this node, sealed. Raises `LocalProtocolError` when one
        cannot be sealed (the shell closes the stream)."""
        for frame in self.core.pull_stream(self.stream):
            self.channel.send(frame)
        return self.channel.data_to_send()

    def closed(self) -> None:
        """The connection is gone: its node, if registered on it, is no longer reachable."""
        self.core.stream_closed(self.stream)
