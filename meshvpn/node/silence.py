"""Silence on a path that carries traffic: noticed within a second, not after `path_timeout`.

A path that only carries probes is judged by them (`liveness_interval`, `path_timeout`). But when
traffic goes out and nothing comes back, the path most likely broke under us (a NAT re-mapped
us, a relay died), and the transfer stalls until we notice. So, per peer:

* direct path (UDP, or a TCP path from `meshvpn.node.tcp.core`, whose own `idle_timeout` is
  10 s: a NAT that re-mapped us leaves the connection open and silent): sent since the last thing heard, and nothing heard for `silence_after`: probe
  at once, again halfway through `silence_timeout` (at least three RTTs); nothing heard by
  then: the path is dead (`Verdict.DEAD`).
  Traffic from the peer through a relay while we send on a direct path that has been silent
  for `silence_after` means the peer gave up on it: dead at once. "While we send" includes an
  answer sent in the same instant as the last thing heard (an echo: nothing came since to
  answer), and the data path reports the peer's move to a relay as it happens
  (``Node.relayed_on_direct``), so both ends fall back together without waiting for a look.
  The peer's newest authenticated probe from another endpoint since the path was last heard
  moves a silent path there at once (`probed_from`, `roam_target`): a NAT re-mapped one of us,
  and where the peer's data no longer gets through, its probes are all that shows the new
  endpoint. Only the newest stamp counts, as only the newest data moves a path (a copy of an
  older probe, held back and sent from elsewhere, moves nothing), and only a suspect path moves:
  a path that answers is kept.
* relay path: sent since the last thing that came through a relay, and nothing for
  `silence_after`: check the relays (`Verdict.CHECK_RELAY`). While nothing comes through a relay
  the next checks wait twice as long each time, up to `RELAY_CHECK_MAX`: a one-way flow (a peer
  that never answers) would otherwise have the relays checked every `silence_after`, and the
  links' own hellos already say every 2 s whether a relay lives.

Sans-IO: `PathFinder` feeds it what it knows and acts on the verdict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from meshvpn.wire import Endpoint


@dataclass(frozen=True)
class RelaySilent:
    """Traffic went out through a relay and nothing came back for `silence_after`: check the relays."""


@dataclass(frozen=True)
class EndpointsStale:
    """A direct path died: our public mapping may have moved, so discover it again and re-punch."""

    tcp: bool = False
    """The path was a TCP path: our punch port's mapping may have moved too, which the coord sees
    only on a new connection from that port (its ``public_tcp`` for us)."""


RELAY_CHECK_MAX = 2.0
"""Longest wait between two relay checks while the peer sends nothing through a relay (the relay
links' `down_after`: by then their own hellos have found a dead relay anyway)."""


class Verdict(enum.Enum):
    """What a silent path needs now."""

    QUIET = "quiet"
    """Nothing to do."""
    PROBE = "probe"
    """Probe the direct path now."""
    DEAD = "dead"
    """The direct path stayed silent through its probes."""
    CHECK_RELAY = "check relay"
    """Ask the node to check its relays."""


@dataclass
class SilenceTiming:
    """The timers of silence detection (part of `PathFinderConfig`); every default is the documented one."""

    silence_after: float = 0.3
    """Seconds without anything heard, while traffic goes out, before the path is probed at once."""
    silence_timeout: float = 0.25
    """Seconds the probes of a silent path wait for an answer (at least three RTTs) before it is dead."""


class SilenceWatch:
    """The silence state of one peer's current path."""

    def __init__(self, timing: SilenceTiming) -> None:
        self.timing = timing
        self.last_sent = 0.0
        """When traffic to the peer last went out (the data path's time)."""
        self.relay_heard = 0.0
        """When authenticated traffic from the peer last came through a relay."""
        self.relay_checked = 0.0
        """When the relay was last checked, or the relay path taken."""
        self.relay_checks = 0
        """Checks in a row with nothing through a relay, since `relay_heard` was `_checks_since`."""
        self._checks_since = 0.0
        self._checked_at = 0.0
        """`relay_checked` as the last check set it (the path finder sets it anew for a new relay path)."""
        self.suspect_at: Optional[float] = None
        """When the direct path was found silent and first probed; None while it is not."""
        self._probed_from: Optional[tuple[Endpoint, float]] = None

    def suspect(self, now: float) -> bool:
        """Suspect the path now, silent or not (its probes decide); False if it already was."""
        if self.suspect_at is not None:
            return False
        self.suspect_at = now
        return True

    def probed_from(self, src: Endpoint, at: float) -> None:
        """The peer's probe with its newest stamp came from `src`, not the direct path's endpoint, at `at`."""
        self._probed_from = (src, at)

    def roam_target(self, last_heard: float) -> Optional[Endpoint]:
        """Where a suspect direct path moves now: the source of the peer's newest probe since it was last heard."""
        probed = self._probed_from
        if self.suspect_at is None or probed is None or probed[1] < last_heard:
            return None
        self._probed_from = None
        return probed[0]

    def timeout(self, rtt: Optional[float]) -> float:
        """How long a silent direct path's probes wait: `silence_timeout`, or three RTTs if longer."""
        return max(self.timing.silence_timeout, 3 * (rtt or 0.0))

    def deadline(self, direct: bool, on_relay: bool, last_heard: float, last_probe: float,
                 rtt: Optional[float]) -> Optional[float]:
        """When `check` has something to do, if nothing new is heard or sent."""
        after = self.timing.silence_after
        if direct:
            if self.suspect_at is not None and last_heard < self.suspect_at:
                half = self.suspect_at + self.timeout(rtt) / 2
                return half if last_probe < half else self.suspect_at + self.timeout(rtt)
            return last_heard + after if self.last_sent > last_heard else None
        return self._relay_due() if on_relay and self.last_sent > self.relay_heard else None

    def earliest(self, direct: bool, on_relay: bool, last_heard: float) -> Optional[float]:
        """The earliest `check` could act if traffic went out now unseen (the data path sends without
        telling us at once): `deadline` whether or not anything was sent since the last thing heard.
        Until then the traffic times need no look; after it, any look may find the path silent."""
        if direct:
            return last_heard + self.timing.silence_after
        return self._relay_due() if on_relay else None

    def _relay_due(self) -> float:
        """When a relay path with traffic sent since the last thing through a relay is checked."""
        after = self.timing.silence_after
        wait = after if self._relay_fresh() else min(after * 2 ** self.relay_checks, RELAY_CHECK_MAX)
        return max(self.relay_heard, self.relay_checked) + wait

    def _relay_fresh(self) -> bool:
        """Something came through a relay, or the relay path was taken anew, since the last check."""
        return self.relay_heard > self._checks_since or self.relay_checked != self._checked_at

    def check(self, now: float, direct: bool, on_relay: bool, last_heard: float, last_probe: float,
              rtt: Optional[float]) -> Verdict:
        """What the path needs at `now`; a verdict other than QUIET is acted on by the caller."""
        if self.suspect_at is not None and (not direct or last_heard >= self.suspect_at):
            self.suspect_at = None
        if direct and self.last_sent >= last_heard > 0 and self.relay_heard > last_heard + self.timing.silence_after:
            self.suspect_at = None
            return Verdict.DEAD
        deadline = self.deadline(direct, on_relay, last_heard, last_probe, rtt)
        if deadline is None or now < deadline:
            return Verdict.QUIET
        if not direct:
            if self._relay_fresh():
                self.relay_checks, self._checks_since = 0, self.relay_heard
            self.relay_checked = self._checked_at = now
            self.relay_checks += 1
            return Verdict.CHECK_RELAY
        if self.suspect_at is None:
            self.suspect_at = now
            return Verdict.PROBE
        if now < self.suspect_at + self.timeout(rtt):
            return Verdict.PROBE
        self.suspect_at = None
        return Verdict.DEAD
