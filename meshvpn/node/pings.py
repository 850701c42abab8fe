"""``meshvpn ping``: the probes one peer has not answered yet, each with the route it went out on.

Each peer holds its own `Pings` (``Peer.pings``), so a removed peer's pings go with it. The
answer names the path and the round trip; a probe unanswered after `PING_TIMEOUT` is forgotten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from meshvpn.node.events import PingReply

if TYPE_CHECKING:
    from meshvpn.node.peers import Route

PING_TIMEOUT = 5.0
"""Seconds a ``meshvpn ping`` probe waits for its reply before it is forgotten."""


class Pings:
    """One peer's ping probes in flight: tx id → (sent at, the route it went out on)."""

    def __init__(self) -> None:
        self._sent: dict[bytes, tuple[float, Route]] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def sent(self, tx_id: bytes, route: Route, now: float) -> None:
        self._sent[tx_id] = (now, route)

    def answer(self, tx_id: bytes, name: str, address: str, now: float) -> Optional[PingReply]:
        """The reply event if `tx_id` is one of our pings (answered once), else None."""
        ping = self._sent.pop(tx_id, None)
        if ping is None:
            return None
        sent_at, route = ping
        return PingReply(tx_id, name, address, route.path.kind.value, route.endpoint, now - sent_at)

    def expire(self, now: float) -> None:
        self._sent = {tx: ping for tx, ping in self._sent.items() if now < ping[0] + PING_TIMEOUT}

    def get_timer(self) -> Optional[float]:
        return min((sent_at + PING_TIMEOUT for sent_at, _ in self._sent.values()), default=None)
