"""The vocabulary of a peer's path machine (`meshvpn.node.pathfinder`): the kinds of path, the
machine's states, why a path changed, and what the machine asks its caller to do.

Apart from the machine so that it stays one concept; `meshvpn.node.pathfinder` re-exports all of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshvpn.node.silence import EndpointsStale, RelaySilent
from meshvpn.wire import Endpoint


class PathKind(enum.StrEnum):
    """How packets reach the peer."""

    LAN = "lan"
    DIRECT = "direct"
    TCP = "tcp"
    RELAY = "relay"


@dataclass(frozen=True)
class Path:
    """A way to reach the peer: straight to an endpoint, or through the relay (no endpoint)."""

    kind: PathKind
    endpoint: Endpoint | None = None


RELAY_PATH = Path(PathKind.RELAY)


class PathState(enum.StrEnum):
    """Where the machine is; derived from the current path and the punch campaign."""

    IDLE = "idle"
    """Never asked for a path."""
    PUNCHING = "punching"
    """Probing, with no path to use yet."""
    RELAYED = "relayed"
    """Using the relay, probing in the background."""
    TCP = "tcp"
    """Using a direct TCP path, probing for a UDP one in the background."""
    DIRECT = "direct"
    """Using a proven LAN or public path, probing it to keep it alive."""


class ChangeReason(enum.StrEnum):
    """Why the current path changed."""

    PUNCHED = "punched"
    """A probe reply proved a direct path while there was none (or only the relay)."""
    BETTER_PATH = "better path"
    """A LAN path beat a public one, or a lower-RTT path answered within the window."""
    RELAY_FALLBACK = "relay fallback"
    """No direct path `relay_after` seconds after the punch started."""
    PATH_TIMEOUT = "path timeout"
    """Nothing heard on the direct path for `path_timeout`."""
    RELAY_LOST = "relay lost"
    """The relay stopped being ready while we used it."""
    TCP_PUNCHED = "tcp punched"
    """A direct TCP path came up while there was no path or only the relay."""
    TCP_LOST = "tcp lost"
    """The TCP path we used closed or went silent."""
    ROAMED = "roamed"
    """The newest authenticated data came from another endpoint of the peer."""
    PATH_SILENT = "path silent"
    """Traffic went out and neither it nor probes were answered within `silence_timeout`."""


@dataclass(frozen=True)
class SendProbe:
    """Send a path probe carrying `tx_id` to `endpoint`."""

    endpoint: Endpoint
    tx_id: bytes


@dataclass(frozen=True)
class PathChanged:
    """The path to use changed; `None` means no way to reach the peer right now."""

    old: Path | None
    new: Path | None
    reason: ChangeReason


Action = SendProbe | PathChanged | RelaySilent | EndpointsStale


@dataclass
class PathStats:
    """Numbers about the current path and the probing, for status output and tests."""

    rtt: float | None = None
    """Smoothed round-trip time of the current direct path (RFC 6298 weights)."""
    last_reply: float | None = None
    """When the last probe reply on the current path arrived."""
    probes_sent: int = 0
    replies: int = 0
    unmatched_replies: int = 0
    """Replies whose transaction id was unknown, forgotten or older than `path_timeout` (late or forged)."""
    misrouted_replies: int = 0
    """Replies to a probe that came from another endpoint than the probe went to: no proof of that endpoint."""
    path_changes: int = 0
