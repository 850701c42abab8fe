"""The relay a relayed pair takes: the lowest sum of both ends' reported round trips, the same at
both ends, and reports that change only for a real, lasting change (fake clock)."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.node.pairrelay import (
    REPORT_INTERVAL, RelayChoice, RelayReason, RttReport, add_pair_status, choose_relay, pair_relay, relay_sums,
    relays_left, significant,
)


def report(rtts: dict[str, int]) -> tuple[m.RelayRtt, ...]:
    return tuple(m.RelayRtt(name, ms) for name, ms in rtts.items())


def test_the_pair_sum_wins_over_either_ends_own_nearest():
    a = {"server": 20, "near-a": 2, "near-b": 45}   # a alone would take near-a
    b = {"server": 20, "near-a": 45, "near-b": 2}   # b alone would take near-b
    assert pair_relay(a, report(b)) == pair_relay(b, report(a)) == "server"


def test_only_relays_both_ends_report_count_and_ties_go_to_the_lower_name():
    assert pair_relay({"x": 10, "y": 10}, report({"y": 5, "x": 5})) == "x"
    assert pair_relay({"x": 1}, report({"y": 1})) is None
    assert pair_relay({"x": 1}, None) is None
    assert pair_relay({}, report({"x": 1})) is None


RTTS = st.dictionaries(st.sampled_from(["r0", "r1", "r2", "r3", "r4"]), st.integers(1, 500), max_size=5)


@settings(max_examples=200, deadline=None)
@given(RTTS, RTTS)
def test_both_ends_always_choose_the_same_relay(a, b):
    assert pair_relay(a, report(b)) == pair_relay(b, report(a))


def test_moves_under_the_threshold_are_not_reported_and_big_ones_wait_for_the_interval():
    rtts = RttReport()
    assert rtts.update({"fra": 0.0404, "ams": None}, 0.0) and rtts.reported == {"fra": 40}
    assert not rtts.update({"fra": 0.047}, 1.0), "7 ms but under 20 %"
    assert not rtts.update({"fra": 0.060}, 2.0), "20 ms, 50 %: but within the interval"
    assert rtts.update({"fra": 0.060}, REPORT_INTERVAL) and rtts.reported == {"fra": 60}
    assert not rtts.update({"fra": 0.003}, REPORT_INTERVAL + 1)
    assert rtts.message() == (m.RelayRtt("fra", 60),)


def test_a_relay_becoming_ready_or_going_is_reported_at_once():
    rtts = RttReport()
    rtts.update({"fra": 0.040}, 0.0)
    assert rtts.update({"fra": 0.040, "host": 0.002}, 0.5) and rtts.reported == {"fra": 40, "host": 2}
    assert rtts.update({"host": 0.002}, 0.6) and rtts.reported == {"host": 2}


def test_at_most_the_eight_nearest_are_reported():
    rtts = RttReport()
    rtts.update({f"r{i:02}": (20 - i) / 1000 for i in range(12)}, 0.0)
    assert len(rtts.message()) == m.MAX_RELAY_RTTS and "r00" not in rtts.reported and "r11" in rtts.reported


def test_significance_needs_both_the_fraction_and_the_milliseconds():
    assert significant(10, 15) and not significant(10, 14)
    assert significant(100, 120) and not significant(100, 119)


def peer(home: str | None, rtts: dict[str, int] | None) -> m.PeerInfo:
    return m.PeerInfo(key=b"k" * 32, name="bob", address="100.64.0.2", online=True, home_relay=home,
                      relay_rtts=None if rtts is None else report(rtts))


def test_the_choice_says_why_and_falls_back_to_the_peers_home_then_ours():
    ours = {"east": 1, "west": 120}
    bob = peer("west", {"east": 41, "west": 1})
    assert choose_relay(ours, {"east", "west"}, bob) == RelayChoice("east", RelayReason.LOWEST_SUM)
    assert choose_relay(ours, {"west"}, bob) == RelayChoice("west", RelayReason.PEER_HOME), "the pair's not ready here"
    assert choose_relay(ours, {"west"}, peer("west", None)) == RelayChoice("west", RelayReason.PEER_HOME)
    assert choose_relay(ours, {"east"}, peer("west", None)) == RelayChoice(None, RelayReason.OWN_HOME)
    assert choose_relay(ours, {"east"}, None) == RelayChoice(None, RelayReason.OWN_HOME)


def test_status_shows_each_peers_report_and_for_a_relayed_one_the_reason_and_the_sums():
    ours = {"east": 1, "west": 120}
    entries = [{"name": "bob", "relay": "east"}, {"name": "carol"}, {"name": "dave", "relay": "west"}, {"name": "gone"}]
    infos = {"bob": peer("west", {"east": 41, "west": 1, "north": 3}), "carol": peer(None, {"east": 5}),
             "dave": peer("west", None)}
    add_pair_status(entries, infos, ours, {"east", "west"})
    bob, carol, dave, gone = entries
    assert bob["relay_rtts"] == {"east": 41, "west": 1, "north": 3} and bob["relay_reason"] == "lowest sum"
    assert bob["relay_sums"] == {"east": {"ours": 1, "theirs": 41, "sum": 42}, "west": {"ours": 120, "theirs": 1, "sum": 121}}
    assert carol == {"name": "carol", "relay_rtts": {"east": 5}}, "not relayed: its report only"
    assert (dave["relay_rtts"], dave["relay_reason"], dave["relay_sums"]) == (None, "peer's home", {})
    assert gone == {"name": "gone"}
    assert relay_sums(ours, None) == {}


def test_the_relays_a_peer_left_are_those_its_report_or_else_its_home_no_longer_names():
    peer = m.PeerInfo(key=bytes(32), name="p", address="100.64.0.9", online=True, home_relay="fra",
                      relay_rtts=report({"fra": 10, "ams": 20}))
    assert relays_left(peer, replace(peer, home_relay="ams", relay_rtts=report({"ams": 20}))) == {"fra"}
    assert relays_left(peer, replace(peer, relay_rtts=report({"fra": 60, "ams": 20, "lon": 5}))) == set()
    old = replace(peer, relay_rtts=None)
    assert relays_left(old, replace(old, home_relay="ams")) == {"fra"}, "a peer without reports: its home"
    assert relays_left(old, replace(old, home_relay=None)) == {"fra"}
