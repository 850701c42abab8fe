"""Punch requests the coord link could not send while it reconnected, sent once it registers.

Everything else the node tells the coord is state that registration sends again (endpoints, NAT
profile, relay round trips), but a ``punch_request`` is an event: one lost while the link
reconnects (a TCP path went silent, or the network changed, and both ask for a new connection at
once) leaves the peer without a punch until the node's next punch round, seconds later. The
hard side of a pair sends one right after its port sample, which is just when the link is down.
So the link keeps the newest unsent request per peer, and sends those still fresh after the
registration. A request older than `LIFETIME` is dropped: its sample is stale, and a new round
asks again anyway.
"""

from __future__ import annotations

from meshvpn.control import messages as m

LIFETIME = 3.0
"""Seconds an unsent punch request is worth sending late."""


class PunchBacklog:
    """The newest punch request per peer that found the link down."""

    def __init__(self, lifetime: float = LIFETIME) -> None:
        self.lifetime = lifetime
        self._held: dict[bytes, tuple[float, m.PunchRequest]] = {}

    def hold(self, msg: m.Message, now: float) -> None:
        """`msg` could not be sent at `now`: kept if it is a punch request."""
        if isinstance(msg, m.PunchRequest):
            self._held[msg.peer_key] = (now, msg)

    def release(self, now: float) -> list[m.PunchRequest]:
        """The requests still fresh at `now`, oldest first; the backlog is empty after."""
        held, self._held = self._held, {}
        return [msg for at, msg in sorted(held.values(), key=lambda item: item[0]) if now - at <= self.lifetime]
