"""PathFinder when the network changes under a path: roaming, silence, fast re-punching (plain float clock)."""

import pytest

from meshvpn.node.candidates import Candidate, CandidateKind, PortSpread, ports_above
from meshvpn.node.pathfinder import RELAY_PATH, ChangeReason, Path, PathKind, PathState
from meshvpn.node.silence import EndpointsStale, RelaySilent
from test_pathfinder import OTHER_EP, PUBLIC, PUBLIC_EP, changes, go_direct, make_finder, probes, run_timers_until

MOVED_EP = ("203.0.113.7", 50123)


def direct_finder(**config):
    finder = make_finder(PUBLIC, relay=True, **config)
    go_direct(finder)
    return finder


def test_the_newest_data_from_a_new_source_moves_the_direct_path_at_once_and_probes_it():
    finder = direct_finder()
    finder.roamed(MOVED_EP, 1.0)
    actions = finder.next_actions()
    [change] = changes(actions)
    assert (change.old, change.new, change.reason) == (Path(PathKind.DIRECT, PUBLIC_EP), Path(PathKind.DIRECT, MOVED_EP),
                                                       ChangeReason.ROAMED)
    assert [p.endpoint for p in probes(actions)] == [MOVED_EP], "the new endpoint is confirmed by a probe"
    assert any(c.endpoint == MOVED_EP and c.kind is CandidateKind.OBSERVED for c in finder.candidates)
    finder.roamed(MOVED_EP, 1.1)
    assert finder.next_actions() == [], "data from the current endpoint only counts as heard"


def test_roaming_without_a_direct_path_probes_the_source_but_keeps_the_relay():
    finder = make_finder(PUBLIC, relay=True)
    finder.want_path(0.0)
    run_timers_until(finder, 2.0)
    assert finder.current_path == RELAY_PATH
    finder.roamed(OTHER_EP, 3.0)
    actions = finder.next_actions()
    assert changes(actions) == [] and [p.endpoint for p in probes(actions)] == [OTHER_EP]


def test_traffic_out_and_nothing_back_probes_at_once_then_falls_back_within_a_second():
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.traffic_sent(10.2)
    assert finder.get_timer() == 10.3, "silence_after past the last thing heard"
    fired = run_timers_until(finder, 10.56)
    assert [(when, [p.endpoint for p in probes(a)]) for when, a in fired[:2]] == [(10.3, [PUBLIC_EP]),
                                                                                   (10.425, [PUBLIC_EP])]
    when, actions = fired[2]
    assert when == 10.55
    [change] = changes(actions)
    assert (change.new, change.reason) == (RELAY_PATH, ChangeReason.PATH_SILENT)
    assert EndpointsStale() in actions and probes(actions), "re-discover and punch at once"


def test_an_answer_during_the_probes_keeps_the_path():
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.traffic_sent(10.2)
    run_timers_until(finder, 10.3)
    finder.traffic_received(PUBLIC_EP, 10.35)
    run_timers_until(finder, 11.0)
    assert finder.state is PathState.DIRECT and finder.current_path.endpoint == PUBLIC_EP


def test_the_probes_wait_at_least_three_round_trips():
    finder = direct_finder()
    finder.stats.rtt = 0.2
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.traffic_sent(10.2)
    fired = run_timers_until(finder, 11.0)
    dead = [when for when, actions in fired if changes(actions)]
    assert dead == [10.3 + 0.6]


def test_only_traffic_sent_after_the_last_answer_counts():
    finder = direct_finder()
    finder.traffic_sent(9.0)
    finder.traffic_received(PUBLIC_EP, 10.0)
    run_timers_until(finder, 11.9)
    assert finder.state is PathState.DIRECT


def test_the_peer_sending_through_the_relay_while_the_path_is_silent_ends_it_at_once():
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.relay_traffic_received(10.2)
    finder.handle_timer(10.2)
    assert finder.state is PathState.DIRECT, "not yet silent for silence_after"
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.relay_traffic_received(10.4)
    finder.handle_timer(10.4)
    assert finder.state is PathState.DIRECT, "we send nothing: the relayed traffic may be the peer's choice"
    finder.traffic_sent(10.4)
    finder.handle_timer(10.4)
    assert [c.reason for c in changes(finder.next_actions())] == [ChangeReason.PATH_SILENT]


