"""The peer's announced endpoint against a birthday hit: which proven path a peer's traffic takes (plain float clock).

Behind a port-range NAT the peer's main socket (its STUN mapping) and its extra punching sockets can
all answer; the main one outlives every campaign, so an announced endpoint wins when its round trip
is alike, and data from a known extra socket does not move the path.
"""

import pytest

from meshvpn.node.candidates import Candidate, CandidateKind, PortSpread, ports_above
from meshvpn.node.pathfinder import ChangeReason, Path, PathFinder, PathKind
from meshvpn.node.pathpref import ANNOUNCED_SLACK, better, lan_twin, stays_announced
from test_pathfinder import LAN, LAN_EP, PUBLIC, PUBLIC_EP, changes, counting_rng, make_finder, probe_to, probes

BIRTHDAY_EP = ("203.0.113.7", 37001)
BIRTHDAY = Candidate(BIRTHDAY_EP, CandidateKind.OBSERVED)
PREDICTED = Candidate(("203.0.113.7", 37002), CandidateKind.PREDICTED)
V6 = Candidate(("2001:db8::7", 41641), CandidateKind.IPV6)
V6_OBSERVED = Candidate(("2001:db8::7", 37001), CandidateKind.OBSERVED)


def test_an_announced_endpoint_wins_within_the_slack_and_an_observed_one_must_beat_it_clearly():
    assert better(PUBLIC, 0.0215, BIRTHDAY, 0.020)
    assert not better(PUBLIC, 0.020 + ANNOUNCED_SLACK + 0.0001, BIRTHDAY, 0.020)
    assert not better(BIRTHDAY, 0.019, PUBLIC, 0.020), "1 ms better is not enough to leave the main socket"
    assert better(BIRTHDAY, 0.020 - ANNOUNCED_SLACK - 0.0001, PUBLIC, 0.020)
    assert not better(PREDICTED, 0.019, PUBLIC, 0.020), "a guessed port is no announced one either"
    assert better(BIRTHDAY, 0.019, PREDICTED, 0.020) and not better(BIRTHDAY, 0.020, PREDICTED, 0.020)


def test_the_family_and_the_announced_preferences_add_up():
    assert better(V6, 0.0235, BIRTHDAY, 0.020), "IPv6 and announced: 4 ms of slack"
    assert not better(V6, 0.0245, BIRTHDAY, 0.020)
    assert not better(V6_OBSERVED, 0.0215, PUBLIC, 0.020), "the family's 2 ms cancel the announced ones"
    assert better(V6_OBSERVED, 0.0195, PUBLIC, 0.020)


def punching_with_a_birthday_hit(birthday_at, **config):
    """A campaign's first round, and the peer's probe from an extra socket at `birthday_at`, which we
    probe back: the finder and our probes to the peer's STUN endpoint and to the extra socket."""
    finder = make_finder(PUBLIC, **config)
    finder.punch(0.0)
    public = probe_to(finder.next_actions(), PUBLIC_EP)
    finder.probe_received(BIRTHDAY_EP, birthday_at)
    return finder, public, probe_to(finder.next_actions(), BIRTHDAY_EP)


def birthday_first(public_reply_at, **config):
    """Our probe to the extra socket is answered at 20 ms, the one to the STUN endpoint at `public_reply_at`."""
    finder, public, birthday = punching_with_a_birthday_hit(0.001, **config)
    finder.probe_reply_received(birthday.tx_id, BIRTHDAY_EP, 0.021)
    assert finder.current_path == Path(PathKind.DIRECT, BIRTHDAY_EP), "the first proof is taken at once"
    finder.next_actions()
    finder.probe_reply_received(public.tx_id, PUBLIC_EP, public_reply_at)
    return finder


def test_the_announced_endpoint_replaces_a_birthday_hit_with_an_alike_round_trip():
    finder = birthday_first(public_reply_at=0.0215)
    assert finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)
    [change] = changes(finder.next_actions())
    assert change.reason is ChangeReason.BETTER_PATH
    assert finder.stats.rtt == pytest.approx(0.0215)


def test_a_clearly_slower_announced_endpoint_does_not_and_an_alike_one_does_even_after_the_window():
    assert birthday_first(public_reply_at=0.025).current_path == Path(PathKind.DIRECT, BIRTHDAY_EP)
    late = birthday_first(public_reply_at=0.0215, selection_window=0.0004)
    assert late.current_path == Path(PathKind.DIRECT, PUBLIC_EP), "0.5 ms after the pick, past a 0.4 ms window"
    assert [c.reason for c in changes(late.next_actions())] == [ChangeReason.BETTER_PATH]


def test_a_clearly_faster_birthday_hit_replaces_the_announced_endpoint_only_within_the_window():
    for window, expected in ((0.1, BIRTHDAY_EP), (0.004, PUBLIC_EP)):
        finder, public, birthday = punching_with_a_birthday_hit(0.010, selection_window=window)
        finder.probe_reply_received(public.tx_id, PUBLIC_EP, 0.020)
        finder.probe_reply_received(birthday.tx_id, BIRTHDAY_EP, 0.0251)  # 15.1 ms against 20, 5.1 ms after the pick
        assert finder.current_path == Path(PathKind.DIRECT, expected)


def test_a_birthday_hit_a_little_faster_does_not_replace_the_announced_endpoint():
    finder, public, birthday = punching_with_a_birthday_hit(0.0)
    finder.probe_reply_received(public.tx_id, PUBLIC_EP, 0.020)
    finder.probe_reply_received(birthday.tx_id, BIRTHDAY_EP, 0.019)
    assert finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)


