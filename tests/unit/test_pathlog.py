"""A peer's path changes as `meshvpn status` shows them: reason and how long each took."""

import random

from meshvpn.node.ctl import format_status
from meshvpn.node.events import PeerPathChanged
from meshvpn.node.pathfinder import RELAY_PATH, Path, PathKind
from meshvpn.node.pathlog import HISTORY, PathLog, last_heard
from meshvpn.sim.nodes import alice_and_bob, ip_packet
from meshvpn.wire import Endpoint

BOB = Path(PathKind.DIRECT, Endpoint("198.51.100.2", 41641))
BOB_LAN = Path(PathKind.LAN, Endpoint("10.0.0.2", 41641))


def test_a_search_is_timed_from_the_first_punch_to_the_path():
    log = PathLog()
    log.wanted(None, 10.0)
    log.wanted(None, 10.5)  # more punches of the same search
    fallback = log.changed(None, RELAY_PATH, "relay fallback", 12.0, None)
    punched = log.changed(RELAY_PATH, BOB, "punched", 13.9, None)
    assert (fallback.text(), punched.text()) == ("-→relay (relay fallback 2.0 s)", "relay→direct (punched 3.9 s)")
    assert log.searching_since is None


def test_a_lost_path_is_timed_by_its_silence_and_the_search_starts_there():
    log = PathLog()
    log.wanted(None, 0.0)
    log.changed(None, BOB, "punched", 0.2, None)
    log.wanted(BOB, 5.0)  # a punch while direct starts no search
    lost = log.changed(BOB, RELAY_PATH, "path timeout", 20.0, heard=10.0)
    back = log.changed(RELAY_PATH, BOB, "punched", 21.0, None)
    assert lost.text() == "direct→relay (path timeout 10.0 s)"
    assert back.took == 11.0, "from the last thing heard on the old path"


def test_a_better_path_has_nothing_to_time_and_unknown_silence_is_not_invented():
    log = PathLog()
    assert log.changed(BOB, BOB_LAN, "better path", 3.0, 2.9).text() == "direct→lan (better path)"
    assert log.changed(BOB_LAN, None, "path timeout", 13.0, None).took is None
    assert log.counts == {"better path": 1, "path timeout": 1} and not log.seconds


def test_a_timeout_was_silent_at_least_path_timeout_when_the_data_path_heard_nothing_there():
    timeout = PeerPathChanged("bob", BOB, RELAY_PATH, "path timeout")
    assert last_heard(timeout, 7.5, BOB.endpoint, 10.0, 20.0) == 7.5
    assert last_heard(timeout, 19.0, Endpoint("203.0.113.9", 1), 10.0, 20.0) == 10.0  # traffic came from elsewhere
    assert last_heard(PeerPathChanged("bob", BOB, None, "tcp lost"), 0.0, None, 10.0, 20.0) is None
    assert last_heard(PeerPathChanged("bob", None, BOB, "punched"), 5.0, BOB.endpoint, 10.0, 20.0) is None


def test_only_the_latest_changes_are_kept_but_every_one_is_counted():
    log = PathLog()
    for step in range(HISTORY + 3):
        log.changed(RELAY_PATH, BOB, "punched", float(step), None)
    assert len(log.records) == HISTORY and log.counts["punched"] == HISTORY + 3


def test_status_shows_the_first_punch_and_how_long_it_took():
    a, b, wire = alice_and_bob(random.Random)
    a.send(ip_packet(a.address, b.address), 1.0)
    wire.pump(1.0)
    status = a.node.status(4.0)
    [change] = status["peers"][0]["path_changes"]
    assert change == {"ago": 3.0, "old": None, "new": "direct", "reason": "punched", "took": 0.0,
                      "text": "-→direct (punched 0.0 s)"}
    status["self"].update(coord="connected", sockets=[{"socket": "main", "drops": 7, "rcvbuf": 1, "sndbuf": 1}])
    self_line, bob_line = format_status(status).splitlines()
    assert self_line.endswith("kernel drops 7")
    assert bob_line.endswith("-→direct (punched 0.0 s) 3s ago")
