"""One socket for both families (meshvpn.dualstack): the pure-Python socket edge and the native loop
see and reach the same peers under the same names, byte for byte.

Real sockets on loopback (127.0.0.1 and ::1); waits are bounded.
"""

import socket
import time

import pytest

from meshvpn.dualstack import dual_socket, is_dual, on_socket, plain
from meshvpn.udpbatch import BatchUdpSocket, bind_udp
from tests.unit.test_fastpath import NATIVE_MODULE
from tests.unit.test_native_loop import FAR, Rig, received_datagrams, sealed, sessions, tcp_segments, tun_read, udp4
from tests.unit.test_fastpath import ACCEPT4, DST4

HAS_IPV6 = dual_socket(0) is not None
pytestmark = pytest.mark.needs(not HAS_IPV6, "no IPv6 on this host")


def test_mapped_sources_read_as_plain_ipv4_and_ipv4_leaves_mapped():
    assert plain(("::ffff:192.0.2.7", 41641, 0, 0)) == ("192.0.2.7", 41641)
    assert plain(("2001:db8::7", 41641, 0, 0)) == ("2001:db8::7", 41641)
    assert plain(("::ffff:2001:db8", 5, 0, 0)) == ("::ffff:2001:db8", 5)  # not a mapped address
    assert on_socket(("192.0.2.7", 41641)) == ("::ffff:192.0.2.7", 41641)
    assert on_socket(("2001:db8::7", 41641)) == ("2001:db8::7", 41641)


def test_bind_udp_makes_one_dual_socket_only_on_the_ipv4_wildcard_when_asked():
    for host, dual_stack, family, dual in (("0.0.0.0", True, socket.AF_INET6, True),
                                           ("0.0.0.0", False, socket.AF_INET, False),
                                           ("127.0.0.1", True, socket.AF_INET, False)):
        sock = bind_udp(host, 0, 1 << 16, dual_stack=dual_stack)
        try:
            assert (sock.family, is_dual(sock)) == (family, dual)
            assert BatchUdpSocket(sock).family == socket.AF_INET  # servers are looked up in IPv4 on both
        finally:
            sock.close()


@pytest.fixture
def dual():
    sock = bind_udp("0.0.0.0", 0, 1 << 20, dual_stack=True)
    yield BatchUdpSocket(sock)
    sock.close()


def receive(udp: BatchUdpSocket, seconds: float = 2.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            source, nbytes, _ = udp.recv_into()
            return source, bytes(udp.buffer[:nbytes])
        except BlockingIOError:
            assert time.monotonic() < deadline, "nothing arrived"
            time.sleep(0.002)


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_python_edge_names_peers_of_both_families_as_the_core_does(dual, family, host):
    port = dual.sock.getsockname()[1]
    with socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.bind((host, 0))
        peer.sendto(b"hello", (host, port))
        source, data = receive(dual)
        assert (source, data) == ((host, peer.getsockname()[1]), b"hello")
        dual.sendto(b"back", source)
        dual.send_contiguous(source, b"ab" * 3, 2)
        peer.settimeout(2)
        assert [peer.recv(100) for _ in range(4)] == [b"back", b"ab", b"ab", b"ab"]
        assert dual.send_errors == 0


native = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")


@native
def test_the_native_loop_names_an_ipv4_source_as_the_python_edge_does():
    rig = Rig(dual=True)
    try:
        rig.loop.start()
        rig.send([b"\x01\x01not transport"])
        rig.wait_receives(1)
        deadline, taken = time.monotonic() + 2, []
        while not taken and time.monotonic() < deadline:
            taken = rig.loop.take()
            time.sleep(0.002)
        assert taken == [(b"\x01\x01not transport", ("127.0.0.1", rig.tx.getsockname()[1]), 15, 0)]
    finally:
        rig.close()


@native
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_native_loop_seals_to_either_family_what_the_python_path_sends(family, host):
    """The thread on a dual socket sends to a 4-byte (mapped) or a 16-byte address; both arrive as sealed."""
    rig = Rig(dual=True)
    with socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.bind((host, 0))
        try:
            sender, _ = sessions()
            reference, _ = sessions()
            sender.shared_counter = NATIVE_MODULE.NativeCounter(sender.send_counter)
            address = socket.inet_pton(family, host)
            rig.loop.replace([], [(DST4, sender.remote_index, sender.send_key, sender.shared_counter,
                                   (address, peer.getsockname()[1]), b"", FAR)], ACCEPT4, b"", [])
            read, out = tun_read(udp4(100, 1)), bytearray(4096)
            expected = bytes(out[: reference.seal_into(out, 0, read, 10, len(read))])
            rig.tun_peer.send(read)
            rig.loop.start()
            native_datagram, native_source = peer.recvfrom(4096) if received_datagrams(peer, 0) == [] else None
            rig.loop.stop()
            BatchUdpSocket(rig.rx).sendto(expected, (host, peer.getsockname()[1]))
            python_datagram, python_source = peer.recvfrom(4096)
            assert native_datagram == python_datagram == expected
            assert native_source[:2] == python_source[:2] == (host, rig.rx.getsockname()[1])
        finally:
            rig.close()
