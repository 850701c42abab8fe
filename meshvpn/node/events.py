"""Everything the node tells its shell, in one place (as aioquic's ``events.py``).

The sans-IO :class:`~meshvpn.node.node.Node` produces two kinds of output, drained one way
(``Node.outputs()``): *transmissions* (bytes for a transport, messages for the coord,
connections to open or close) and *events* (what happened, for the log, the TUN address and
``meshvpn ping``). Both are plain frozen dataclasses; the shell handles each with one ``match``.
Each name means one thing in the whole node: the coord schema's ``registered`` message is
``meshvpn.control.messages.Registered``, the node's answer to it is :class:`AddressAssigned`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from meshvpn.control import messages as m
from meshvpn.node.streamdial import StreamTarget
from meshvpn.wire import Endpoint

if TYPE_CHECKING:  # pathfinder imports the TCP punch core, which imports this module
    from meshvpn.node.pathfinder import Path

# ---- events: what happened ------------------------------------------------------------


@dataclass(frozen=True)
class AddressAssigned:
    """The coord accepted us: the shell puts ``address``/prefix of ``network`` on the TUN."""

    name: str
    address: str
    network: str
    """The overlay CIDR, e.g. ``100.64.0.0/10``."""


@dataclass(frozen=True)
class PeerMapChanged:
    """Who is in the network now (this node first): a peer joined, left or was renamed or readdressed.

    The shell's DNS responder answers from ``hosts``; nothing else keeps a copy of the names."""

    network: str
    hosts: tuple[tuple[str, str], ...]
    """(name, overlay address) of this node and of every peer in the peer map."""


@dataclass(frozen=True)
class PeerPathChanged:
    """A peer's path changed (log one line: peer, old → new, reason)."""

    name: str
    old: Optional[Path]
    new: Optional[Path]
    reason: str


@dataclass(frozen=True)
class PeerUp:
    """A handshake with a peer completed (the first, or after its sessions expired)."""

    name: str


@dataclass(frozen=True)
class PeerDown:
    """A peer became unreachable: sessions expired, handshake abandoned, or removed."""

    name: str
    reason: str


@dataclass(frozen=True)
class PingReply:
    """The answer to a probe sent by ``ping``."""

    tx_id: bytes
    name: str
    address: str
    path: str
    """Kind of the path the probe went out on: lan, direct, tcp or relay."""
    endpoint: Endpoint
    rtt: float


@dataclass(frozen=True)
class CoordRejected:
    """The coord sent an error (bad auth key, approval pending, revoked...)."""

    code: str
    message: str


@dataclass(frozen=True)
class SampleWanted:
    """Take a STUN sample from a new socket (our NAT's latest port); answer with ``port_sampled``."""

    peer_key: bytes


@dataclass(frozen=True)
class DiscoverEndpoints:
    """A direct path died while carrying traffic: run STUN now, report changes, then call ``endpoints_refreshed``."""

    reconnect_coord: bool = False
    """A TCP path died: reconnect the coord link now too, from the punch port, so that the coord
    sees (and tells peers) where our NAT maps that port now (``public_tcp``)."""


@dataclass(frozen=True)
class OpenMappings:
    """Send each probe from its own new socket to `endpoint`; keep the sockets `seconds`."""

    peer_key: bytes
    endpoint: Endpoint
    probes: tuple[bytes, ...]
    seconds: float


@dataclass(frozen=True)
class CloseMappings:
    """The peer has a direct path: the sockets its `OpenMappings` opened that no path uses may close now."""

    peer_key: bytes


@dataclass(frozen=True)
class TcpPathChanged:
    """A punched TCP path to a peer came up at `endpoint`, or went down (`endpoint` None) for `reason`."""

    name: str
    endpoint: Optional[Endpoint]
    reason: str = ""


@dataclass(frozen=True)
class RelayHomeChanged:
    """Relayed packets now go through relay `name` over `transport` (None: no relay is ready)."""

    name: Optional[str]
    transport: Optional[str]


