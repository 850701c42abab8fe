"""Which relay a relayed pair takes: the one with the lowest round trip for the pair.

Each node reports its round trip to its ready relays through the coord (``relay_home``'s
``rtts``, shown to its peers as ``PeerInfo.relay_rtts``), and each end of a relayed pair takes the
relay with the lowest sum of both ends' reported round trips. Both ends compute the same function
of the same two reports (their own as sent, the peer's as the coord relayed it), so they land on
the same relay, ties going to the lower name. The reports carry the hysteresis: a node reports
again only when a relay became ready or stopped being, or a round trip moved by at least
`SWITCH_FRACTION` and `SWITCH_MS`, and value changes at most every `REPORT_INTERVAL` seconds, so
the pair moves only for a real, lasting change. A peer that reports nothing (a node from before)
keeps the old choice: its home relay.

Through the coord rather than in-band: the coord already carries every fact a peer needs to reach
another (home relay, endpoints), reaches peers with no session yet, and a relayed pair needs the
answer before its first packet. Sans-IO: ``now`` is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Container, Mapping, Optional

from meshvpn.control import messages as m

SWITCH_FRACTION = 0.2
"""A round trip is reported again when it moved by at least this fraction of the reported one..."""
SWITCH_MS = 5
"""... and by at least this many milliseconds."""
REPORT_INTERVAL = 30.0
"""Seconds between reports of changed round trips alone (a relay ready or gone is reported at once)."""


def pair_relay(ours: Mapping[str, int], theirs: Optional[tuple[m.RelayRtt, ...]]) -> Optional[str]:
    """The relay with the lowest our + their round trip among those both ends report; None when
    the peer reports none or no relay is common (the caller then keeps the peer's home)."""
    sums = [(rtt.ms + ours[rtt.relay], rtt.relay) for rtt in theirs or () if rtt.relay in ours]
    return min(sums)[1] if sums else None


class RelayReason(Enum):
    """Why a relayed pair goes through the relay it does (`meshvpn status`)."""

    LOWEST_SUM = "lowest sum"
    """Both ends report round trips: the relay with the lowest sum of the two."""
    PEER_HOME = "peer's home"
    """The peer reports none we share (or its choice is not ready here): its home relay."""
    OWN_HOME = "our home"
    """Neither of the above is ready on our side: our home relay."""


@dataclass(frozen=True)
class RelayChoice:
    """The relay a relayed pair takes, and why."""

    relay: Optional[str]
    """The relay's name; None: our home."""
    reason: RelayReason


def choose_relay(ours: Mapping[str, int], ready: Container[str], info: Optional[m.PeerInfo]) -> RelayChoice:
    """The pair's relay when ready on our side, else the peer's home when ready, else our home."""
    pair = None if info is None else pair_relay(ours, info.relay_rtts)
    if pair is not None and pair in ready:
        return RelayChoice(pair, RelayReason.LOWEST_SUM)
    if info is not None and info.home_relay is not None and info.home_relay in ready:
        return RelayChoice(info.home_relay, RelayReason.PEER_HOME)
    return RelayChoice(None, RelayReason.OWN_HOME)


def relays_left(old: m.PeerInfo, new: m.PeerInfo) -> set[str]:
    """Relays the peer reported working (its round trips, or its home when it reports none) in
    `old` and no longer does in `new`: its link to them stopped being ready."""
    return _reported(old) - _reported(new)


def _reported(info: m.PeerInfo) -> set[str]:
    if info.relay_rtts is not None:
        return {rtt.relay for rtt in info.relay_rtts}
    return set() if info.home_relay is None else {info.home_relay}


def relay_sums(ours: Mapping[str, int], theirs: Optional[tuple[m.RelayRtt, ...]]) -> dict[str, dict[str, int]]:
    """Each relay both ends report, with our, their and the summed round trip (`meshvpn status`)."""
    return {rtt.relay: {"ours": ours[rtt.relay], "theirs": rtt.ms, "sum": ours[rtt.relay] + rtt.ms}
            for rtt in sorted(theirs or (), key=lambda rtt: rtt.relay) if rtt.relay in ours}


def significant(old: int, new: int) -> bool:
    """Whether a round trip moved enough from the reported one to tell the peers again."""
    return abs(new - old) >= SWITCH_MS and abs(new - old) >= SWITCH_FRACTION * old


class RttReport:
    """Our round trips to our ready relays as last reported to the coord, and when to report again."""

    def __init__(self, interval: float = REPORT_INTERVAL) -> None:
        self.interval = interval
        self.reported: dict[str, int] = {}
        """Relay name → whole milliseconds, as last sent: what our peers compute with, so we do too."""
        self._last: Optional[float] = None

    def update(self, rtts: Mapping[str, Optional[float]], now: float) -> bool:
        """Take the ready relays' round trips (seconds; None: not measured yet); whether the report
        changed and is to be sent (`message`)."""
        measured = {name: max(1, round(rtt * 1000)) for name, rtt in rtts.items() if rtt is not None}
        nearest = dict(sorted(measured.items(), key=lambda item: (item[1], item[0]))[:m.MAX_RELAY_RTTS])
        if nearest.keys() != self.reported.keys():
            return self._take(nearest, now)
        moved = any(significant(self.reported[name], ms) for name, ms in nearest.items())
        if moved and (self._last is None or now - self._last >= self.interval):
            return self._take(nearest, now)
        return False

    def message(self) -> tuple[m.RelayRtt, ...]:
        """The report as `relay_home` carries it."""
        return tuple(m.RelayRtt(name, ms) for name, ms in sorted(self.reported.items()))

    def _take(self, nearest: dict[str, int], now: float) -> bool:
        self.reported, self._last = nearest, now
        return True


def add_pair_status(entries: list[dict], infos: Mapping[str, m.PeerInfo], ours: Mapping[str, int],
                    ready: Container[str]) -> None:
    """`meshvpn status`: the round trips each peer reported (``relay_rtts``), and for a peer
    relayed through a meshvpn relay (``relay`` set) why that one (``relay_reason``) and the sums it
    was chosen from (``relay_sums``), so a surprising relay can be explained from the output alone."""
    for entry in entries:
        info = infos.get(entry["name"])
        if info is None:
            continue
        entry["relay_rtts"] = None if info.relay_rtts is None else {rtt.relay: rtt.ms for rtt in info.relay_rtts}
        if entry.get("relay"):
            entry["relay_reason"] = choose_relay(ours, ready, info).reason.value
            entry["relay_sums"] = relay_sums(ours, info.relay_rtts)
