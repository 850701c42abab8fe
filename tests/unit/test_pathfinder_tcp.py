"""The TCP path in the path machine: below UDP direct paths, above the relay, never a UDP candidate."""

import itertools

from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.node.pathfinder import (
    RELAY_PATH,
    ChangeReason,
    Path,
    PathChanged,
    PathFinder,
    PathKind,
    PathState,
    SendProbe,
)
from meshvpn.node.silence import EndpointsStale
from meshvpn.node.tcp.core import TcpEndpoint

PUBLIC_EP = ("203.0.113.7", 41641)
TCP_EP = TcpEndpoint("203.0.113.7", 41641)
TCP_PATH = Path(PathKind.TCP, TCP_EP)


def relayed_finder() -> PathFinder:
    """A peer with one public candidate, punched at 0 and relayed since `relay_after`."""
    counter = itertools.count(1)
    finder = PathFinder(lambda: next(counter).to_bytes(8, "big"))
    finder.set_candidates([Candidate(PUBLIC_EP, CandidateKind.PUBLIC)], 0.0)
    finder.relay_ready(True, 0.0)
    finder.punch(0.0)
    while finder.get_timer() <= 2.0:
        finder.handle_timer(finder.get_timer())
    assert finder.current_path == RELAY_PATH
    finder.next_actions()
    return finder


def changes(finder: PathFinder) -> list[PathChanged]:
    return [a for a in finder.next_actions() if isinstance(a, PathChanged)]


def test_a_tcp_path_replaces_the_relay_and_udp_punching_goes_on() -> None:
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    assert changes(finder) == [PathChanged(RELAY_PATH, TCP_PATH, ChangeReason.TCP_PUNCHED)]
    assert finder.state is PathState.TCP
    assert finder.get_timer() is not None and finder.get_timer() > 3.0, "background punch rounds go on"
    finder.handle_timer(finder.get_timer())
    assert [a.endpoint for a in finder.next_actions() if isinstance(a, SendProbe)] == [PUBLIC_EP]


def test_a_udp_reply_replaces_the_tcp_path() -> None:
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    finder.next_actions()
    finder.handle_timer(finder.get_timer())
    (probe,) = [a for a in finder.next_actions() if isinstance(a, SendProbe)]
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, 4.0)
    direct = Path(PathKind.DIRECT, PUBLIC_EP)
    assert changes(finder) == [PathChanged(TCP_PATH, direct, ChangeReason.PUNCHED)]
    finder.tcp_ready(TCP_EP, 4.5)
    assert changes(finder) == [], "TCP never replaces a UDP path"


def test_a_lost_tcp_path_falls_back_to_the_relay_and_punches_at_once() -> None:
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    finder.next_actions()
    finder.tcp_ready(None, 20.0)
    actions = finder.next_actions()
    assert [a for a in actions if isinstance(a, PathChanged)] == [
        PathChanged(TCP_PATH, RELAY_PATH, ChangeReason.TCP_LOST)]
    assert [a.endpoint for a in actions if isinstance(a, SendProbe)] == [PUBLIC_EP]
    assert finder.get_timer() == 20.2, "a new burst"


def test_a_lost_tcp_path_without_a_relay_leaves_no_path_until_the_relay_is_ready() -> None:
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    finder.next_actions()
    finder.relay_ready(False, 4.0)
    assert changes(finder) == [], "losing the relay does not matter while on TCP"
    finder.tcp_ready(None, 5.0)
    assert changes(finder) == [PathChanged(TCP_PATH, None, ChangeReason.TCP_LOST)]
    finder.relay_ready(True, 6.0)
    assert changes(finder) == [PathChanged(None, RELAY_PATH, ChangeReason.RELAY_FALLBACK)]


def test_a_silent_udp_path_falls_back_to_tcp_before_the_relay() -> None:
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    finder.handle_timer(finder.get_timer())
    (probe,) = [a for a in finder.next_actions() if isinstance(a, SendProbe)]
    finder.probe_reply_received(probe.tx_id, PUBLIC_EP, 4.0)
    finder.next_actions()
    while finder.current_path.kind is PathKind.DIRECT:
        finder.handle_timer(finder.get_timer())
    assert changes(finder) == [PathChanged(Path(PathKind.DIRECT, PUBLIC_EP), TCP_PATH, ChangeReason.PATH_TIMEOUT)]


def test_evidence_from_a_tcp_endpoint_never_becomes_a_udp_candidate() -> None:
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    finder.next_actions()
    finder.probe_received(TCP_EP, 3.1)
    finder.traffic_received(TCP_EP, 3.2)
    finder.probe_reply_received(b"\x00" * 8, TCP_EP, 3.3)
    assert finder.next_actions() == []
    assert [c.endpoint for c in finder.candidates] == [PUBLIC_EP]
    assert finder.current_path == TCP_PATH


