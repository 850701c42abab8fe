"""The home relay's hysteresis (`meshvpn.node.relay.home`), on a fake clock: a dead home is left at
once, a live one only for a relay that stayed better by the margin for `HOME_HOLD` without a
break, and a relay ready for the first time takes home at once if it is better."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from meshvpn.node.relay.home import HOME_HOLD, SWITCH_RATIO, HomeChoice


@dataclass(eq=False)
class Link:
    name: str
    ready: bool = True
    rtt: Optional[float] = None


def test_the_first_home_is_the_fastest_ready_relay_and_none_without_one() -> None:
    choice = HomeChoice()
    near, far = Link("near", ready=False, rtt=0.01), Link("far", ready=False)
    assert choice.choose([near, far], 0.0) is None
    far.ready, far.rtt = True, 0.08
    assert choice.choose([near, far], 0.1) is far
    near.ready = True
    assert choice.choose([near, far], 0.2) is near, "a relay ready for the first time and better takes home at once"


def test_a_live_home_is_left_only_after_the_other_stayed_better_for_the_hold() -> None:
    choice = HomeChoice()
    home, other = Link("home", rtt=0.05), Link("other", rtt=0.06)
    assert choice.choose([home, other], 0.0) is home
    other.rtt = 0.02  # now better by the margin
    assert choice.choose([home, other], 1.0) is home
    assert choice.deadline() == 1.0 + HOME_HOLD
    assert choice.choose([home, other], 1.0 + HOME_HOLD - 0.01) is home
    assert choice.choose([home, other], 1.0 + HOME_HOLD) is other
    assert choice.deadline() is None


def test_a_break_in_being_better_starts_the_hold_again() -> None:
    choice = HomeChoice()
    home, other = Link("home", rtt=0.05), Link("other", rtt=0.06)
    choice.choose([home, other], 0.0)
    other.rtt = 0.02
    choice.choose([home, other], 1.0)
    other.rtt = SWITCH_RATIO * 0.05 + 0.001  # no longer better by the margin
    choice.choose([home, other], 5.0)
    assert choice.deadline() is None
    other.rtt = 0.02
    choice.choose([home, other], 6.0)
    assert choice.choose([home, other], 1.0 + HOME_HOLD) is home
    assert choice.choose([home, other], 6.0 + HOME_HOLD) is other


def test_a_relay_better_by_less_than_the_margin_never_takes_a_live_home() -> None:
    choice = HomeChoice()
    home, other = Link("home", rtt=0.05), Link("other", rtt=0.06)
    choice.choose([home, other], 0.0)
    other.rtt = SWITCH_RATIO * 0.05 + 0.001
    assert choice.choose([home, other], 100.0) is home and choice.deadline() is None


def test_a_dead_or_removed_home_is_left_at_once_for_the_fastest_ready_relay() -> None:
    choice = HomeChoice()
    home, slow, fast = Link("home", rtt=0.01), Link("slow", rtt=0.09), Link("fast", rtt=0.04)
    choice.choose([home, slow, fast], 0.0)
    home.ready = False
    assert choice.choose([home, slow, fast], 0.5) is fast
    assert choice.choose([slow], 0.6) is slow, "a relay no longer announced is left at once"


def test_a_relay_on_a_fragile_path_takes_home_back_only_once_it_held_for_the_hold() -> None:
    choice = HomeChoice()
    server, peer = Link("server", rtt=0.08), Link("peer", rtt=0.01)
    assert choice.choose([server, peer], 0.0) is peer
    peer.ready = False  # its path died
    assert choice.choose([server, peer], 1.0) is server
    peer.ready = True  # punched again
    assert choice.choose([server, peer], 8.0) is server, "not at once: it was lost before"
    peer.ready = False  # and died again within the hold
    assert choice.choose([server, peer], 12.0) is server
    peer.ready = True
    assert choice.choose([server, peer], 20.0) is server
    assert choice.deadline() == 20.0 + HOME_HOLD
    assert choice.choose([server, peer], 20.0 + HOME_HOLD) is peer