def test_an_answer_to_the_last_thing_heard_counts_as_sending_when_the_peer_moves_to_the_relay():
    """An echo goes out in the instant its packet came: nothing heard since, and the peer's traffic
    through the relay says it gave up on the path (the data path reports that move at once)."""
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.traffic_sent(10.0)
    finder.relay_traffic_received(10.35)
    finder.handle_timer(10.35)
    assert [c.reason for c in changes(finder.next_actions())] == [ChangeReason.PATH_SILENT]


def test_a_candidate_new_during_a_burst_is_probed_at_once_unless_the_strategy_predicts_ports():
    """The peer re-mapped under a flow announces its new mapping just after we fell back: probed
    then, not at the burst's next round; a port-predicting strategy keeps its rounds (behind a
    counting NAT a probe out of turn takes the port the peer predicted)."""
    moved = Candidate(MOVED_EP, CandidateKind.PUBLIC)
    finder = make_finder(PUBLIC, relay=True)
    finder.punch(0.0)
    assert [p.endpoint for p in probes(finder.next_actions())] == [PUBLIC_EP]
    finder.set_candidates([PUBLIC, moved], 0.05)
    assert [p.endpoint for p in probes(finder.next_actions())] == [MOVED_EP], "the new one only, at once"
    finder.set_candidates([PUBLIC, moved], 0.06)
    assert probes(finder.next_actions()) == [], "known ones wait for the round"
    predicting = make_finder(PUBLIC, relay=True)
    predicting.strategy = PortSpread(ports_above(3))
    predicting.punch(0.0)
    predicting.next_actions()
    predicting.set_candidates([PUBLIC, moved], 0.05)
    assert probes(predicting.next_actions()) == []


def test_a_silent_relay_path_asks_for_relay_checks_further_apart_until_the_peer_is_heard():
    """A one-way flow (the peer never answers) has the relays checked after `silence_after`, then
    twice as long each time up to `RELAY_CHECK_MAX` (the relay links' own `down_after`), not every
    `silence_after`; once the peer is heard through a relay the first check is quick again."""
    finder = make_finder(PUBLIC, relay=True)
    finder.want_path(0.0)
    run_timers_until(finder, 2.0)
    finder.next_actions()
    finder.relay_traffic_received(2.5)
    finder.traffic_sent(2.6)
    assert finder.get_timer() <= 2.8
    checks = [when for when, actions in run_timers_until(finder, 9.0) if RelaySilent() in actions]
    assert checks == pytest.approx([2.8, 3.4, 4.6, 6.6, 8.6])
    finder.relay_traffic_received(9.0)
    assert all(RelaySilent() not in actions for _, actions in run_timers_until(finder, 9.5)), "nothing sent since"
    finder.traffic_sent(9.6)
    checks = [when for when, actions in run_timers_until(finder, 10.5) if RelaySilent() in actions]
    assert checks == pytest.approx([9.3, 9.9]), "silence_after after the peer was last heard, then doubling again"


def test_after_a_fall_back_punch_rounds_stay_two_seconds_apart_for_a_minute():
    finder = direct_finder()
    finder.handle_timer(100.0)
    assert finder.current_path == RELAY_PATH
    rounds = [when for when, actions in run_timers_until(finder, 200.0) if probes(actions)]
    gaps = [b - a for a, b in zip(rounds, rounds[1:])]
    in_window = [g for a, g in zip(rounds, gaps) if a < 160.0]
    assert max(in_window) == 2.0
    assert max(gaps) > 2.0, "after the window the usual backoff returns"


def silent_finder():
    """A direct path that carried traffic until 10.0 and has been suspect (probed) since 10.3."""
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.traffic_sent(10.2)
    run_timers_until(finder, 10.3)
    assert finder._silence.suspect_at == 10.3
    return finder


def test_the_peers_newest_probe_from_a_new_source_moves_a_silent_path_at_once():
    finder = silent_finder()
    finder.probe_received(MOVED_EP, 10.35, newest=True)
    actions = finder.next_actions()
    [change] = changes(actions)
    assert (change.new, change.reason) == (Path(PathKind.DIRECT, MOVED_EP), ChangeReason.ROAMED)
    assert [p.endpoint for p in probes(actions)] == [MOVED_EP], "a probe confirms the round trip"
    run_timers_until(finder, 10.6)
    assert finder.current_path == Path(PathKind.DIRECT, MOVED_EP)


