"""The daemon's side of TURN over TCP or TLS (RFC 8656 §12.5): one stream per TURN server the node asks for.

The node (`meshvpn.node.turn.core`) moves an allocation onto a stream when the server does not
answer over UDP; the bytes in the stream are whole STUN and padded ChannelData messages both
ways, framed by the node. This shell only connects (`meshvpn.node.streams`), writes what the
node and the data path give it, and hands every byte it reads to the node.
"""

from __future__ import annotations

from meshvpn.node.events import SendTurnBytes, TurnStream
from meshvpn.node.streams import Stream, StreamSet


class TurnStreams(StreamSet):
    """The streams to TURN servers of one node daemon, by server name."""

    what = "TURN server"

    def follow(self, wish: TurnStream | SendTurnBytes) -> None:
        """Carry out one of the node's stream wishes."""
        if isinstance(wish, SendTurnBytes):
            self.write(wish.name, wish.data)
        elif not wish.targets:
            self.close_stream(wish.name)
        else:
            self.open(wish.name, wish.targets)

    def write(self, name: str, data: bytes | bytearray) -> None:
        """Write on the stream to `name`, if it is connected (else the bytes are lost, as on UDP)."""
        stream = self.get(name)
        if stream is not None:
            stream.write(data)

    def connected(self, stream: Stream) -> None:
        self.node.turn_stream_changed(stream.name, True, self.clock(), stream.tls)

    def received(self, stream: Stream, data: bytes) -> None:
        self.node.receive_turn_stream(stream.name, data, self.clock())

    def ended(self, name: str, reset: bool) -> None:
        self.node.turn_stream_changed(name, False, self.clock(), reset=reset)
