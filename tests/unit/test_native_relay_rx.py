"""Relayed receives the native thread opens reach the peer as the Python path's do.

Silence detection reads ``last_relay_rx`` and a change of ``last_relay_src`` has the relay links
check themselves (``Node.relay_moved``); both must see relayed traffic whichever thread opened it.
Real parts: a node's data path, the native thread (``NativeReceiver``) on a loopback UDP socket,
two loopback sockets standing in for two relays, and an AF_UNIX socket for the TUN.  Waits are
bounded.
"""

import socket
import time

import pytest

from meshvpn.control import messages as m
from meshvpn.node.datapath.dataplane import DataPlane, SendBuffer
from meshvpn.node.datapath.native_loop import NativeReceiver
from meshvpn.node.node import Node
from meshvpn.noise import SessionKeys
from meshvpn.session import Session
from meshvpn.sim.nodes import sized_packet
from meshvpn.udpbatch import BatchUdpSocket
from meshvpn.wire import Endpoint, relay_prefix
from tests.unit.test_native_loop import NATIVE_MODULE

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
OWN, PEER = "100.64.0.2", "100.64.0.1"
PEER_KEY = bytes([1]) * 32
NETWORK = m.NetworkInfo(name="relayrx", cidr="100.64.0.0/24")


class RecordingNode(Node):
    """The real node; it notes each ``relay_moved`` (which then has the relay links check themselves)
    and each ``roamed`` (which moves the peer's direct path)."""

    def __init__(self) -> None:
        super().__init__(bytes([8]) * 32, lambda n: bytes(n))
        self.moves: list[Endpoint] = []
        self.roams: list[Endpoint] = []

    def relay_moved(self, peer, src, now) -> None:
        self.moves.append(src)
        super().relay_moved(peer, src, now)

    def roamed(self, peer, src, now) -> None:
        self.roams.append(src)
        super().roamed(peer, src, now)


def receiving_plane(created: float) -> DataPlane:
    """A node at OWN whose one peer (PEER, PEER_KEY) has a current session with local index 22, made at ``created``."""
    node = RecordingNode()
    core = node.core
    core.coord_message(m.Registered(node_key=core.public_key, name="me", address=OWN, network=NETWORK), 0.0)
    core.coord_message(m.PeerMap(peers=(m.PeerInfo(key=PEER_KEY, name="peer", address=PEER, online=True),)), 0.0)
    peer = core.peers.find("peer")
    peer.ring.current = Session(SessionKeys(b"r" * 32, b"s" * 32, 22, 11, PEER_KEY, True), created)
    core.peers.index(22, peer)
    return DataPlane(node)


def from_peer(counters: list[int], envelope: bytes = b"") -> list[bytes]:
    """Packets from the peer, sealed by its session with these counters, behind ``envelope``."""
    sender = Session(SessionKeys(b"s" * 32, b"r" * 32, 11, 22, bytes([8]) * 32, True), 0.0)
    out = bytearray(4096)
    messages = []
    for n, counter in enumerate(counters):
        sender.send_counter = counter
        packet = sized_packet(PEER, OWN, 200, n)
        messages.append(envelope + bytes(out[: sender.seal_into(out, 0, packet, 0, len(packet))]))
    return messages


def relayed(first: int, count: int) -> list[bytes]:
    """``count`` packets from the peer, sealed by its session and wrapped as a relay forwards them."""
    return from_peer(list(range(first, first + count)), relay_prefix(PEER_KEY))


class NativeSide:
    """A data path whose receives the native thread takes, from two sockets: two relays, or the peer at two addresses."""

    def __init__(self, data: DataPlane | None = None, tun=lambda sock: sock) -> None:
        """``data`` (the node's data path; default ``receiving_plane``) and ``tun(socket)``, what the receiver writes to."""
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.setblocking(False)
        BatchUdpSocket(self.rx)  # turns UDP_GRO on
        self.relays = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for relay in self.relays:
            relay.bind(("127.0.0.1", 0))
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.data = data if data is not None else receiving_plane(time.monotonic())
        self.receiver = NativeReceiver(self.data, self.rx.fileno(), tun(self.tun), SendBuffer(lambda *_: None),
                                       lambda: None)
        self.receiver.sync(time.monotonic())
        self.receiver._loop.start()

    def source(self, relay: int) -> Endpoint:
        return Endpoint(*self.relays[relay].getsockname())

    def receive(self, relay: int, messages: list[bytes]) -> tuple[float, float]:
        """Send ``messages`` through relay ``relay`` and fold what the thread saw; the time span they arrived in."""
        seen = self.receiver.totals["opened natively"]
        before = time.monotonic()
        for message in messages:
            self.relays[relay].sendto(message, self.rx.getsockname())
        deadline = before + 5.0
        while self.receiver.totals["opened natively"] < seen + len(messages) and time.monotonic() < deadline:
            time.sleep(0.002)
            self.receiver.pull(time.monotonic())
        assert self.receiver.totals["opened natively"] == seen + len(messages)
        return before, time.monotonic()

    def close(self) -> None:
        self.receiver._loop.stop()
        for sock in (self.rx, *self.relays, self.tun, self.tun_peer):
            sock.close()


@pytest.fixture
def native():
    side = NativeSide()
    yield side
    side.close()


def test_relayed_receives_of_the_thread_reach_the_peer_as_the_python_paths_do(native):
    python = receiving_plane(0.0)
    rounds = [(0, relayed(0, 3)), (0, relayed(3, 2)), (1, relayed(5, 3)), (1, relayed(8, 1)), (0, relayed(9, 2))]
    for step, (relay, messages) in enumerate(rounds, 1):
        src = native.source(relay)
        now = 10.0 * step
        python.core_touched = False
        python.open_messages([(message, src) for message in messages], now)
        native.data.core_touched = False
        before, after = native.receive(relay, messages)
        py_peer, native_peer = python.core.peers.find("peer"), native.data.core.peers.find("peer")
        assert py_peer.last_relay_rx == now and before <= native_peer.last_relay_rx <= after
        assert native_peer.last_relay_src == py_peer.last_relay_src == src
        assert native.data.core.moves == python.core.moves, "a new relay has the relay links check themselves"
        assert native.data.core_touched == python.core_touched
        assert native_peer.last_rx == py_peer.last_rx == 0.0, "relayed data says nothing about the direct path"
        assert native_peer.counters.rx_packets == py_peer.counters.rx_packets
    assert python.core.moves == [native.source(1), native.source(0)]