def test_a_probe_that_is_not_the_newest_moves_nothing():
    finder = silent_finder()
    finder.probe_received(MOVED_EP, 10.35, newest=False)
    assert changes(finder.next_actions()) == []
    assert finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)


def probed_before_silence(sent: float, probed: float):
    """A direct path heard at 10.0 that sent at `sent`; the peer's newest probe from elsewhere at `probed`."""
    finder = direct_finder()
    finder.traffic_received(PUBLIC_EP, 10.0)
    finder.traffic_sent(sent)
    finder.probe_received(MOVED_EP, probed, newest=True)
    assert changes(finder.next_actions()) == [], "not silent for silence_after yet"
    return finder


def test_a_path_that_answers_is_not_moved_by_a_probe_from_elsewhere():
    finder = probed_before_silence(10.1, 10.15)
    finder.traffic_received(PUBLIC_EP, 10.2)
    fired = run_timers_until(finder, 11.0)
    assert all(changes(actions) == [] for _, actions in fired), "heard on the path after the probe"
    assert finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)


def test_a_newest_probe_heard_before_the_path_went_silent_moves_it_when_it_does():
    finder = probed_before_silence(10.2, 10.25)
    fired = run_timers_until(finder, 10.3)
    [(when, actions)] = [(when, actions) for when, actions in fired if changes(actions)]
    assert when == 10.3 and [c.reason for c in changes(actions)] == [ChangeReason.ROAMED]
    assert [p.endpoint for p in probes(actions)] == [MOVED_EP], "the new endpoint is probed, not the old one"


V6_EP = ("2001:db8:1::b", 41641)
NEW_V6_EP = ("2001:db8:1::10b", 41641)


def ipv6_direct_finder():
    """An idle direct path over the peer's global IPv6 address, last heard at 10.0."""
    finder = make_finder(PUBLIC, Candidate(V6_EP, CandidateKind.IPV6), relay=True)
    go_direct(finder, V6_EP)
    finder.traffic_received(V6_EP, 10.0)
    finder.next_actions()
    return finder


def test_a_path_to_an_address_the_peer_no_longer_announces_moves_to_its_newest_probe_at_once():
    finder = ipv6_direct_finder()
    finder.probe_received(NEW_V6_EP, 10.5, newest=True)
    assert changes(finder.next_actions()) == [], "an idle path that is not suspect stays"
    finder.set_candidates([PUBLIC, Candidate(NEW_V6_EP, CandidateKind.IPV6)], 10.6)
    actions = finder.next_actions()
    [change] = changes(actions)
    assert (change.new, change.reason) == (Path(PathKind.DIRECT, NEW_V6_EP), ChangeReason.ROAMED)
    assert [p.endpoint for p in probes(actions)] == [NEW_V6_EP]


def test_a_path_to_an_address_the_peer_no_longer_announces_is_probed_and_left_if_silent():
    finder = ipv6_direct_finder()
    finder.set_candidates([PUBLIC, Candidate(NEW_V6_EP, CandidateKind.IPV6)], 10.6)
    assert [p.endpoint for p in probes(finder.next_actions())] == [V6_EP], "the old path is probed at once"
    fired = run_timers_until(finder, 11.0)
    [change] = [c for _, actions in fired for c in changes(actions)]
    assert change.old == Path(PathKind.DIRECT, V6_EP) and change.reason is ChangeReason.PATH_SILENT
    assert fired[-1][0] <= 10.6 + finder._silence.timeout(finder.stats.rtt)


def test_a_path_that_answers_stays_though_its_address_left_the_announcement():
    finder = ipv6_direct_finder()
    finder.set_candidates([PUBLIC], 10.6)
    finder.next_actions()
    finder.traffic_received(V6_EP, 10.65)
    fired = run_timers_until(finder, 12.0)
    assert all(changes(actions) == [] for _, actions in fired)
    assert finder.current_path == Path(PathKind.DIRECT, V6_EP)


def test_a_public_mapping_left_out_of_the_candidates_suspects_nothing():
    """A hard NAT's port sample replaces the public candidates; the peer still holds its mapping."""
    finder = direct_finder()
    finder.set_candidates([Candidate(OTHER_EP, CandidateKind.PUBLIC)], 1.0)
    assert finder.next_actions() == [] and finder._silence.suspect_at is None
