"""The timing of one peer's path machine (`meshvpn.node.pathfinder`): discovery, upkeep, silence
(`meshvpn.node.silence`) and the family race (`meshvpn.node.family`), in one config object."""

from __future__ import annotations

from dataclasses import dataclass

from meshvpn.backoff import doubling
from meshvpn.node.family import RaceTiming
from meshvpn.node.silence import SilenceTiming


@dataclass
class PathFinderConfig(SilenceTiming, RaceTiming):
    """Timing of path discovery and upkeep; every default is the documented one."""

    keepalive: float = 25.0
    """Seconds between probes on a path that traffic keeps proving, to hold NAT mappings."""
    liveness_interval: float = 2.0
    """Seconds between probes on a path nothing has been heard on for this long."""
    path_timeout: float = 10.0
    """Seconds without a reply or traffic after which a direct path is dead."""
    relay_after: float = 2.0
    """Seconds after the first punch before the relay is used if there is no direct path."""
    punch_interval: float = 0.2
    """Seconds between the rounds of a punch burst."""
    punch_burst: int = 5
    """Rounds in a burst before backoff starts."""
    backoff_initial: float = 1.0
    """First gap after the burst; it doubles every round."""
    backoff_max: float = 30.0
    """Largest gap between background punch rounds."""
    selection_window: float = 0.1
    """Seconds after a path is picked during which a lower-RTT reply replaces it."""
    max_observed: int = 8
    """Observed endpoints kept (most recent); bounds what a roaming peer can make us probe."""
    max_pending: int = 256
    """Probes awaiting a reply that are remembered; the oldest are forgotten first."""
    fast_window: float = 60.0
    """Seconds after a fall back from a direct path during which punch rounds stay close together."""
    fast_backoff_max: float = 2.0
    """Largest gap between punch rounds within `fast_window`."""

    def round_gap(self, rounds: int, fast: bool) -> float:
        """Seconds from punch round `rounds` to the next while no direct path holds (`fast`: within `fast_window`)."""
        if rounds < self.punch_burst:
            return self.punch_interval
        gap = doubling(self.backoff_initial, self.backoff_max, rounds - self.punch_burst)
        return min(gap, self.fast_backoff_max) if fast else gap
