"""PathFinder unit tests: exact timers and transitions with a plain float clock."""

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.node.candidates import (
    AllCandidates,
    Candidate,
    CandidateKind,
    PortSpread,
    ports_above,
    random_ports,
)
from meshvpn.node.pathfinder import (
    RELAY_PATH,
    ChangeReason,
    Path,
    PathChanged,
    PathFinder,
    PathFinderConfig,
    PathKind,
    PathState,
    SendProbe,
)

LAN_EP = ("192.168.1.20", 41641)
PUBLIC_EP = ("203.0.113.7", 41641)
OTHER_EP = ("198.51.100.9", 50000)
LAN = Candidate(LAN_EP, CandidateKind.LAN)
PUBLIC = Candidate(PUBLIC_EP, CandidateKind.PUBLIC)


def counting_rng():
    counter = itertools.count(1)
    return lambda: next(counter).to_bytes(8, "big")


def make_finder(*candidates, relay=False, **config):
    finder = PathFinder(counting_rng(), PathFinderConfig(**config))
    finder.set_candidates(candidates, 0.0)
    if relay:
        finder.relay_ready(True, 0.0)
    return finder


def probes(actions):
    return [a for a in actions if isinstance(a, SendProbe)]


def changes(actions):
    return [a for a in actions if isinstance(a, PathChanged)]


def probe_to(actions, endpoint):
    (probe,) = [a for a in probes(actions) if a.endpoint == endpoint]
    return probe


def run_timers_until(finder, until):
    """Fire the timer until `until`; returns (time, actions) per firing."""
    fired = []
    while (when := finder.get_timer()) is not None and when <= until:
        finder.handle_timer(when)
        fired.append((when, finder.next_actions()))
    return fired


def go_direct(finder, endpoint=PUBLIC_EP, at=0.05):
    finder.punch(0.0)
    probe = probe_to(finder.next_actions(), endpoint)
    finder.probe_reply_received(probe.tx_id, endpoint, at)
    return finder.next_actions()


def test_punch_probes_every_candidate_at_once_lan_first():
    finder = make_finder(PUBLIC, LAN)
    assert finder.state is PathState.IDLE and finder.get_timer() is None
    finder.punch(0.0)
    actions = finder.next_actions()
    assert actions == [SendProbe(LAN_EP, (1).to_bytes(8, "big")),
                       SendProbe(PUBLIC_EP, (2).to_bytes(8, "big"))]
    assert finder.state is PathState.PUNCHING
    assert finder.get_timer() == pytest.approx(0.2)


def test_burst_of_five_then_backoff_capped_at_thirty_seconds():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    finder.next_actions()
    fired = run_timers_until(finder, 100.0)
    assert [when for when, _ in fired] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.8, 3.8, 7.8, 15.8, 31.8, 61.8, 91.8])
    assert all(len(probes(actions)) == 1 for _, actions in fired)
    assert finder.current_path is None


def test_first_reply_picks_the_path_and_ends_the_campaign():
    finder = make_finder(PUBLIC)
    actions = go_direct(finder, at=0.05)
    assert actions == [PathChanged(None, Path(PathKind.DIRECT, PUBLIC_EP), ChangeReason.PUNCHED)]
    assert finder.state is PathState.DIRECT
    assert finder.stats.rtt == pytest.approx(0.05)
    assert finder.stats.last_reply == 0.05
    # The next event is the liveness probe, not another punch round.
    assert finder.get_timer() == pytest.approx(2.05)


def test_lan_reply_beats_an_earlier_public_path():
    finder = make_finder(LAN, PUBLIC)
    finder.punch(0.0)
    sent = finder.next_actions()
    finder.probe_reply_received(probe_to(sent, PUBLIC_EP).tx_id, PUBLIC_EP, 0.03)
    finder.probe_reply_received(probe_to(sent, LAN_EP).tx_id, LAN_EP, 0.5)
    assert changes(finder.next_actions()) == [
        PathChanged(None, Path(PathKind.DIRECT, PUBLIC_EP), ChangeReason.PUNCHED),
        PathChanged(Path(PathKind.DIRECT, PUBLIC_EP), Path(PathKind.LAN, LAN_EP),
                    ChangeReason.BETTER_PATH),
    ]


