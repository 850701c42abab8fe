"""The node's end of its stream to one relay, without I/O: a secure channel pinned to the relay's key.

The daemon's streams (`meshvpn.node.relay.shell`) and the simulated node (`meshvpn.sim.streams`)
move the bytes; this end holds the channel logic for both. A connection attempt drives the
handshake (`opening`, then `handshake` with each read) without telling the node, so that the
attempts of a race (`meshvpn.node.streamrace`) stay silent until one wins; the winner's end is
then `up`, given the frames that came along, and from there seals the frames the node gives it
(``SendRelayFrames``) and reports every frame received back to the node.
"""

from __future__ import annotations

from typing import Iterable, Optional

from meshvpn.channel import ClientChannel
from meshvpn.node.streamdial import StreamTarget
from meshvpn.node.streaminbox import StreamInbox


class RelayStreamEnd:
    """The channel on one connection to relay `name`, opened once TCP (or TLS) connected."""

    def __init__(self, node: StreamInbox, name: str, identity_private: bytes, relay_key: bytes,
                 ephemeral: bytes, wall_now: float) -> None:
        self.node, self.name = node, name
        self.channel = ClientChannel(identity_private, relay_key, ephemeral, wall_now)

    @property
    def established(self) -> bool:
        """Whether the handshake is done (the attempt may win its race)."""
        return self.channel.established

    def opening(self) -> bytes:
        """The channel's first bytes, to write as soon as the connection is up."""
        return self.channel.data_to_send()

    def handshake(self, data: bytes) -> list[bytes]:
        """Bytes from the relay while the attempt is not yet the node's stream; the frames they
        carried (kept for `up`). Raises `RemoteProtocolError` for a broken channel. The caller
        writes `pending()` afterwards."""
        return self.channel.receive_data(data)

    def up(self, now: float, target: Optional[StreamTarget], frames: Iterable[bytes] = ()) -> None:
        """This attempt won, at `target`: the node's stream is up, and hears the frames that came along."""
        self.node.relay_stream_up(self.name, now, target)
        self._deliver(list(frames), now)

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the relay on the node's stream: every frame goes to the node. Raises
        `RemoteProtocolError` for a broken channel (the shell closes the stream)."""
        self._deliver(self.channel.receive_data(data), now)

    def seal(self, frames: list[bytes]) -> bytes:
        """The bytes that carry `frames` (nothing before the channel is up: the node retries)."""
        if not self.channel.established:
            return b""
        for frame in frames:
            self.channel.send(frame)
        return self.channel.data_to_send()

    def pending(self) -> bytes:
        """Handshake bytes the channel owes the relay."""
        return self.channel.data_to_send()

    def _deliver(self, frames: list[bytes], now: float) -> None:
        if frames:
            self.node.receive_relay_frames(self.name, frames, now)