@dataclass(frozen=True)
class RelaySkipped:
    """Relay `name` is announced by a DNS name with no address yet: skipped until the name resolves."""

    name: str


@dataclass(frozen=True)
class TurnChanged:
    """Something happened to our allocation on TURN server `server` (for the log)."""

    server: str
    event: object
    """A :mod:`meshvpn.turn` event: ``AllocationReady``, ``AllocationLost`` or ``ChannelBound``."""


Event = Union[AddressAssigned, PeerMapChanged, PeerPathChanged, PeerUp, PeerDown, PingReply, CoordRejected,
              SampleWanted, DiscoverEndpoints, OpenMappings, CloseMappings, TcpPathChanged, RelayHomeChanged, RelaySkipped, TurnChanged]

# ---- transmissions: what the shell must send, open or close ----------------------------


@dataclass(frozen=True)
class SendDatagram:
    """Send `data` to `dst` over UDP: from the main socket, or from extra socket `via` (birthday probing)."""

    dst: Endpoint
    data: bytes
    via: Optional[int] = None


@dataclass(frozen=True)
class SendCoord:
    """Send `msg` to the coordination server."""

    msg: m.Message


@dataclass(frozen=True)
class Deliver:
    """Messages that reached us on a stream or through TURN, each with where it counts as coming from:
    the data path opens them as if they had arrived on the main socket."""

    datagrams: list[tuple[bytes, Endpoint]]


@dataclass(frozen=True)
class StunReceived:
    """A STUN message from a server that is not one of our TURN servers: the shell's STUN client's."""

    data: bytes
    src: Endpoint


@dataclass(frozen=True)
class TcpConnect:
    """Open connection `conn_id` from the punch port (or `fresh_port`: from a new local port) to
    `endpoint`; report within `timeout` s."""

    conn_id: int
    endpoint: Endpoint
    timeout: float
    fresh_port: bool = False


@dataclass(frozen=True)
class TcpSampleWanted:
    """Take a TCP port sample (STUN over a new TCP connection to the coord); answer with ``tcp_sampled``."""

    peer_key: bytes


@dataclass(frozen=True)
class TcpWrite:
    """Write `data` to connection `conn_id`."""

    conn_id: int
    data: bytes


@dataclass(frozen=True)
class TcpAbort:
    """Abort connection `conn_id` (RST); the node has forgotten it."""

    conn_id: int


@dataclass(frozen=True)
class OpenRelayStream:
    """Open a TCP stream (a secure channel pinned to `public_key`) to relay `name`: the first of
    `targets` (the relay's addresses, plain TCP and inside TLS, ``meshvpn.node.streamdial``) to
    finish the channel handshake, each a stagger after the last (``meshvpn.node.streamrace``)."""

    name: str
    targets: tuple[StreamTarget, ...]
    public_key: bytes


@dataclass(frozen=True)
class CloseRelayStream:
    """Close the TCP stream to relay `name`."""

    name: str


@dataclass(frozen=True)
class SendRelayFrames:
    """Send each of `frames` as one frame on the TCP stream to relay `name`."""

    name: str
    frames: list[bytes]


@dataclass(frozen=True)
class TurnStream:
    """Open the stream to TURN server `name`: the first of `targets` (its addresses, plain TCP and
    inside TLS) to connect, raced as a relay's are; with no targets, close it."""

    name: str
    targets: tuple[StreamTarget, ...] = ()


@dataclass(frozen=True)
class SendTurnBytes:
    """Write `data` (whole STUN and padded ChannelData messages) on the stream to TURN server `name`."""

    name: str
    data: bytes


@dataclass(frozen=True)
class WriteTun:
    """Write `packets` to the node's own TUN: IGMP queries, as the querier of its link."""

    packets: list[bytes]


Transmission = Union[SendDatagram, SendCoord, Deliver, StunReceived, TcpConnect, TcpWrite, TcpAbort, TcpSampleWanted,
                     OpenRelayStream, CloseRelayStream, SendRelayFrames, TurnStream, SendTurnBytes, WriteTun]
Output = Union[Event, Transmission]
