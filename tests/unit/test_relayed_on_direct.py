"""The peer's traffic moving from our direct path to a relay is an event of the data path, not a poll.

While we send on a direct path that went silent, the peer's traffic arriving through a relay says
the peer gave up on the path: the node leaves it with that packet (``Node.relayed_on_direct``), not
at the core's next look at the traffic times, up to `WATCH_INTERVAL` later. Real parts: the node,
its core and its Python data path; the peer's path finder is put on a direct path as the path
finder's own tests do; a plain float clock.
"""

import select
import time
from types import SimpleNamespace

import pytest

from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.node.events import PeerPathChanged
from meshvpn.node.pathfinder import ChangeReason, PathState
from meshvpn.node.recovery import WATCH_INTERVAL
from meshvpn.wire import Endpoint
from test_native_relay_rx import NATIVE_MODULE, NativeSide, from_peer, receiving_plane, relayed
from test_native_wake import AT_ONCE
from test_pathfinder import PUBLIC, PUBLIC_EP, go_direct, make_finder

RELAY = Endpoint("198.51.100.30", 7500)
PEER_EP = Endpoint(*PUBLIC_EP)


def direct_plane(at: float = 10.0) -> DataPlane:
    """The node's data path, its peer on a direct path to `PEER_EP` heard at `at`, and our traffic out 0.1 s later."""
    plane = receiving_plane(at - 10.0)
    core = plane.core.core
    peer = core.peers.find("peer")
    peer.paths = make_finder(PUBLIC, relay=True)
    go_direct(peer.paths)
    core.peers.set_route(peer, core.routes.for_path(peer.key, peer.paths.current_path, peer.info))
    plane.open_messages([(message, PEER_EP) for message in from_peer([0])], at)
    peer.last_tx = at + 0.1
    core.peers.trafficked.add(peer)
    core.handle_timer(at + 0.1)
    return plane


def path_changes(plane: DataPlane) -> list[str]:
    """The reasons of the peer's path changes the node reported since the last call."""
    return [event.reason for event in plane.core.outputs() if isinstance(event, PeerPathChanged)]


def test_the_peers_traffic_through_a_relay_ends_a_silent_direct_path_with_that_packet() -> None:
    plane = direct_plane()
    peer = plane.core.core.peers.find("peer")
    path_changes(plane)
    plane.open_messages([(message, RELAY) for message in relayed(1, 1)], 10.35)
    assert peer.paths.state is not PathState.DIRECT, "left with the relayed packet, not at the next look"
    assert path_changes(plane) == [ChangeReason.PATH_SILENT.value]
    assert peer.route is None or peer.route.endpoint != PEER_EP


def test_relayed_traffic_before_the_path_is_silent_moves_nothing_and_the_next_look_judges_the_rest() -> None:
    """The peer may relay for a moment (its own path was new): our path was heard within `silence_after`.
    Only the move to a relay is an event (one per move, not one per relayed packet); what the peer
    relays after it is judged at the core's next look, as before."""
    plane = direct_plane()
    core = plane.core.core
    peer = core.peers.find("peer")
    plane.open_messages([(message, RELAY) for message in relayed(1, 1)], 10.2)
    assert peer.paths.state is PathState.DIRECT
    plane.open_messages([(message, RELAY) for message in relayed(2, 1)], 10.35)
    assert peer.paths.state is PathState.DIRECT, "no event for a relayed packet after a relayed one"
    core.handle_timer(10.2 + WATCH_INTERVAL * 2)
    assert peer.paths.state is not PathState.DIRECT


@pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
def test_the_native_threads_relayed_receive_ends_a_silent_direct_path_as_it_arrives() -> None:
    """The thread opens the relayed packet and wakes Python at once; the wake-up's fold is the event.
    Real parts beside: the native thread (``NativeReceiver``) on loopback sockets; the node's clock
    is the monotonic one the thread stamps receives with."""
    at = time.monotonic() - 1.0
    native = NativeSide(direct_plane(at))
    try:
        peer = native.data.core.core.peers.find("peer")
        path_changes(native.data)
        sent = time.monotonic()
        native.relays[0].sendto(relayed(1, 1)[0], native.rx.getsockname())
        assert select.select([native.receiver._loop.fileno()], [], [], 5.0)[0], "woken"
        woken = time.monotonic() - sent
        native.receiver._on_wake(SimpleNamespace(time=time.monotonic))  # the asyncio loop's wake-up, with its clock
        assert peer.paths.state is not PathState.DIRECT and woken < AT_ONCE, f"woken {woken:.3f} s after the send"
        assert path_changes(native.data) == [ChangeReason.PATH_SILENT.value]
    finally:
        native.close()
