"""The node's inbox for its streams to relays and TURN servers: what the shell reports of them.

Part of `meshvpn.node.node.Node` (mixed in), apart only to keep that module small: each call
hands the stream's news or bytes to the machine that owns it (`RelaySet`, `TurnLinks`, and
`TcpPunching` for the punch port's connections when the network comes back under them) and
settles the node as every input does.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from meshvpn.node import events as ev
from meshvpn.node.relay.link import Transport as RelayTransport
from meshvpn.node.streamdial import StreamTarget
from meshvpn.wire import MessageType

_HELLO_ACK = MessageType.RELAY_HELLO_ACK


class StreamInbox:
    """Mixed into `Node`, whose machines (`relays`, `turn`) and `_settle` it uses."""

    relays: Any
    turn: Any
    tcp: Any
    _out: list
    _settle: Any

    def connections_resumed(self, now: float, punched: Mapping[int, Optional[bool]],
                            relay_streams: Mapping[str, Optional[bool]],
                            turn_streams: Optional[Mapping[str, Optional[bool]]] = None) -> None:
        """The host's network is usable again under the standing connections (`NetworkChanged.resumed`):
        each TCP path, relay stream and TURN stream checks that it carries rather than wait for TCP's
        backed-off retransmission (`meshvpn.node.tcpresume`). The shell says of each connection it
        holds (the punch port's by id, the streams by server name) whether the kernel says it waits
        for one (None: it does not say)."""
        self.tcp.network_back(punched, now)
        self.relays.network_back(relay_streams, now)
        self.turn.network_back(turn_streams or {}, now)
        self._settle(now)

    def turn_stream_changed(self, name: str, up: bool, now: float, tls: bool = False, reset: bool = False) -> None:
        """The stream to TURN server `name` is connected (`up`, inside TLS or not), or failed or closed
        (the server `reset` it: it no longer knows it); the allocation reconnects (`meshvpn.node.streamdial`)."""
        if up:
            self.turn.stream_up(name, now, tls)
        else:
            self.turn.stream_ended(name, now, reset)
        self._settle(now)

    def receive_turn_stream(self, name: str, data: bytes, now: float) -> None:
        """Bytes from the stream to TURN server `name`."""
        self.turn.receive_stream(name, data, now)
        self._settle(now)

    def relay_stream_up(self, name: str, now: float, target: Optional[StreamTarget] = None) -> None:
        """The TCP stream to relay `name` is established (its channel is up), to `target` (the
        relay's address and kind that won the connection race, with the stream's port)."""
        self.relays.tcp_up(name, now, target)
        self._settle(now)

    def relay_stream_ended(self, name: str, now: float, reset: bool = False) -> None:
        """The TCP stream to relay `name` closed or failed (the relay `reset` it: it no longer knows
        it); the link reconnects (`meshvpn.node.streamdial`)."""
        self.relays.tcp_down(name, now, reset)
        self._settle(now)

    def receive_relay_frames(self, name: str, frames: Iterable[bytes], now: float) -> None:
        """Frames from relay `name`'s TCP stream: hello acks to its link, the rest to the data path."""
        link = self.relays.links.get(name)
        if link is None:
            return
        endpoint = link.endpoint
        data = []
        for frame in frames:
            if len(frame) > 1 and frame[1] == _HELLO_ACK:
                self.relays.receive(frame, endpoint, RelayTransport.TCP, now)
            else:
                data.append((frame, endpoint))
        if data:
            self._out.append(ev.Deliver(data))
        self._settle(now)
