"""What TCP punching keeps and says, as data (`meshvpn.node.tcp.core` has the rules).

The far end of a TCP path (`TcpEndpoint`, which the rest of the node routes by), the timing of
punching and path upkeep, each peer's campaign with its connections and path (kept on the peer,
``Peer.tcp``), and the path events the core emits beside the shell's connection wishes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from meshvpn.channel import ClientChannel, ServerChannel
from meshvpn.node.candidates import Candidate
from meshvpn.node.events import TcpAbort, TcpConnect, TcpWrite
from meshvpn.node.tcpresume import TcpResume
from meshvpn.wire import Endpoint


class TcpEndpoint(Endpoint):
    """The far end of a direct TCP path.

    Messages a node sends to, or receives from, a ``TcpEndpoint`` travel on that TCP
    connection. It never equals the UDP :class:`Endpoint` with the same address and port
    (by default the punch port is the UDP port), so routes, probe targets and path
    evidence of the two transports cannot be confused.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is TcpEndpoint and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("tcp", self.host, self.port))


@dataclass
class TcpPunchConfig:
    """Timing of TCP punching and of TCP path upkeep; every default is the documented one."""

    attempts: int = 6
    """Connects per campaign."""
    attempt_timeout: float = 2.5
    """Seconds one connect may take: the first SYN and its retransmission at 1 s."""
    retry_gap: float = 0.2
    """Seconds between a failed connect and the next."""
    handshake_timeout: float = 5.0
    """Seconds from TCP connected to channel established."""
    keepalive: float = 2.5
    """Seconds without sending after which an empty frame goes out."""
    idle_timeout: float = 10.0
    """Seconds without receiving after which the path is dead (as paths.path_timeout)."""
    repunch_initial: float = 2.0
    """Seconds before asking for a new punch after a failed campaign or a lost path."""
    repunch_max: float = 60.0
    """Longest wait between such requests."""
    max_unmatched: int = 8
    """Accepted connections from unknown endpoints held at once (each costs a handshake wait)."""
    handover: float = 1.0
    """Seconds a TCP path is kept once a UDP path to the peer took over (`TcpPunch.hand_over`): the
    peer's UDP path may become current a probe's round trip after ours."""


@dataclass(frozen=True)
class PathUp:
    """A TCP path to `peer_key` is ready; messages for `endpoint` go on it."""

    peer_key: bytes
    endpoint: TcpEndpoint


@dataclass(frozen=True)
class PathDown:
    """The TCP path to `peer_key` is gone."""

    peer_key: bytes
    reason: str


@dataclass(frozen=True)
class WantPunch:
    """Ask the coord to make `peer_key` and us punch again (``punch_request``)."""

    peer_key: bytes


@dataclass(frozen=True)
class ProbePath:
    """Probe the TCP path to `peer_key` now (the peer core's probe, answered over the same
    connection): the path's check after the host's network came back (`meshvpn.node.tcpresume`)."""

    peer_key: bytes


Action = Union[TcpConnect, TcpWrite, TcpAbort, PathUp, PathDown, WantPunch, ProbePath]


class ConnState(enum.StrEnum):
    """Where one TCP connection stands."""

    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"


@dataclass(eq=False)
class Conn:
    conn_id: int
    endpoint: Endpoint
    peer_key: Optional[bytes]
    """None for an accepted connection whose peer the channel has yet to name."""
    state: ConnState
    deadline: float
    channel: Union[ClientChannel, ServerChannel, None] = None
    last_rx: float = 0.0
    last_tx: float = 0.0


@dataclass(eq=False)
class TcpCampaign:
    """One peer's TCP punching (kept on the peer, ``Peer.tcp``): the campaign, its connections and the path."""

    key: bytes
    candidates: tuple[Candidate, ...]
    """The peer's TCP endpoints, most likely first: where we connect, and where it connects from."""
    sources: tuple[str, ...] = ()
    """Other addresses the peer may connect from (its NAT's public UDP address)."""
    attempts_left: int = 0
    next_attempt: Optional[float] = None
    repunch_at: Optional[float] = None
    repunch_gap: float = 0.0
    path: Optional[Conn] = None
    conns: set = field(default_factory=set)
    handover_until: Optional[float] = None
    """While a UDP path takes over: when the TCP path closes, unless the peer closed it first."""
    resume: TcpResume = field(default_factory=TcpResume)
    """The check of the path once the host's network is back (and of the paths that replace it)."""