def test_public_reply_never_replaces_a_lan_path():
    finder = make_finder(LAN, PUBLIC)
    finder.punch(0.0)
    sent = finder.next_actions()
    finder.probe_reply_received(probe_to(sent, LAN_EP).tx_id, LAN_EP, 0.05)
    finder.probe_reply_received(probe_to(sent, PUBLIC_EP).tx_id, PUBLIC_EP, 0.06)
    assert finder.current_path == Path(PathKind.LAN, LAN_EP)
    assert len(changes(finder.next_actions())) == 1


def _slow_then_fast_replies(second_reply_at):
    """PUBLIC answers round 0 slowly; OTHER, learned later, answers round 1 quickly."""
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    first = probe_to(finder.next_actions(), PUBLIC_EP)
    finder.set_candidates([PUBLIC, Candidate(OTHER_EP, CandidateKind.PUBLIC)], 0.1)
    assert probe_to(finder.next_actions(), OTHER_EP), "a candidate new during the burst is probed at once"
    finder.handle_timer(0.2)
    second = probe_to(finder.next_actions(), OTHER_EP)
    finder.probe_reply_received(first.tx_id, PUBLIC_EP, 0.25)
    finder.probe_reply_received(second.tx_id, OTHER_EP, second_reply_at)
    return finder


def test_lower_rtt_within_the_selection_window_wins():
    finder = _slow_then_fast_replies(second_reply_at=0.3)
    assert finder.current_path == Path(PathKind.DIRECT, OTHER_EP)
    assert finder.next_actions()[-1].reason is ChangeReason.BETTER_PATH
    assert finder.stats.rtt == pytest.approx(0.1)


def test_lower_rtt_after_the_selection_window_does_not_flap():
    finder = _slow_then_fast_replies(second_reply_at=0.36)
    assert finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)


def test_relay_after_two_seconds_then_upgrade_on_reply():
    finder = make_finder(PUBLIC, relay=True)
    finder.punch(0.0)
    finder.next_actions()
    fired = run_timers_until(finder, 2.0)
    assert [when for when, _ in fired] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.8, 2.0])
    assert fired[-1][1] == [PathChanged(None, RELAY_PATH, ChangeReason.RELAY_FALLBACK)]
    assert finder.state is PathState.RELAYED
    # Background punching continues with backoff while relayed.
    assert finder.get_timer() == pytest.approx(3.8)
    finder.handle_timer(3.8)
    probe = probe_to(finder.next_actions(), PUBLIC_EP)
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, 3.9)
    assert finder.next_actions() == [
        PathChanged(RELAY_PATH, Path(PathKind.DIRECT, PUBLIC_EP), ChangeReason.PUNCHED)]
    assert finder.get_timer() == pytest.approx(5.9)


def test_relay_that_becomes_ready_late_is_used_at_once():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    run_timers_until(finder, 2.5)
    assert finder.current_path is None
    finder.relay_ready(True, 2.5)
    assert finder.next_actions() == [PathChanged(None, RELAY_PATH, ChangeReason.RELAY_FALLBACK)]


def test_relay_lost_while_relayed():
    finder = make_finder(PUBLIC, relay=True)
    finder.punch(0.0)
    run_timers_until(finder, 2.0)
    finder.relay_ready(False, 2.1)
    assert finder.next_actions() == [PathChanged(RELAY_PATH, None, ChangeReason.RELAY_LOST)]
    assert finder.state is PathState.PUNCHING


def test_idle_path_is_probed_every_liveness_interval():
    finder = make_finder(PUBLIC)
    go_direct(finder, at=0.05)
    fired = run_timers_until(finder, 2.05)
    assert [when for when, _ in fired] == pytest.approx([2.05])
    (probe,) = fired[0][1]
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, 2.15)
    assert finder.get_timer() == pytest.approx(4.15)
    assert finder.stats.rtt == pytest.approx(0.05 + (0.1 - 0.05) / 8)


def test_path_proven_by_traffic_is_probed_only_every_keepalive():
    finder = make_finder(PUBLIC)
    go_direct(finder, at=0.05)
    for second in range(1, 40):
        finder.traffic_received(PUBLIC_EP, float(second))
        fired = run_timers_until(finder, float(second))
        assert all(when == pytest.approx(25.05) for when, _ in fired)
    assert finder.stats.probes_sent == 1 + 1  # the punch probe and one keepalive at 25.05
    assert finder.state is PathState.DIRECT


