"""What the membership core takes from the coord config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from meshvpn.config import AccessPolicy
from meshvpn.control import messages as m
from meshvpn.coord.peermap import PART_BYTES
from meshvpn.coord.store import Network
from meshvpn.coord.turncreds import TurnSecret

SILENCE_KEEPALIVES = 3


@dataclass(frozen=True)
class MembershipSettings:
    """What the core takes from the coord config."""

    networks: tuple[Network, ...]
    relays: tuple[m.RelayInfo, ...] = ()
    turn: tuple[TurnSecret, ...] = ()
    """Standard TURN servers; each online node gets a credential per server with its relay tokens."""
    keepalive: float = field(kw_only=True)
    """Seconds between a node's pings; a node silent for 3 × keepalive is closed."""
    peer_map_part_bytes: int = field(default=PART_BYTES, kw_only=True)
    """Peer JSON per `peer_map` frame; a larger map is sent in parts."""
    access: Mapping[str, AccessPolicy] = field(default_factory=dict, kw_only=True)
    """Access policy by network name; a network without one lets everyone reach everyone."""
    peer_relays: Mapping[str, tuple[str, ...]] = field(default_factory=dict, kw_only=True)
    """Nodes (names, ``tag:TAG``) coord.yaml allows to relay for each network (`coord.peerrelays`)."""

    @property
    def silence_limit(self) -> float:
        return SILENCE_KEEPALIVES * self.keepalive
