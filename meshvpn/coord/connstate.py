"""Where one coord connection stands, as data: its states, their transitions, what each accepts.

Rules (h11 ``_state.py`` style: the table is the rule, code only looks it up):

* A connection starts NEW once its channel authenticated a key. Its first message must be
  `register` (or `leave`), within `REGISTER_TIMEOUT`: pings do not keep an unregistered
  connection alive.
* `register` moves it to ONLINE, or to PENDING in a network that requires approval; an admin's
  approval moves PENDING to ONLINE. Nothing moves a connection backwards: it ends instead.
* Each state accepts a fixed set of node→coord messages; coord→node types are never accepted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable

from meshvpn.control import messages as m
from meshvpn.errors import LocalProtocolError
from meshvpn.ratelimit import TokenBucket

if TYPE_CHECKING:
    from meshvpn.coord.store import NodeRecord

REGISTER_TIMEOUT = 10.0
"""Seconds an authenticated connection has to send `register`; then it is closed."""
PUNCH_RATE = 4.0
"""Punch requests per second a node may make, on average (each makes two nodes probe)."""
PUNCH_BURST = 32.0
"""Punch requests a node may make at once: one per peer when a node with many peers starts."""


class ConnState(enum.Enum):
    """Where a connection stands."""

    NEW = "new"
    PENDING = "pending"
    ONLINE = "online"


class ConnEvent(enum.Enum):
    """What moves a connection on."""

    REGISTERED = "registered"
    """`register` accepted in a network without approval, or of an approved node."""
    AWAITS_APPROVAL = "awaits approval"
    APPROVED = "approved"


TRANSITIONS: dict[tuple[ConnState, ConnEvent], ConnState] = {
    (ConnState.NEW, ConnEvent.REGISTERED): ConnState.ONLINE,
    (ConnState.NEW, ConnEvent.AWAITS_APPROVAL): ConnState.PENDING,
    (ConnState.PENDING, ConnEvent.APPROVED): ConnState.ONLINE,
}

ACCEPTS: dict[ConnState, frozenset[type[m.Message]]] = {
    ConnState.NEW: frozenset({m.Register, m.Leave, m.Ping, m.Pong}),
    ConnState.PENDING: frozenset({m.Ping, m.Pong}),
    ConnState.ONLINE: frozenset({m.Endpoints, m.PunchRequest, m.RelayHome, m.TurnRelayed, m.Paths, m.Groups, m.Ping,
                                 m.Pong}),
}


@dataclass
class Connection:
    """One authenticated channel and what the core knows of it."""

    conn_id: Hashable
    key: bytes
    observed_host: str
    last_heard: float
    opened: float
    """When the channel authenticated: `register` is due `REGISTER_TIMEOUT` after."""
    punches: TokenBucket
    """The node's allowance of punch requests."""
    state: ConnState = ConnState.NEW
    network: str | None = None
    home_relay: str | None = None
    relay_rtts: tuple[m.RelayRtt, ...] = ()
    """The node's round trips to the relays it was offered, as it last reported them (`relay_home`)."""
    tokens_due: float | None = None
    """When the online node gets fresh relay tokens."""
    turn_relayed: tuple[m.Endpoint, ...] = ()
    """The node's relayed addresses on TURN servers (``turn_relayed``), shown to its peers."""
    observed_port: int | None = None
    """The source port of the channel as the server saw it."""
    public_tcp: m.Endpoint | None = None
    """The channel's source, once the node said it comes from its TCP punch port."""
    nat: m.NatInfo | None = None
    """The node's latest NAT report (register or endpoints)."""
    mapped: m.Endpoint | None = None
    """The node's router port mapping, as it last reported it (checked by `sane_public`)."""
    mapped_tcp: m.Endpoint | None = None
    """The router's port mapping of the node's TCP punch port, checked the same way."""
    ipv6: tuple[m.Endpoint, ...] = ()
    """The node's IPv6 endpoints, as it last reported them (checked by `sane_ipv6`)."""
    sample: m.Endpoint | None = None
    """The port sample of the node's latest punch request, and when it came."""
    sample_at: float = 0.0
    tcp_sample: m.Endpoint | None = None
    """The TCP port sample of the node's latest punch request (`meshvpn.stuntcp`), and when it came."""
    tcp_sample_at: float = 0.0
    paths: dict[str, str | None] = field(default_factory=dict)
    """The node's reported path kind per peer name (`Paths`), only for peers of its network."""
    deltas: int = 0
    """The `peer_delta` format the node takes (`delta_format`); 0: none, one `peer_update` or
    `peer_remove` per change."""
    lan_party: bool = False
    """The node registered with `lan_party`: it takes `access` while online (`meshvpn.coord.lanpush`)."""
    access: m.AccessInfo | None = None
    """The rules the node was last sent."""
    groups: tuple[str, ...] = ()
    """The multicast groups the node last said it joined, shown to its peers."""
    groups6: tuple[str, ...] = ()
    """The same for IPv6 groups (`Groups.groups6`)."""
    peer_relays: bool = False
    """The node registered with `peer_relays`: it takes `relays` and may relay (`meshvpn.coord.peerrelays`)."""
    offered: tuple[tuple[m.RelayInfo, ...], bool] | None = None
    """The relays, and whether it relays itself, the node was last told."""

    @classmethod
    def opened_at(cls, conn_id: Hashable, key: bytes, host: str, now: float, port: int | None) -> Connection:
        return cls(conn_id, key, host, now, now, TokenBucket(PUNCH_RATE, PUNCH_BURST, now), observed_port=port)

    def advance(self, event: ConnEvent) -> None:
        """Apply `event`; an event the table does not allow here is the core's own bug."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise LocalProtocolError(f"{event.value} is not possible while {self.state.value}") from None

    def accepts(self, message: m.Message) -> bool:
        return type(message) in ACCEPTS[self.state]

    def deadline(self, silence_limit: float) -> float:
        """When the connection is closed unless it is heard from (or registers) first."""
        silent = self.last_heard + silence_limit
        return min(silent, self.opened + REGISTER_TIMEOUT) if self.state is ConnState.NEW else silent


def delta_format(register: m.Register) -> int:
    """The `peer_delta` format to send a node that registered with `register`: the newest both
    ends know, 1 for a node that says only `deltas` (its release knew no other), 0 without."""
    return min(register.delta_version or 1, m.DELTA_VERSION) if register.deltas else 0


def peer_info(node: NodeRecord, conn: Connection | None) -> m.PeerInfo:
    """What peers see of `node`: its record, and while it is online on `conn` the live facts."""
    return m.PeerInfo(
        key=node.key,
        name=node.name,
        address=node.address,
        online=conn is not None,
        local_endpoints=node.local_endpoints,
        public_endpoint=node.public_endpoint,
        observed_host=None if conn is None else conn.observed_host,
        home_relay=None if conn is None else conn.home_relay,
        turn_relayed=(conn.turn_relayed or None) if conn is not None else None,
        public_tcp=None if conn is None else conn.public_tcp,
        last_seen=node.last_seen,
        nat=None if conn is None else conn.nat,
        groups=(conn.groups or None) if conn is not None else None,
        groups6=(conn.groups6 or None) if conn is not None else None,
        mapped_endpoint=None if conn is None else conn.mapped,
        mapped_tcp=None if conn is None else conn.mapped_tcp,
        ipv6_endpoints=(conn.ipv6 or None) if conn is not None else None,
        relay_rtts=(conn.relay_rtts or None) if conn is not None else None,
    )