def tcp_finder() -> PathFinder:
    """On the TCP path since 3.0, the relay ready behind it; traffic both ways until 10.0."""
    finder = relayed_finder()
    finder.tcp_ready(TCP_EP, 3.0)
    while finder.get_timer() < 10.0:
        finder.handle_timer(finder.get_timer())
    finder.traffic_received(TCP_EP, 10.0)
    finder.traffic_sent(10.0)
    finder.next_actions()
    return finder


def tcp_probes(actions: list) -> list[SendProbe]:
    return [a for a in actions if isinstance(a, SendProbe) and a.endpoint == TCP_EP]


def test_a_tcp_path_silent_under_traffic_is_probed_over_it_and_left_within_a_second() -> None:
    """A NAT that re-maps us leaves the connection open and silent: the TCP module's own
    `idle_timeout` (10 s) would notice late, so silence watches a TCP path as it does a UDP one."""
    finder = tcp_finder()
    finder.traffic_sent(10.2)
    assert finder.get_timer() <= 10.3
    fired = []
    while finder.current_path == TCP_PATH:
        when = finder.get_timer()
        finder.handle_timer(when)
        fired.append((when, finder.next_actions()))
    assert [(when, len(tcp_probes(actions))) for when, actions in fired if tcp_probes(actions)] == [(10.3, 1),
                                                                                                     (10.425, 1)]
    when, actions = fired[-1]
    assert when == 10.55
    assert [a for a in actions if isinstance(a, PathChanged)] == [
        PathChanged(TCP_PATH, RELAY_PATH, ChangeReason.PATH_SILENT)]
    assert EndpointsStale(tcp=True) in actions, "the coord must see our punch port's mapping anew"
    finder.tcp_ready(TCP_EP, 10.6)
    assert changes(finder) == [PathChanged(RELAY_PATH, TCP_PATH, ChangeReason.TCP_PUNCHED)], \
        "a new TCP path (the TCP module ended the old one) is taken again"


def test_traffic_or_a_probe_reply_over_the_tcp_path_keeps_it() -> None:
    finder = tcp_finder()
    finder.traffic_sent(10.2)
    finder.handle_timer(10.3)
    (probe,) = tcp_probes(finder.next_actions())
    finder.probe_reply_received(probe.tx_id, TCP_EP, 10.35)
    finder.traffic_sent(10.4)
    finder.traffic_received(TCP_EP, 10.6)
    finder.traffic_sent(10.7)
    while (when := finder.get_timer()) < 10.9:
        finder.handle_timer(when)
    assert finder.current_path == TCP_PATH and changes(finder) == []
    assert finder.stats.replies == 1


def test_a_reply_over_tcp_to_no_probe_of_ours_keeps_nothing() -> None:
    finder = tcp_finder()
    finder.traffic_sent(10.2)
    finder.handle_timer(10.3)
    finder.next_actions()
    finder.probe_reply_received(b"\x00" * 8, TCP_EP, 10.35)
    while finder.current_path == TCP_PATH:
        finder.handle_timer(finder.get_timer())
    assert finder.stats.unmatched_replies == 1


def test_the_peers_punch_while_on_a_tcp_path_probes_it_at_once() -> None:
    """The peer asks for a punch: it seeks a path, so it may have lost ours (our data may not flow
    to find out: an echo waits for the peer's packets)."""
    finder = tcp_finder()
    finder.punch(12.0)
    assert len(tcp_probes(finder.next_actions())) == 1
    finder.punch(12.01)
    assert tcp_probes(finder.next_actions()) == [], "suspect already: its probes run"
    while finder.current_path == TCP_PATH:
        finder.handle_timer(finder.get_timer())
    assert [c.reason for c in changes(finder)] == [ChangeReason.PATH_SILENT]
    assert finder.current_path == RELAY_PATH
    finder = tcp_finder()
    finder.punch(12.0)
    (probe,) = tcp_probes(finder.next_actions())
    finder.probe_reply_received(probe.tx_id, TCP_EP, 12.05)
    while (when := finder.get_timer()) < 13.0:
        finder.handle_timer(when)
    assert finder.current_path == TCP_PATH, "answered: kept"


def test_a_lost_tcp_path_asks_for_a_new_coord_connection_unless_the_peers_udp_reaches_us() -> None:
    """Reset or closed with no UDP from the peer: our punch port's mapping may have moved, and the
    peer learns the new one only through the coord. Closed just after the peer's UDP probe came in:
    the peer took a UDP path and ended the TCP one; nothing moved, and no coord reconnect."""
    lost = relayed_finder()
    lost.tcp_ready(TCP_EP, 3.0)
    lost.next_actions()
    lost.tcp_ready(None, 20.0)
    assert EndpointsStale(tcp=True) in lost.next_actions()

    replaced = relayed_finder()
    replaced.tcp_ready(TCP_EP, 3.0)
    replaced.next_actions()
    replaced.probe_received(PUBLIC_EP, 19.9)
    replaced.tcp_ready(None, 20.0)
    stale = [a for a in replaced.next_actions() if isinstance(a, EndpointsStale)]
    assert stale == [EndpointsStale(tcp=False)]
