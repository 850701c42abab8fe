"""With access rules active the native thread delivers what the Python path delivers, count for count.

The filter (`meshvpn.lan.access`) decides in Python; the thread serves only the flows it let in
(`meshvpn.lan.flowcache`) and hands every other packet back, opened, to be judged.  A node's data
path with the thread (``NativeReceiver``) on a loopback UDP socket and an AF_UNIX socket for its
TUN (a real ``TunDevice`` over it) takes the same datagrams as a Python-only data path with the
same rules: the TUN gets the same packets, the peer the same counts, the filter the same drops
by rule; the second time a flow comes, the thread delivers it itself.  A rule change and a peer
leaving clear the thread's flows at once.  Waits are bounded.
"""

import socket
import time

import pytest

from meshvpn.control import messages as m
from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.node.datapath.tun import TunDevice
from meshvpn.node.node import Node
from meshvpn.noise import SessionKeys
from meshvpn.portspec import parse_service
from meshvpn.session import Session
from meshvpn.sim.packets import SYN, icmp_echo, icmp_error, tcp, udp
from tests.unit import test_native_relay_rx as relay_rx
from tests.unit.test_native_loop import NATIVE_MODULE

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
OWN, PEER = "100.64.0.2", "100.64.0.1"
PEER_KEY = bytes([1]) * 32
PEER_INFO = m.PeerInfo(key=PEER_KEY, name="peer", address=PEER, online=True)
NETWORK = m.NetworkInfo(name="access", cidr="100.64.0.0/24")
OPEN = m.AccessInfo("deny", (m.RuleInfo(0, "allow", ("peer",), (parse_service("udp/5000"),)),
                             m.RuleInfo(1, "deny", ("*",), (parse_service("tcp"),))))
CLOSED = m.AccessInfo("deny", (m.RuleInfo(0, "deny", ("peer",), (parse_service("udp/5000"),)),))
ALLOWED = [udp(PEER, OWN, 1234, 5000, bytes([n]) * (10 + n)) for n in range(4)]
"""One flow the rules let in: the thread may serve it once the filter has."""
REFUSED = [tcp(PEER, OWN, 1234, 22, SYN), icmp_echo(PEER, OWN), udp(PEER, OWN, 1234, 6000, b"x")]
"""Rule 1 and the default (twice) refuse these."""


class _Device:
    """What ``TunDevice`` needs of its device, over a socket standing in for the TUN."""

    def __init__(self, sock: socket.socket) -> None:
        self.name, self._sock = "tun-stand-in", sock

    def fileno(self) -> int:
        return self._sock.fileno()


class _Clock:
    def time(self) -> float:
        return time.monotonic()


def with_session(plane: DataPlane, created: float) -> None:
    """The peer's current session (local index 22), as a handshake would leave it."""
    peer = plane.core.peers.find("peer")
    peer.ring.current = Session(SessionKeys(b"r" * 32, b"s" * 32, 22, 11, PEER_KEY, True), created)
    plane.core.peers.index(22, peer)


def ruled_plane(created: float, access: m.AccessInfo = OPEN, own: str = OWN, network: m.NetworkInfo = NETWORK,
                peer: m.PeerInfo = PEER_INFO) -> DataPlane:
    """A node at ``own`` in ``network`` with ``access`` rules, the peer in its map with a session."""
    node = Node(bytes([8]) * 32, lambda n: bytes(n))
    node.receive_coord(m.Registered(node_key=node.core.public_key, name="me", address=own, network=network,
                                    access=access), 0.0)
    node.receive_coord(m.PeerMap(peers=(peer,)), 0.0)
    plane = DataPlane(node)
    with_session(plane, created)
    return plane


class Sealer:
    """The peer's side of the session: its counter goes on across rounds."""

    def __init__(self) -> None:
        self.session = Session(SessionKeys(b"s" * 32, b"r" * 32, 11, 22, bytes([8]) * 32, True), 0.0)

    def seal(self, packets: list[bytes]) -> list[bytes]:
        out = bytearray(4096)
        return [bytes(out[: self.session.seal_into(out, 0, p, 0, len(p))]) for p in packets]


