"""The coord link's backlog: a punch request that found the link down goes out after registration, if fresh."""

from meshvpn.control import messages as m
from meshvpn.node.coordbacklog import LIFETIME, PunchBacklog

PEER_A, PEER_B = b"a" * 32, b"b" * 32


def test_only_punch_requests_are_held_the_newest_per_peer_oldest_first() -> None:
    backlog = PunchBacklog()
    backlog.hold(m.PunchRequest(peer_key=PEER_A), 1.0)
    backlog.hold(m.Endpoints((), None), 1.1)
    backlog.hold(m.PunchRequest(peer_key=PEER_B), 1.2)
    newer = m.PunchRequest(peer_key=PEER_A, sample=m.Endpoint("192.0.2.1", 40000))
    backlog.hold(newer, 1.3)
    assert backlog.release(1.5) == [m.PunchRequest(peer_key=PEER_B), newer]
    assert backlog.release(1.6) == [], "released once"


def test_a_request_older_than_its_lifetime_is_dropped() -> None:
    backlog = PunchBacklog()
    backlog.hold(m.PunchRequest(peer_key=PEER_A), 10.0)
    backlog.hold(m.PunchRequest(peer_key=PEER_B), 10.5)
    assert backlog.release(10.0 + LIFETIME + 0.1) == [m.PunchRequest(peer_key=PEER_B)]