def test_silent_path_times_out_to_relay_and_punches_again():
    finder = make_finder(PUBLIC, relay=True)
    go_direct(finder, at=0.05)
    fired = run_timers_until(finder, 10.05)
    assert [when for when, _ in fired] == pytest.approx([2.05, 4.05, 6.05, 8.05, 10.05])
    last = fired[-1][1]
    assert changes(last) == [PathChanged(Path(PathKind.DIRECT, PUBLIC_EP), RELAY_PATH,
                                         ChangeReason.PATH_TIMEOUT)]
    assert [p.endpoint for p in probes(last)] == [PUBLIC_EP]
    assert finder.get_timer() == pytest.approx(10.25)


def test_silent_path_without_relay_leaves_no_path():
    finder = make_finder(PUBLIC)
    go_direct(finder, at=0.05)
    run_timers_until(finder, 10.05)
    assert finder.current_path is None and finder.state is PathState.PUNCHING


def test_traffic_from_elsewhere_does_not_keep_the_path_alive():
    finder = make_finder(PUBLIC)
    go_direct(finder, at=0.05)
    finder.traffic_received(OTHER_EP, 5.0)
    run_timers_until(finder, 10.05)
    assert finder.current_path is None
    assert Candidate(OTHER_EP, CandidateKind.OBSERVED) in finder.candidates


def test_probe_from_new_source_is_probed_back_when_not_direct():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    finder.next_actions()
    finder.probe_received(OTHER_EP, 0.1)
    assert [p.endpoint for p in probes(finder.next_actions())] == [OTHER_EP]
    finder.probe_received(OTHER_EP, 0.15)
    assert finder.next_actions() == []


def test_probe_from_new_source_is_only_remembered_when_direct():
    finder = make_finder(PUBLIC)
    go_direct(finder)
    finder.probe_received(OTHER_EP, 0.1)
    assert finder.next_actions() == []
    assert finder.candidates[-1] == Candidate(OTHER_EP, CandidateKind.OBSERVED)


def test_reply_from_another_source_proves_nothing_until_that_source_answers_itself():
    """Issue 13, finding 2: a reply forwarded from elsewhere is no round trip to the probed endpoint."""
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    probe = probe_to(finder.next_actions(), PUBLIC_EP)
    finder.probe_reply_received(probe.tx_id, OTHER_EP, 0.05)
    assert finder.current_path is None and finder.stats.misrouted_replies == 1
    assert Candidate(OTHER_EP, CandidateKind.OBSERVED) in finder.candidates
    second = probe_to(finder.next_actions(), OTHER_EP)
    finder.probe_reply_received(second.tx_id, OTHER_EP, 0.1)
    assert finder.current_path == Path(PathKind.DIRECT, OTHER_EP)


def test_a_reply_older_than_the_path_timeout_proves_nothing():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    probe = probe_to(finder.next_actions(), PUBLIC_EP)
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, finder.config.path_timeout + 0.01)
    assert finder.current_path is None and finder.stats.unmatched_replies == 1


def test_observed_sources_never_push_out_the_current_path():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    for n in range(3):
        finder.probe_received(("198.51.100.50", 5000 + n), 0.01)
    observed = probe_to(finder.next_actions(), ("198.51.100.50", 5000))
    finder.probe_reply_received(observed.tx_id, ("198.51.100.50", 5000), 0.05)
    assert finder.current_path == Path(PathKind.DIRECT, ("198.51.100.50", 5000))
    for n in range(3 * finder.config.max_observed):
        finder.traffic_received(("192.0.2.200", 6000 + n), 0.1 + n / 1000)
    observed = [c.endpoint for c in finder.candidates if c.kind is CandidateKind.OBSERVED]
    assert len(observed) == finder.config.max_observed and ("198.51.100.50", 5000) in observed


def test_unknown_and_repeated_replies_are_ignored():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    probe = probe_to(finder.next_actions(), PUBLIC_EP)
    finder.probe_reply_received(b"\xff" * 8, PUBLIC_EP, 0.05)
    assert finder.current_path is None
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, 0.06)
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, 0.07)
    assert finder.stats.unmatched_replies == 2 and finder.stats.replies == 1


def test_punch_during_a_burst_sends_nothing_more_but_restarts_backoff():
    finder = make_finder(PUBLIC)
    finder.punch(0.0)
    finder.next_actions()
    finder.punch(0.1)
    assert finder.next_actions() == []
    run_timers_until(finder, 5.0)
    finder.punch(5.0)
    assert len(probes(finder.next_actions())) == 1
    assert finder.get_timer() == pytest.approx(5.2)


