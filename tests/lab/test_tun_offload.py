"""A TCP transfer through the minimal forwarder pair arrives byte-exact, with offloads in use.

Mixed pairs matter: an offloading sender leaves TCP checksums partial, which a plain receiver
must complete (and an offloading receiver must write with NEEDS_CSUM); a plain sender's full
checksums must pass through an offloading receiver untouched.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from meshvpn.bench import forward as bench
from meshvpn.lab import Lab

TRANSFER_BYTES = 24 << 20
PORT = 9000

RECEIVER = r"""
import hashlib, socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
server.settimeout(20)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(20)
digest, size = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk)
    size += len(chunk)
print(size, digest.hexdigest(), flush=True)
"""

SENDER = r"""
import hashlib, random, socket, sys
data = random.Random(7).randbytes(int(sys.argv[3]))
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
conn.sendall(data)
conn.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


@pytest.mark.lab
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["offload:cffi", "offload/plain:cffi", "plain/offload:cffi"])
def test_tcp_transfer_through_forwarders_is_exact(lab: Lab, mode: str) -> None:
    a, b = bench.build_underlay(lab)
    tunnel = bench.Tunnel.start(a, b, mode)
    try:
        server = b.popen([sys.executable, "-c", RECEIVER, bench.OVERLAY[1], str(PORT)], stdout=subprocess.PIPE, text=True)
        bench.wait_line(server, "ready", 10.0)
        sent = a.run([sys.executable, "-c", SENDER, bench.OVERLAY[1], str(PORT), str(TRANSFER_BYTES)], timeout=40)
        received, _ = server.communicate(timeout=20)
    finally:
        sender, receiver = tunnel.stop()
    assert received.split() == sent.stdout.split()
    assert received.split()[0] == str(TRANSFER_BYTES)
    sender_io, receiver_io = (mode.split(":")[0].split("/") * 2)[:2]
    assert sender["tun_read_errors"] == receiver["tun_write_errors"] == receiver["auth_failures"] == 0
    if sender_io == "offload":
        assert sender["tun_offloads"] and sender["datagrams_sent"] > 4 * sender["tun_reads"]
    if sender_io == receiver_io == "offload":
        assert receiver["udp_gro"] and receiver["packets_written"] > 4 * receiver["tun_writes"]
    else:
        assert receiver["packets_written"] == receiver["tun_writes"], "only partial-checksum segments merge"


def drain(receiver, count: int) -> tuple[list[bytes], int]:
    """Receive until ``count`` datagrams arrived: the datagrams and how many receives it took."""
    got: list[bytes] = []
    receives = 0
    while len(got) < count:
        _, datagrams = receiver.recv_batch()
        receives += 1
        got.extend(bytes(d) for d in datagrams)
    return got, receives


@pytest.mark.parametrize("gso", [True, False])
def test_batch_udp_socket_keeps_datagram_boundaries_on_loopback(gso: bool) -> None:
    import socket

    from meshvpn.udpbatch import MAX_SEGMENTS, BatchUdpSocket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
        socks[1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sender, receiver = BatchUdpSocket(socks[0], offload=gso), BatchUdpSocket(socks[1])
        segments = [bytes([i]) * 500 for i in range(MAX_SEGMENTS + 36)] + [b"tail"]
        sender.send_batch(socks[1].getsockname(), segments, 500)
        got, receives = drain(receiver, len(segments))
        assert got == segments
        assert (receives < len(segments) / 10) if gso else receives == len(segments)
        sender.send_contiguous(socks[1].getsockname(), b"".join(segments[:5]) + b"end", 500)
        assert drain(receiver, 6)[0] == segments[:5] + [b"end"]
        assert sender.send_errors == 0 and sender.gso is gso
    finally:
        for sock in socks:
            sock.close()


def test_batch_udp_socket_falls_back_when_the_kernel_refuses_gso() -> None:
    import errno

    from meshvpn.udpbatch import BatchUdpSocket

    class RefusingSocket:
        """Refuses UDP_SEGMENT with EIO (no checksum offload on the route) and GRO entirely."""

        family = socket.AF_INET
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def setsockopt(self, *args: object) -> None:
            raise OSError(errno.ENOPROTOOPT, "no UDP_GRO")

        def sendmsg(self, iov, cmsgs, flags, dst) -> int:
            if cmsgs:
                raise OSError(errno.EIO, "no GSO here")
            self.sent.append(b"".join(iov))
            return len(self.sent[-1])

        def sendto(self, data, dst) -> int:
            self.sent.append(bytes(data))
            return len(data)

    sock = RefusingSocket()
    udp = BatchUdpSocket(sock)
    assert not udp.gro
    udp.send_batch(("192.0.2.1", 1), [b"a" * 10, b"b" * 10, b"c"], 10)
    udp.send_contiguous(("192.0.2.1", 1), b"d" * 10 + b"e" * 4, 10)
    assert sock.sent == [b"a" * 10, b"b" * 10, b"c", b"d" * 10, b"e" * 4]
    assert not udp.gso and udp.send_errors == 0
