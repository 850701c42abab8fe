"""A node's peer relay forwarding in its native loop (meshvpn._fastpath.Loop) against Python, byte for byte.

The server relay's comparison (`test_relay_native`) with the node's loop in place of the relay's
thread: the node's main socket on loopback with UDP_GRO, an AF_UNIX socket for its TUN, a
`PeerRelay` whose relay core the thread serves through `NativePeerRelay`, and the same core
registrations on the pure-Python side. What the thread hands over goes where the node sends
it (`PeerRelay.takes`: the relay core, else the node's own path), on both sides; each test
requires the same datagrams at every destination, the same forwarded counts, the same drops by
reason and the same datagrams left to the node. The server relay's tests that hold for a peer
relay (forwarding, buckets, tokens run out, liveness) run here again on the node's rig.
"""

import socket
import time
from collections import Counter

import pytest

from meshvpn import keys, wire
from meshvpn.config import ForwardLimits, RelayLimits
from meshvpn.control import messages as m
from meshvpn.node.datapath import fastpath, native_loop
from meshvpn.node.datapath.native_relay import NativePeerRelay
from meshvpn.node.peerrelay import PeerRelay
from meshvpn.relay import native
from meshvpn.wire import Endpoint, MessageType
from test_relay_batch import sized
from test_relay_core import ALICE, BOB, COORD, NOW, RELAY, counting_random, hello
from test_relay_native import CAROL, DAVE, EVERYONE, LATER, MALLORY, STILL, Rig, dropped_among_good_ones, one_by_one
from test_relay_native import test_a_token_that_ran_out_stops_forwarding_at_once_on_both_paths  # noqa: F401
from test_relay_native import test_the_bucket_is_spent_per_datagram_on_both_paths  # noqa: F401
from test_relay_native import test_the_thread_keeps_its_senders_alive  # noqa: F401
from test_relay_native import (  # noqa: F401
    test_envelopes_between_udp_nodes_are_forwarded_by_the_thread_as_python_would as test_members_envelopes_are_forwarded)

pytestmark = pytest.mark.needs(fastpath.native_module() is None or not hasattr(fastpath.native_module(), "Loop"),
                               "the native extension is not built")


class NodeLoopForwarder:
    """A node's native loop serving its peer relay, with NativeForwarder's face for the Rig."""

    def __init__(self, core, udp_fd: int) -> None:
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.loop = fastpath.native_module().Loop(udp_fd, self.tun.fileno())
        self.serving = PeerRelay(RELAY, counting_random(), time.time() - time.monotonic(), keys.public_key(COORD))
        self.relay = NativePeerRelay(self.loop, self.serving)
        self.serving.core = core
        self.totals: Counter = Counter()

    def start(self) -> None:
        self.relay.sync()
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
        self.pull()

    def pull(self) -> None:
        self.totals.update(dict(zip(native_loop.TOTALS, self.loop.counts()[2])))
        self.totals.update(self.relay.pull())

    def take(self):
        return [(data, Endpoint(*source), seg) for data, source, seg, _ in self.loop.take()]

    def close(self) -> None:
        self.stop()
        self.tun.close()
        self.tun_peer.close()


class NodeRig(Rig):
    """The relay's Rig with a relaying node's loop in place of the relay's thread."""

    def make_forwarder(self):
        self.to_node = {id(self.pure): [], id(self.native): []}
        return NodeLoopForwarder(self.native, self.relay.fileno())

    def python_path(self, core, data, size, source) -> None:
        """As the node: the relay core takes hellos and envelopes from members registered with it."""
        serving = PeerRelay(RELAY, counting_random(), 0.0, keys.public_key(COORD))
        serving.core = core
        for first in range(0, max(len(data), 1), size):
            datagram = data[first : first + size]
            if serving.takes(datagram, source):
                serving.receive(datagram, source, LATER)
            else:
                self.to_node[id(core)].append(datagram)

    def outcome(self, core, thread_sent=()):
        return (*super().outcome(core, thread_sent), self.to_node[id(core)])

    def close(self) -> None:
        self.forwarder.close()
        for sock in (self.relay, *self.socks.values()):
            sock.close()


