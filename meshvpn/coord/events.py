"""What the membership core hands out: the actions it queues for its shell (`Send`, `SendMap`,
`Close`, `Log`), and for admins a node's status and the error of a request that cannot be met."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Union

from meshvpn.control import messages as m
from meshvpn.coord.store import NodeRecord
from meshvpn.errors import MeshError


@dataclass(frozen=True)
class Send:
    """Send `message` on connection `conn_id`."""

    conn_id: Hashable
    message: m.Message
    payload: bytes | None = field(default=None, compare=False, repr=False)
    """`message` already encoded (peer maps and updates, from each peer's cached JSON), or None."""


@dataclass(frozen=True)
class SendMap:
    """Send connection `conn_id` its full peer map (`Membership.peer_map`), when the shell has
    room: after a restart thousands of nodes register at once, and their maps built together
    would all sit in memory (megabytes each at 10,000 nodes)."""

    conn_id: Hashable


@dataclass(frozen=True)
class Close:
    """Close connection `conn_id` (after flushing what was sent before); the core forgot it."""

    conn_id: Hashable
    reason: str


@dataclass(frozen=True)
class Log:
    """Something an operator may want in the server log; `fields` are structured extras."""

    level: str
    text: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Announce:
    """Every online node of `network` but `subject` itself must hear `message` (a peer update or
    removal about `subject`). `Membership.actions()` turns it into one `Send` per node unless the
    caller takes it whole (`meshvpn.coord.fanout` coalesces it per network instead)."""

    network: str
    subject: bytes
    message: m.Message
    payload: bytes | None = field(default=None, compare=False, repr=False)
    relayed: bool = False
    """It repeats a change another coord instance made (`changed_elsewhere`), which that
    instance already told the others about."""


@dataclass(frozen=True)
class PunchElsewhere:
    """Ask the other coord instances to send `punch` to node `peer` of `network`, online on one of
    them: a node of this instance asked to punch it, and got the mirror `punch` here."""

    network: str
    peer: bytes
    punch: m.Punch


Action = Union[Send, SendMap, Close, Log, Announce, PunchElsewhere]


@dataclass(frozen=True)
class NodeStatus:
    """A node as admins see it: the stored record plus live connection facts."""

    node: NodeRecord
    online: bool
    pending_approval: bool
    observed_host: str | None
    home_relay: str | None
    paths: Mapping[str, str | None] = field(default_factory=dict)
    """The online node's path kind to each peer, by peer name, as it last reported them."""
    peer_relay: bool = False
    """An admin allowed the node to relay for its network (`meshvpn.coord.peerrelays`)."""


class AdminError(MeshError):
    """An admin request names something that does not exist, or asks for the impossible."""
