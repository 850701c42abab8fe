"""The native threads' busy poll after traffic (meshvpn/_fastpath_wait.c): the node's Loop, the relay's RelayLoop.

Real parts: each thread on a loopback UDP socket (the node's with an AF_UNIX socket standing in
for its TUN).  Traffic the thread moves itself (the node's seals a TUN read for an installed
sender, the relay's forwards an envelope between two registrations) starts the busy poll; a
datagram nobody installed is only handed to Python, which does not.  ``spins()`` counts the
looks of the busy poll that found nothing.  Waits are bounded.
"""

import select
import socket
import time

import pytest

from meshvpn import keys, wire
from tests.unit.test_fastpath import ACCEPT4, DST4, NATIVE_MODULE, SRC4, ipv4, sessions

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
SPELL_US = 1000
"""The longest busy poll the threads take: the spell the tests ask for."""
FAR = 1e12
"""An expiry that never comes."""
A_KEY, B_KEY = keys.public_key(bytes([3]) * 32), keys.public_key(bytes([4]) * 32)


def endpoint(sock: socket.socket) -> tuple[bytes, int]:
    host, port = sock.getsockname()
    return socket.inet_aton(host), port


class Thread:
    """One native thread on a loopback socket, a socket to send it datagrams, and one its sends reach."""

    def __init__(self, kind: str, busy_poll_us: int, start: bool = True) -> None:
        self.kind = kind
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(5.0)
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fds = (self.rx.fileno(), self.tun.fileno()) if kind == "Loop" else (self.rx.fileno(),)
        self.loop = getattr(NATIVE_MODULE, kind)(*fds, busy_poll_us=busy_poll_us)
        if start:
            self.loop.start()

    def close(self) -> None:
        self.loop.stop()
        for sock in (self.rx, self.tx, self.peer, self.tun, self.tun_peer):
            sock.close()

    def traffic(self) -> None:
        """One datagram through the thread: it is handed over (the thread's eventfd wakes) and taken."""
        self.tx.sendto(b"\x01\x01hello", self.rx.getsockname())
        assert select.select([self.loop.fileno()], [], [], 5.0)[0], "the thread did not hand the datagram over"
        assert [data for data, _, _ in self.loop.take()] == [b"\x01\x01hello"]

    def install(self) -> None:
        """What the thread moves itself: a sender to the peer socket (node), or two registrations (relay)."""
        if self.kind == "Loop":
            self.sender, _ = sessions()
            counter = NATIVE_MODULE.NativeCounter(0)
            self.loop.replace([], [(DST4, self.sender.remote_index, self.sender.send_key, counter, endpoint(self.peer),
                                    b"", FAR)], ACCEPT4, b"", [])
        else:
            bucket = NATIVE_MODULE.NativeBucket(1e6, 1e6, time.time())
            self.loop.replace([(A_KEY, 1, endpoint(self.tx), bucket, FAR), (B_KEY, 1, endpoint(self.peer), bucket, FAR)])

    def moved(self, count: int = 1, sent=lambda: None) -> None:
        """Packets the thread sends itself: TUN reads sealed (node), envelopes forwarded (relay)."""
        for size in range(60, 60 + count):
            if self.kind == "Loop":
                self.tun_peer.send(bytes(10) + ipv4(SRC4, size, 1, DST4))
            else:
                inner = wire.header(wire.MessageType.DATA) + bytes(size)
                self.tx.sendto(wire.encode_relay(B_KEY, inner), self.rx.getsockname())
        sent()
        for _ in range(count):
            assert self.peer.recv(65535), "the thread did not send it on"


@pytest.fixture(params=("Loop", "RelayLoop"))
def kind(request):
    return request.param


@pytest.mark.parametrize("busy_poll_us", [-1, SPELL_US + 1])
def test_the_spell_is_bounded_to_a_millisecond(kind, busy_poll_us):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fds = (rx.fileno(), rx.fileno()) if kind == "Loop" else (rx.fileno(),)
    with rx, pytest.raises(ValueError, match="busy_poll_us is 0 to 1000"):
        getattr(NATIVE_MODULE, kind)(*fds, busy_poll_us=busy_poll_us)


def test_an_idle_thread_does_not_spin(kind):
    thread = Thread(kind, SPELL_US)
    try:
        time.sleep(0.05)
        assert thread.loop.spins() == 0
    finally:
        thread.close()


def test_after_traffic_it_moved_the_thread_spins_then_sleeps(kind):
    thread = Thread(kind, SPELL_US)
    try:
        thread.install()
        for _ in range(50):  # a thread kept off the CPU for its whole spell does not spin: try again
            thread.moved()
            time.sleep(0.02)
            if thread.loop.spins():
                break
        spun = thread.loop.spins()
        assert spun > 0
        time.sleep(0.05)
        assert thread.loop.spins() == spun
    finally:
        thread.close()


def test_a_burst_already_queued_when_the_thread_looks_starts_no_spell(kind):
    """A bulk flow keeps the thread busy anyway: only a packet that came alone (a request) is worth a spin."""
    thread = Thread(kind, SPELL_US, start=False)
    try:
        thread.install()
        thread.moved(count=5, sent=thread.loop.start)
        time.sleep(0.02)
        assert thread.loop.spins() == 0
    finally:
        thread.close()


def test_traffic_only_handed_to_python_does_not_spin(kind):
    """Its answer, if any, comes back through Python (a relayed TCP stream, a handshake): no spell for it."""
    thread = Thread(kind, SPELL_US)
    try:
        for _ in range(20):
            thread.traffic()
            time.sleep(0.005)
        assert thread.loop.spins() == 0
    finally:
        thread.close()


def test_a_spell_of_zero_is_a_plain_poll(kind):
    thread = Thread(kind, 0)
    try:
        thread.install()
        for _ in range(5):
            thread.moved()
        time.sleep(0.02)
        assert thread.loop.spins() == 0
    finally:
        thread.close()
