"""The core's endpoint rounds after a path died: one per `DISCOVER_INTERVAL`, and a TCP path's
coord reconnection never lost to that limit (plain float clock)."""

from meshvpn.node.core import NodeCore
from meshvpn.node.events import DiscoverEndpoints
from meshvpn.node.recovery import DISCOVER_INTERVAL
from meshvpn.node.silence import EndpointsStale


def core() -> NodeCore:
    return NodeCore(bytes(range(1, 33)), lambda n: bytes(n))


def discoveries(node: NodeCore) -> list[DiscoverEndpoints]:
    events = iter(node.next_event, None)
    return [event for event in events if isinstance(event, DiscoverEndpoints)]


def test_a_second_untagged_request_within_the_interval_asks_nothing_more() -> None:
    node = core()
    node.endpoints_stale(EndpointsStale(), 10.0)
    node.endpoints_stale(EndpointsStale(), 10.5)
    assert discoveries(node) == [DiscoverEndpoints(False)]
    node.endpoints_stale(EndpointsStale(), 10.0 + DISCOVER_INTERVAL)
    assert discoveries(node) == [DiscoverEndpoints(False)], "the next interval asks again"


def test_a_tcp_request_after_an_untagged_one_already_taken_still_reconnects_the_coord() -> None:
    node = core()
    node.endpoints_stale(EndpointsStale(), 10.0)
    assert discoveries(node) == [DiscoverEndpoints(False)], "the shell took the first round"
    node.endpoints_stale(EndpointsStale(tcp=True), 10.4)
    assert discoveries(node) == [DiscoverEndpoints(reconnect_coord=True)]
    node.endpoints_stale(EndpointsStale(tcp=True), 10.6)
    assert discoveries(node) == [], "one reconnection per interval"


def test_a_tcp_request_joins_an_untagged_one_still_queued() -> None:
    node = core()
    node.endpoints_stale(EndpointsStale(), 10.0)
    node.endpoints_stale(EndpointsStale(tcp=True), 10.2)
    assert discoveries(node) == [DiscoverEndpoints(reconnect_coord=True)], "one round, which reconnects"


def test_an_untagged_request_after_a_tcp_one_keeps_the_reconnection() -> None:
    node = core()
    node.endpoints_stale(EndpointsStale(tcp=True), 10.0)
    node.endpoints_stale(EndpointsStale(), 10.2)
    assert discoveries(node) == [DiscoverEndpoints(reconnect_coord=True)]