class NativeSide(relay_rx.NativeSide):
    """A data path with the rules, its thread, and a real ``TunDevice`` over the TUN's stand-in; the peer at ``relays[0]``."""

    def __init__(self, plane: DataPlane | None = None) -> None:
        super().__init__(plane or ruled_plane(time.monotonic()), lambda sock: TunDevice(_Device(sock), 1))
        self.tun_peer.settimeout(0)

    def take(self, messages: list[bytes], expected: int) -> list[bytes]:
        """Send ``messages``; once the thread opened them, Python takes what it handed back; the TUN's packets."""
        self.receive(0, messages)
        self.receiver._on_wake(_Clock())
        written, deadline = [], time.monotonic() + 5.0
        while len(written) < expected and time.monotonic() < deadline:
            try:
                written.append(self.tun_peer.recv(1 << 17)[10:])
            except BlockingIOError:
                time.sleep(0.002)
        return written


@pytest.fixture
def native():
    side = NativeSide()
    yield side
    side.close()


def test_with_rules_the_thread_delivers_and_counts_as_the_python_path_and_serves_flows_let_in(native):
    python, sealer = ruled_plane(0.0), Sealer()
    lan_py, lan_native = python.lan, native.data.lan

    def both(packets: list[bytes], step: int) -> int:
        """Both paths take the same datagrams; what the thread handed back to Python."""
        messages = sealer.seal(packets)
        expected = [bytes(p) for p in python.open_messages([(msg, native.source(0)) for msg in messages], 10.0 * step)]
        handed = native.receiver.totals["handed to python"]
        assert sorted(native.take(messages, len(expected))) == sorted(expected)
        py_peer, native_peer = python.core.peers.find("peer"), native.data.core.peers.find("peer")
        assert (native_peer.counters.rx_packets, native_peer.counters.rx_bytes) == \
            (py_peer.counters.rx_packets, py_peer.counters.rx_bytes)
        assert native_peer.counters.drops == py_peer.counters.drops
        assert lan_native.access.dropped == lan_py.access.dropped
        assert lan_native.received == lan_py.received
        return native.receiver.totals["handed to python"] - handed

    assert both(ALLOWED[:1] + REFUSED, 1) == 4, "nothing decided yet: all judged in Python"
    assert lan_py.access.dropped == {"rule 1": 1, "default": 2}
    assert both(ALLOWED[1:] + REFUSED[:1], 2) == 1, "the flow let in passes in the thread; a refusal is judged again"
    assert native.data.core.peers.find("peer").counters.drops == {"access": 4}

    for plane in (python, native.data):
        plane.core.receive_coord(m.Access(access=CLOSED), 0.0)
    native.receiver.sync(time.monotonic())
    assert both(ALLOWED[:2], 3) == 2, "the new rules hold at once: the flow is judged again"
    assert lan_py.access.dropped["rule 0"] == 2

    for plane in (python, native.data):
        plane.core.receive_coord(m.Access(access=OPEN), 0.0)
    native.receiver.sync(time.monotonic())
    assert both(ALLOWED[:1], 4) == 1
    assert both(ALLOWED[:1], 5) == 0, "let in again, and served by the thread"
    for plane in (python, native.data):
        plane.core.receive_coord(m.PeerRemove(key=PEER_KEY), 0.0)
    native.receiver.sync(time.monotonic())
    for plane in (python, native.data):
        plane.core.receive_coord(m.PeerMap(peers=(PEER_INFO,)), 0.0)
        with_session(plane, time.monotonic())
    native.receiver.sync(time.monotonic())
    assert both(ALLOWED[:1], 6) == 1, "the peer left: no accept cached before outlives it"


def test_icmp_errors_about_flows_the_rules_let_in_pass_as_related_in_both_paths_and_always_in_python(native):
    """An error about the answer of a flow rule 0 lets in comes in as related, one about a TCP answer
    does not (the default refuses it), on both paths alike; the thread serves neither, since an
    error's own key does not name the flow it is about."""
    python, sealer = ruled_plane(0.0), Sealer()
    errors = [icmp_error(PEER, OWN, udp(OWN, PEER, 5000, 1234, b"answer"), code=4, data=1280),
              icmp_error(PEER, OWN, tcp(OWN, PEER, 22, 1234, SYN))]
    for step in (1, 2):
        messages = sealer.seal(errors)
        expected = [bytes(p) for p in python.open_messages([(msg, native.source(0)) for msg in messages], 10.0 * step)]
        handed = native.receiver.totals["handed to python"]
        assert sorted(native.take(messages, len(expected))) == sorted(expected) == errors[:1]
        assert native.receiver.totals["handed to python"] - handed == 2
        assert native.data.lan.access.dropped == python.lan.access.dropped == {"default": step}