def test_punch_while_direct_sends_one_round_and_keeps_the_path():
    finder = make_finder(LAN, PUBLIC)
    go_direct(finder, endpoint=LAN_EP)
    finder.punch(1.0)
    assert [p.endpoint for p in finder.next_actions()] == [LAN_EP, PUBLIC_EP]
    assert finder.get_timer() == pytest.approx(2.05)


def test_observed_and_pending_are_bounded():
    finder = make_finder(PUBLIC, max_observed=2, max_pending=3)
    finder.punch(0.0)
    first = probe_to(finder.next_actions(), PUBLIC_EP)
    for port in range(1, 5):
        finder.probe_received(("198.51.100.1", port), 0.1)
    assert [c.endpoint[1] for c in finder.candidates[1:]] == [3, 4]
    finder.probe_reply_received(first.tx_id, PUBLIC_EP, 0.2)
    assert finder.current_path is None and finder.stats.unmatched_replies == 1


def test_port_spread_above_public_port():
    strategy = PortSpread(ports_above(3))
    targets = strategy.targets([LAN, PUBLIC], round_no=1)
    assert [t.endpoint for t in targets] == [LAN_EP, PUBLIC_EP] + [
        ("203.0.113.7", p) for p in (41645, 41646, 41647)]
    assert {t.kind for t in targets[2:]} == {CandidateKind.PREDICTED}


def test_port_spread_random_ports_skip_known_endpoints():
    only_the_known_port = PortSpread(random_ports(50, lambda low, high: PUBLIC_EP[1]))
    assert [t.endpoint for t in only_the_known_port.targets([PUBLIC], 0)] == [PUBLIC_EP]
    strategy = PortSpread(random_ports(50, random.Random(5).randrange))
    targets = strategy.targets([PUBLIC], 0)
    assert len(targets) == 51 and all(1024 <= t.endpoint[1] < 65536 for t in targets)
    assert AllCandidates().targets([PUBLIC], 0) == [PUBLIC]


EVENTS = st.lists(st.tuples(
    st.sampled_from(["punch", "timer", "reply", "probe", "traffic", "relay_on", "relay_off",
                     "candidates", "roamed", "sent", "relay_traffic"]),
    st.floats(min_value=0.0, max_value=5.0),
    st.integers(min_value=0, max_value=3)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_any_input_sequence_keeps_the_machine_consistent(events):
    endpoints = [LAN_EP, PUBLIC_EP, OTHER_EP, ("10.9.9.9", 1)]
    finder = make_finder(LAN, PUBLIC)
    now, path, sent, relay = 0.0, None, [], False

    def fire_due_timers():
        for _ in range(100):
            due = finder.get_timer()
            if due is None or due > now:
                return
            finder.handle_timer(due)
        raise AssertionError("timer does not advance")

    for name, dt, index in events:
        now += dt
        fire_due_timers()
        if name == "punch":
            finder.punch(now)
        elif name == "timer":
            finder.handle_timer(now)
        elif name == "reply" and sent:
            probe = sent[index % len(sent)]
            finder.probe_reply_received(probe.tx_id, probe.endpoint, now)
        elif name == "probe":
            finder.probe_received(endpoints[index], now)
        elif name == "traffic":
            finder.traffic_received(endpoints[index], now)
        elif name == "roamed":
            finder.roamed(endpoints[index], now)
        elif name == "sent":
            finder.traffic_sent(now)
        elif name == "relay_traffic":
            finder.relay_traffic_received(now)
        elif name in ("relay_on", "relay_off"):
            relay = name == "relay_on"
            finder.relay_ready(relay, now)
        elif name == "candidates":
            finder.set_candidates([Candidate(endpoints[index], CandidateKind.PUBLIC)], now)
        fire_due_timers()
        for action in finder.next_actions():
            if isinstance(action, SendProbe):
                sent.append(action)
            elif isinstance(action, PathChanged):
                assert action.old == path and action.new != path
                path = action.new
        assert finder.current_path == path
        assert path != RELAY_PATH or relay
        timer = finder.get_timer()
        assert timer is None or timer > now
        assert (timer is None) == (finder.state is PathState.IDLE)


def test_want_path_arms_the_relay_fallback_without_probing() -> None:
    finder = PathFinder(lambda: bytes(8), PathFinderConfig(relay_after=2.0))
    finder.relay_ready(True, 0.0)
    finder.want_path(0.5)
    assert finder.next_actions() == [] and finder.get_timer() == 2.5
    finder.want_path(1.0)
    assert finder.get_timer() == 2.5, "a later want does not push the fallback back"
    finder.handle_timer(2.5)
    assert finder.current_path == RELAY_PATH
