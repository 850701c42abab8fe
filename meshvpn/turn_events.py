"""What a TURN client (`meshvpn.turn`) takes and gives: its timers, its states and its events.

Apart from the client so that the node's TURN machines and the event log can name them without
the client's transaction logic, and so that the client stays one concept: the transactions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

from meshvpn.stun import MAX_RETRANSMITS, RTO
from meshvpn.stun_codec import Address


@dataclass
class TurnConfig:
    """Timers of one allocation; every default is the documented one."""

    lifetime: int = 600
    """LIFETIME asked for in Allocate and Refresh, seconds."""
    refresh_margin: float = 60.0
    """Refresh this long before the allocation expires (at least half its lifetime before)."""
    permission_refresh: float = 240.0
    """Seconds between CreatePermission for a peer IP: a minute before its 300 s run out."""
    channel_refresh: float = 540.0
    """Seconds between ChannelBind refreshes: a minute before its 600 s run out."""
    retry_initial: float = 1.0
    """First wait before allocating again after a failure; doubles per failure."""
    retry_max: float = 60.0
    """Longest wait between allocation attempts."""
    rto: float = RTO
    """Initial retransmission timeout of every request."""
    max_retransmits: int = MAX_RETRANSMITS
    """Retransmissions of a request before it times out."""


class AllocationState(enum.StrEnum):
    """Where the allocation stands."""

    IDLE = "idle"
    ALLOCATING = "allocating"
    READY = "ready"
    FAILED = "failed"
    """No allocation; another attempt follows at `retry_at`."""
    CLOSED = "closed"


@dataclass(frozen=True)
class AllocationReady:
    """The server allocated `relayed` for us; it saw us at `mapped`."""

    relayed: Address
    mapped: Optional[Address]
    lifetime: int


@dataclass(frozen=True)
class AllocationLost:
    """The allocation failed or expired; channels and permissions are gone with it."""

    reason: str


@dataclass(frozen=True)
class ChannelBound:
    """`peer` is reachable through ChannelData on `channel`."""

    peer: Address
    channel: int


@dataclass(frozen=True)
class DataReceived:
    """A Data indication: `data` came from `peer` (a peer without a channel yet)."""

    peer: Address
    data: bytes


Event = Union[AllocationReady, AllocationLost, ChannelBound, DataReceived]
