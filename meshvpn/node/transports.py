"""What carries a message to a peer: the transports a route can take, as data the shell matches on.

The node decides (``Node.transport_for``); the shell sends with one ``match`` on the answer. A
new transport is one more class here, one more case in the node's choice and one in the shell.
Each machine that the choice reads notes the endpoints whose answer it may have moved
(:class:`Moves`), so the node gives new transports to the routes to those endpoints only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from meshvpn.wire import Endpoint


@dataclass(frozen=True, slots=True)
class MainSocket:
    """The node's one UDP socket (direct and LAN paths, the relay over UDP)."""


@dataclass(frozen=True, slots=True)
class PinnedSocket:
    """The extra UDP socket `sid` whose NAT mapping the peer reached (birthday probing)."""

    sid: int


@dataclass(frozen=True, slots=True)
class PunchedStream:
    """The punched TCP connection `conn_id` (None: the path is gone; the message is dropped)."""

    conn_id: int | None


@dataclass(frozen=True, slots=True)
class RelayStream:
    """The TCP stream to relay `name` (the relay did not answer over UDP)."""

    name: str


@dataclass(frozen=True, slots=True)
class TurnChannel:
    """ChannelData on `channel` to the TURN server at `server`: from the main socket, or padded on
    the TCP or TLS stream to TURN server `stream` when the allocation lives there."""

    server: Endpoint
    channel: int
    stream: str | None = None


class Moves:
    """The endpoints whose transport one machine may have changed since the node last took them
    (a TURN channel bound, a TCP path up or gone, a pin): the node restamps only routes to these."""

    __slots__ = ("_endpoints",)

    def __init__(self) -> None:
        self._endpoints: set[Endpoint] = set()

    def add(self, *endpoints: Endpoint) -> None:
        self._endpoints.update(endpoints)

    def take(self) -> set[Endpoint]:
        """The endpoints noted since the last call (each is returned once)."""
        taken, self._endpoints = self._endpoints, set()
        return taken


MAIN_SOCKET = MainSocket()
Transport = Union[MainSocket, PinnedSocket, PunchedStream, RelayStream, TurnChannel]


def socket_name(transport: Transport) -> str | None:
    """The UDP socket `transport` sends from, as status names the node's sockets (`main`, `pinned N`); None
    for a stream."""
    match transport:
        case MainSocket() | TurnChannel(_, _, None):
            return "main"
        case PinnedSocket(sid):
            return f"pinned {sid}"
    return None
