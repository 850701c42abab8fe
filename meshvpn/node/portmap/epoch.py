"""Did the gateway restart? Its epoch against our clock (RFC 6886 §3.6, RFC 6887 §8.5).

Every NAT-PMP and PCP answer carries the server's epoch: seconds since its mapping table
started. A router that restarts forgets every mapping, and its epoch starts again from 0. Both
RFCs have the client compare how far the epoch moved with how far its own clock moved since the
previous answer, within a slack for clocks that run at different rates:

* the epoch went back by more than a second: restarted;
* NAT-PMP: the epoch is more than 2 s short of 7/8 of our elapsed time: restarted;
* PCP: the two moves differ by more than 2 s plus 1/16 of either: restarted (also when the
  server's epoch ran ahead of our clock: its state cannot be trusted).

A restart means: re-map at once. Sans-IO: `now` is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SLACK = 2.0
"""Seconds both RFCs allow on top of the rate difference."""


@dataclass
class EpochWatch:
    """The last epoch one server reported and our clock when it came."""

    symmetric: bool
    """PCP's check (both directions, 1/16); False: NAT-PMP's (epoch behind 7/8 of our time)."""
    epoch: Optional[int] = None
    at: float = 0.0

    def restarted(self, epoch: int, now: float) -> bool:
        """Record an answer's `epoch`; True when it says the server lost its mappings since the last."""
        previous, since = self.epoch, self.at
        self.epoch, self.at = epoch, now
        if previous is None:
            return False
        if epoch < previous - 1:
            return True
        server, client = epoch - previous, now - since
        if not self.symmetric:
            return server < client * 7 / 8 - SLACK
        return client + SLACK < server - server / 16 or server + SLACK < client - client / 16