@pytest.fixture
def rigs():
    made = []

    def make(names, limits=RelayLimits(packets_per_second=STILL, burst=1000, queue_bytes=100_000)):
        made.append(NodeRig(names, limits))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


@pytest.mark.parametrize("bad, reason", [
    (b"\x01\x07\x00\x00" + keys.public_key(BOB) + b"\x01\x07\x00\x00" + bytes(60), "malformed"),
    (b"\x01\x07\x00\x00" + bytes(10), "malformed"),
    (sized(DAVE, 100), "destination not registered"),
    (sized(MALLORY, 100), "destination in another network"),
], ids=["relay inside relay", "short", "unknown pair", "other network"])
def test_a_bad_envelope_is_dropped_for_the_same_reason_on_both_paths(rigs, bad, reason):
    dropped_among_good_ones(rigs(EVERYONE), bad, reason)


def test_a_bad_token_registers_nobody_and_its_envelopes_stay_with_python(rigs):
    rig = rigs({"alice": ALICE, "bob": BOB})
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.setblocking(False)
    rig.socks["stranger"], rig.links["stranger"] = stranger, Endpoint(*stranger.getsockname())
    forged = hello(CAROL, token=b"\x00" * 60)
    rig.run("stranger", one_by_one([sized(BOB, 100)] * 3 + [forged]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[2] == 0 and rig.forwarder.totals["forwarded natively"] == 0
    assert len(native_outcome[5]) == 3, "an envelope from a non-member is traffic for the node itself"
    assert sum(native_outcome[4].values()) == 1 and "token" in " ".join(native_outcome[4])


def test_the_nodes_own_traffic_from_a_member_stays_on_the_node_path(rigs):
    rig = rigs(EVERYONE)
    own = wire.header(MessageType.DATA) + bytes(96)
    rig.run("alice", one_by_one([sized(BOB, 100), own, sized(BOB, 100), hello(ALICE, NOW + 0.5)]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[5] == [own] and native_outcome[2] == 2
    assert rig.forwarder.totals["forwarded natively"] == 2


def test_a_member_removed_by_the_coord_relays_nothing_more(rigs):
    rig = rigs(EVERYONE)
    for core in (rig.pure, rig.native):
        serving = PeerRelay(RELAY, counting_random(), 0.0, keys.public_key(COORD))
        serving.core = core
        serving.coord_message(m.PeerDelta(removed=(keys.public_key(BOB),)), LATER)
    rig.run("alice", one_by_one([sized(BOB, 100), sized(CAROL, 100)]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[2] == 1 and native_outcome[4] == {"member left": 1, "destination not registered": 1}


def test_the_thread_forwards_nothing_once_the_node_stops_relaying():
    rig = NodeRig(EVERYONE, RelayLimits(packets_per_second=STILL, burst=1000, queue_bytes=100_000))
    try:
        rig.forwarder.relay.sync()  # the registrations installed...
        rig.forwarder.serving.coord_message(m.Relays(relaying=False), LATER)  # ...and the coord says stop
        assert rig.forwarder.serving.core is None
        rig.socks["alice"].sendto(sized(BOB, 100), rig.relay.getsockname())
        rig.forwarder.start()
        deadline = time.monotonic() + 5
        while rig.forwarder.totals["receives"] < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
            rig.forwarder.pull()
        assert rig.forwarder.totals["receives"] == 1 and rig.forwarder.totals["forwarded natively"] == 0
        assert [data for data, _, _ in rig.forwarder.take()] == [sized(BOB, 100)]
    finally:
        rig.forwarder.close()
        for sock in (rig.relay, *rig.socks.values()):
            sock.close()


def test_the_node_makes_its_relay_cores_buckets_shared_with_the_thread():
    serving = PeerRelay(RELAY, counting_random(), 0.0, keys.public_key(COORD), ForwardLimits())
    tun, tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        NativePeerRelay(fastpath.native_module().Loop(udp.fileno(), tun.fileno()), serving)
        serving.coord_message(m.Relays(relays=(), relaying=True), 0.0)
        assert serving.bucket is native.bucket_factory() and serving.core is not None
    finally:
        for sock in (tun, tun_peer, udp):
            sock.close()