def on_public_with_a_known_birthday_hit():
    finder, public, _ = punching_with_a_birthday_hit(0.0)
    finder.probe_reply_received(public.tx_id, PUBLIC_EP, 0.02)
    finder.next_actions()
    return finder


def test_data_from_a_known_extra_socket_keeps_the_announced_path_and_probes_it():
    finder = on_public_with_a_known_birthday_hit()
    finder.roamed(BIRTHDAY_EP, 1.0)
    actions = finder.next_actions()
    assert changes(actions) == [] and finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)
    assert [p.endpoint for p in probes(actions)] == [PUBLIC_EP], "the peer hears us on its main socket again"


def test_data_from_a_new_endpoint_or_after_the_path_went_quiet_still_moves_it():
    moved = on_public_with_a_known_birthday_hit()
    moved.roamed(("203.0.113.7", 50123), 1.0)
    assert [c.reason for c in changes(moved.next_actions())] == [ChangeReason.ROAMED]
    quiet = on_public_with_a_known_birthday_hit()
    quiet.roamed(BIRTHDAY_EP, 2.02)
    assert quiet.current_path == Path(PathKind.DIRECT, BIRTHDAY_EP), "nothing heard for liveness_interval"


def test_only_a_stun_mapping_path_stays_and_only_against_a_known_unannounced_endpoint():
    assert stays_announced(PUBLIC, BIRTHDAY) and stays_announced(PUBLIC, PREDICTED)
    mapped = Candidate(("203.0.113.7", 50000), CandidateKind.MAPPED)
    assert not stays_announced(mapped, BIRTHDAY) and not stays_announced(V6, PREDICTED), "a forward's flows move"
    assert not stays_announced(PUBLIC, None) and not stays_announced(PUBLIC, V6)
    assert not stays_announced(BIRTHDAY, PREDICTED) and not stays_announced(None, BIRTHDAY)


def test_data_from_a_predicted_port_we_probed_keeps_the_announced_path():
    finder = PathFinder(counting_rng(), strategy=PortSpread(ports_above(3)))
    finder.set_candidates([PUBLIC], 0.0)
    finder.punch(0.0)
    actions = finder.next_actions()
    guessed = ("203.0.113.7", PUBLIC_EP[1] + 2)
    assert guessed in [p.endpoint for p in probes(actions)], "a port above the STUN one is probed"
    finder.probe_reply_received(probe_to(actions, PUBLIC_EP).tx_id, PUBLIC_EP, 0.02)
    finder.next_actions()
    finder.roamed(guessed, 0.5)
    assert changes(finder.next_actions()) == [] and finder.current_path == Path(PathKind.DIRECT, PUBLIC_EP)


def test_a_path_proven_before_the_peers_lan_report_becomes_a_lan_path_on_the_same_endpoint():
    """The peer's probe came before its LAN addresses: we answered and probed it back (observed), and
    the path was proven as a public one; the report then names that endpoint as the peer's own."""
    finder = make_finder()
    finder.probe_received(LAN_EP, 0.0)
    (probe,) = probes(finder.next_actions())
    finder.probe_reply_received(probe.tx_id, LAN_EP, 0.001)
    assert finder.current_path == Path(PathKind.DIRECT, LAN_EP)
    finder.next_actions()
    finder.set_candidates([LAN, PUBLIC], 0.5)
    assert finder.current_path == Path(PathKind.LAN, LAN_EP)
    assert [(c.new, c.reason) for c in changes(finder.next_actions())] == \
        [(Path(PathKind.LAN, LAN_EP), ChangeReason.BETTER_PATH)]
    finder.set_candidates([LAN, PUBLIC], 1.0)
    assert changes(finder.next_actions()) == [], "once, not at every report"


def test_only_the_very_endpoint_named_as_the_peers_own_is_a_lan_twin():
    assert lan_twin(PUBLIC, [LAN, PUBLIC]) is None, "another endpoint: a LAN probe's reply decides"
    assert lan_twin(Candidate(LAN_EP, CandidateKind.PUBLIC), [PUBLIC, LAN]) == LAN
    assert lan_twin(LAN, [LAN]) is None and lan_twin(None, [LAN]) is None


def test_an_answer_from_the_peers_lan_endpoint_proves_a_lan_path_whatever_candidate_was_probed():
    """No NAT: the peer's STUN mapping is its LAN endpoint. Our probe of its LAN candidate went
    unanswered (the peer did not know our key yet), the one of its public candidate, the same
    endpoint, was answered: that proves a LAN path (the bench's 'meshvpn direct' row, 1 in 13)."""
    twin = Candidate(LAN_EP, CandidateKind.PUBLIC)
    finder = make_finder(LAN, twin)
    finder.punch(0.0)
    (_, public) = probes(finder.next_actions())
    finder.probe_reply_received(public.tx_id, LAN_EP, 0.001)
    assert [(c.new, c.reason) for c in changes(finder.next_actions())] == \
        [(Path(PathKind.LAN, LAN_EP), ChangeReason.PUNCHED)]
    due = finder.get_timer()
    finder.handle_timer(due)
    (keepalive,) = probes(finder.next_actions())
    assert keepalive.endpoint == LAN_EP
    finder.probe_reply_received(keepalive.tx_id, LAN_EP, due + 0.001)
    assert changes(finder.next_actions()) == [] and finder.current_path == Path(PathKind.LAN, LAN_EP)
