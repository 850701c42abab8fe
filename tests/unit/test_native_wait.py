"""The native threads' busy poll after traffic (meshvpn/_fastpath_wait.c): the node's Loop, the relay's RelayLoop.

Real parts: each thread on a loopback UDP socket (the node's with an AF_UNIX socket standing in
for its TUN); a datagram nobody installed is handed to Python, which is traffic for the thread.
``spins()`` counts the looks of the busy poll that found nothing.  Waits are bounded.
"""

import select
import socket
import time

import pytest

from tests.unit.test_fastpath import NATIVE_MODULE

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
SPELL_US = 1000
"""The longest busy poll the threads take: the spell the tests ask for."""


class Thread:
    """One native thread on a loopback socket, and a socket to send it datagrams."""

    def __init__(self, kind: str, busy_poll_us: int) -> None:
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fds = (self.rx.fileno(), self.tun.fileno()) if kind == "Loop" else (self.rx.fileno(),)
        self.loop = getattr(NATIVE_MODULE, kind)(*fds, busy_poll_us=busy_poll_us)
        self.loop.start()

    def close(self) -> None:
        self.loop.stop()
        for sock in (self.rx, self.tx, self.tun, self.tun_peer):
            sock.close()

    def traffic(self) -> None:
        """One datagram through the thread: it is handed over (the thread's eventfd wakes) and taken."""
        self.tx.sendto(b"\x01\x01hello", self.rx.getsockname())
        assert select.select([self.loop.fileno()], [], [], 5.0)[0], "the thread did not hand the datagram over"
        assert [item[0] for item in self.loop.take()] == [b"\x01\x01hello"]


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


def test_after_traffic_the_thread_spins_then_sleeps(kind):
    thread = Thread(kind, SPELL_US)
    try:
        for _ in range(50):  # a thread kept off the CPU for its whole spell does not spin: try again
            thread.traffic()
            time.sleep(0.02)
            if thread.loop.spins():
                break
        spun = thread.loop.spins()
        assert spun > 0
        time.sleep(0.05)
        assert thread.loop.spins() == spun
    finally:
        thread.close()


def test_a_spell_of_zero_is_a_plain_poll(kind):
    thread = Thread(kind, 0)
    try:
        for _ in range(5):
            thread.traffic()
        time.sleep(0.02)
        assert thread.loop.spins() == 0
    finally:
        thread.close()
