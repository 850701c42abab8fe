"""The pinned sockets the native thread serves (``Loop.pin``, _fastpath_pins.c) and their hand-over.

The thread keeps its own duplicate of each pinned socket and closes one that left the set itself,
between polls: Python may close its socket at any time, and the port is free once the thread let
go. Byte-for-byte equality with the Python path on a pinned socket is in `test_native_loop`
(its ``pinned`` rigs). Waits are bounded.
"""

import asyncio
import socket
import time

import pytest

from meshvpn.node.mappings import LIMIT, MappingSockets
from meshvpn.wire import Endpoint
from tests.unit.test_fastpath import ACCEPT4, NATIVE_MODULE, SRC4, sessions
from tests.unit.test_native_loop import (FAR, PEER_KEY, PIN, Rig, install_sender, peer_socket, sealed,  # noqa: F401
                                        tcp_segments, tun_read, udp4)

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")


@pytest.fixture
def rig():
    made = Rig(pinned=1)
    yield made
    made.close()


def wait_until(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_what_the_thread_leaves_to_python_names_the_pinned_socket_and_skips_nothing(rig):
    """A pinned socket carries a path only: a skipped endpoint (a TURN server) is not looked for there."""
    host, port = rig.tx.getsockname()
    rig.loop.replace([], [], ACCEPT4, b"", [(socket.inet_aton(host), port)])
    rig.send([b"\x01\x01probe"])
    rig.loop.start()
    rig.wait_receives(1)
    assert rig.loop.take() == [(b"\x01\x01probe", (host, port), 7, PIN)]


def test_a_socket_that_left_the_set_is_closed_by_the_thread_and_its_peer_goes_to_python(rig, peer_socket):
    sender, receiver = sessions()
    install_sender(rig, sender, peer_socket)
    window = NATIVE_MODULE.NativeWindow(receiver.window)
    rig.loop.patch([], [(2, receiver.recv_key, window, SRC4, PEER_KEY, FAR)], [], [], ACCEPT4, b"", [])
    rig.loop.start()
    rig.tun_peer.send(tun_read(udp4(100, 1)))
    peer_socket.settimeout(5)
    assert peer_socket.recvfrom(2048)[1] == rig.rx.getsockname(), "sealed and sent from the pinned socket"
    port = rig.rx.getsockname()[1]
    assert rig.loop.pin([]) == []
    rig.rx.close()  # Python's descriptor: the thread has its own until its next turn
    assert wait_until(lambda: port_free(port)), "the thread closed its duplicate: the port is free"
    read = tun_read(udp4(100, 2))
    rig.tun_peer.send(read)
    assert wait_until(lambda: rig.loop.take() == [(read, None, 0, 0)]), "no socket to send from: Python's"
    assert sender.shared_counter.value == 1


def test_the_thread_serves_as_many_pinned_sockets_as_a_node_holds_open_and_keeps_the_ones_still_pinned(rig):
    """Every socket `MappingSockets` may hold open (its LIMIT) is served; one more given is not."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(LIMIT + 8)]
    try:
        pins = [(sid, sock.fileno()) for sid, sock in enumerate(sockets, start=10)]
        assert rig.loop.pin(pins) == list(range(10, 10 + LIMIT))
        assert rig.loop.pin([(PIN, rig.rx.fileno())] + pins[:3] + pins[:1]) == [PIN, 10, 11, 12]
        with pytest.raises(ValueError):
            rig.loop.pin([(0, rig.rx.fileno())])
        assert rig.loop.pin([(PIN, rig.rx.fileno())]) == [PIN], "a failed pin() changed nothing"
    finally:
        for sock in sockets:
            sock.close()
    sender, receiver = sessions()
    rig.loop.replace([(2, receiver.recv_key, NATIVE_MODULE.NativeWindow(receiver.window), SRC4, PEER_KEY, FAR)], [],
                     ACCEPT4, b"", [])
    rig.send(sealed(sender, tcp_segments(2)))
    rig.loop.start()
    rig.wait_receives(2)
    assert len(rig.tun_writes()) == 1 and sum(row[1] for row in rig.rows) == 2


def test_mapping_sockets_hand_a_served_socket_back_before_closing_it(rig):
    """The loop stops reading a socket the thread serves, and reads it again once handed back;
    `keep_only` hands a served socket back before it closes it."""
    runs = []

    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        mappings = MappingSockets(loop, "127.0.0.1", lambda sid, run, seg, src: runs.append((sid, bytes(run))), 1 << 20)
        try:
            mappings.open([b"probe"], Endpoint(*rig.tx.getsockname()), keep=60.0)
            [(sid, sock)] = mappings.sockets().items()
            port = sock.getsockname()[1]
            mappings.hand_over(rig.loop.pin, [sid, sid + 1])  # an id that is not open is not handed over
            rig.loop.start()
            rig.tx.sendto(b"\x01\x01to the thread", ("127.0.0.1", port))
            for _ in range(500):
                taken = rig.loop.take()
                if taken:
                    break
                await asyncio.sleep(0.002)

            for message, source, seg, via in taken:
                mappings.received(via, memoryview(message), seg, Endpoint(*source))
            assert runs == [(sid, b"\x01\x01to the thread")], "the thread read it, the loop did not"
            mappings.hand_over(rig.loop.pin, [])
            rig.tx.sendto(b"\x01\x01to the loop", ("127.0.0.1", port))
            for _ in range(500):
                if len(runs) > 1:
                    break
                await asyncio.sleep(0.002)
            mappings.hand_over(rig.loop.pin, [sid])
            return [port]
        finally:
            mappings.close()

    [port] = asyncio.run(scenario())
    assert runs[1:] == [(1, b"\x01\x01to the loop")]
    assert wait_until(lambda: port_free(port)), "closed by both: the thread let go first"
