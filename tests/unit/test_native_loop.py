"""The native receive thread (meshvpn._fastpath.Loop) against the Python receive path, byte for byte.

Real parts: a loopback UDP socket with UDP_GRO (BatchUdpSocket) carries sealed datagrams to the
thread, and an AF_UNIX datagram socket stands in for the TUN, so each TUN write the thread makes
is one message the test reads.  The datagrams are queued before the thread starts, so it takes
them in one burst and its writes are what the Python path (fastpath.open_run, then
coalesce_iov) makes of the same datagrams.  Waits are bounded.
"""

import socket
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshvpn.dualstack import dual_socket
from meshvpn.node.datapath import fastpath, offload
from meshvpn.node.datapath.offload import F_NEEDS_CSUM, VirtioNetHdr, segment
from meshvpn.replay import ReplayWindow
from meshvpn.session import OVERHEAD
from meshvpn.udpbatch import BatchUdpSocket
from meshvpn.wire import relay_prefix
from tests.unit.test_fastpath import (ACCEPT4, ALL_NODES6, BROADCAST4, DST4, DST6, LAN4, MDNS6, NATIVE_MODULE, SRC4, SRC6, SSDP6,
                                     ipv6_packet, datagram_run, ipv4, kinds, sessions,
                                     tcp_super_packet)

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
FAR = 1e12
"""An expiry that never comes."""
PEER_KEY = b"P" * 32
"""The sending peer's key: its relay envelopes carry it."""
PIN = 7
"""The id of the pinned socket a pinned rig's peer uses."""
MANY_PINS = 40
"""A large pinned set: the peer's socket is the 40th the thread serves (past 32, once the thread's limit)."""


def gro_socket(dual: bool = False) -> socket.socket:
    sock = dual_socket(0) if dual else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if not dual:
        sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setblocking(False)
    BatchUdpSocket(sock)  # turns UDP_GRO on
    return sock


class Rig:
    """A Loop on a loopback socket, a sender socket, and the TUN's stand-in.

    `pinned`: the loop serves this many pinned sockets and the peer's path is on the last of them
    (``rx``, served through ``Loop.pin`` as PIN, plain IPv4 as birthday sockets are; the others are
    other paths' sockets, idle) rather than on the loop's main socket (``main``, `dual`-stack or
    not), and its sender sends from there."""

    def __init__(self, dual: bool = False, pinned: int = 0) -> None:
        self.rx = gro_socket(dual and not pinned)
        self.main = gro_socket(dual) if pinned else self.rx
        self.sid = PIN if pinned else 0
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tun_peer.settimeout(0)
        self.loop = NATIVE_MODULE.Loop(self.main.fileno(), self.tun.fileno())
        self.others = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(max(pinned - 1, 0))]
        if pinned:
            pins = [(PIN + 1 + i, sock.fileno()) for i, sock in enumerate(self.others)] + [(PIN, self.rx.fileno())]
            assert self.loop.pin(pins) == [sid for sid, _ in pins]
        self.totals = [0] * 10
        self.rows = []

    def close(self) -> None:
        self.loop.stop()
        for sock in {self.rx, self.main, self.tx, self.tun, self.tun_peer, *self.others}:
            sock.close()

    def send(self, messages) -> None:
        for message in messages:
            self.tx.sendto(message, ("127.0.0.1", self.rx.getsockname()[1]))

    def wait_receives(self, count: int, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            rows, _, totals = self.loop.counts()
            self.rows += rows
            self.totals = [a + b for a, b in zip(self.totals, totals)]
            if self.totals[0] >= count or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        assert self.totals[0] == count

    def tun_writes(self) -> list[bytes]:
        writes = []
        while True:
            try:
                writes.append(self.tun_peer.recv(1 << 17))
            except BlockingIOError:
                return writes


@pytest.fixture
def rig():
    made = Rig()
    yield made
    made.close()


def tcp_segments(count: int) -> list[bytes]:
    packet, hdr = tcp_super_packet(4, bytes(range(256)) * 8, 240)
    return [bytes(p) for p in segment(packet, hdr)][:count]


def sealed(sender, packets) -> list[bytes]:
    out = bytearray(4096)
    return [bytes(out[: sender.seal_into(out, 0, p, 0, len(p))]) for p in packets]


def python_path(messages, window: ReplayWindow):
    """What the Python receive path does with the same datagrams, one receive each: TUN writes and counts.

    A relay envelope is opened with the peer's key as ``DataPlane.open_datagrams`` gives it.
    """
    _, receiver = sessions()
    receiver.window = window
    to_tun, counts, handed = [], [0] * 6, []
    for message in messages:
        buf = bytearray(message)
        relay_key = PEER_KEY if message[1:2] == b"\x07" else None
        result = fastpath.open_run(receiver, 2, relay_key, SRC4, ACCEPT4, buf, memoryview(buf), 0, len(buf), len(buf),
                                   to_tun)
        if result[0] == 0:
            handed.append(message)
        for i, value in enumerate(result[2:8]):
            counts[i] += value
    writes = [b"".join(bytes(part) for part in iov) for iov in offload.coalesce_iov(to_tun)]
    return writes, counts, handed


def enveloped(messages, relayed: str) -> list[bytes]:
    """The messages as a relay forwards them (``right``), every other one under another key (``wrong``), or bare."""
    if relayed == "bare":
        return messages
    return [relay_prefix(PEER_KEY if relayed == "right" or i % 2 else b"Q" * 32) + m for i, m in enumerate(messages)]


CROWD = 10_000
"""Other peers in the large tables: the thread finds the one a packet is for among them."""


def crowd_entries(count: int) -> list[tuple]:
    """`count` entries of other peers (receiver indexes spread over 32 bits, never 2), made once."""
    made = crowd_entries.__dict__.setdefault("made", [])
    while len(made) < count:
        index = (len(made) + 3) * 2654435761 & 0xFFFFFFFF
        made.append((index, bytes(32), NATIVE_MODULE.NativeWindow(ReplayWindow()), bytes([10, 0, 0, 1]), b"Q" * 32, FAR))
    return made[:count]


def crowd_senders(count: int, endpoint: tuple) -> list[tuple]:
    """`count` senders of other peers (overlay addresses in 10.0.0.0/8, never DST4), to `endpoint`."""
    return [(bytes([10, i >> 16 & 255, i >> 8 & 255, i & 255]), i, bytes(32), NATIVE_MODULE.NativeCounter(0), endpoint,
             b"", FAR) for i in range(count)]


@settings(max_examples=25, deadline=None)
@given(choices=st.lists(st.tuples(kinds, st.integers(0, 1000)), min_size=1, max_size=20),
       flow=st.integers(0, 12), flow_at=st.integers(0, 20), relayed=st.sampled_from(["bare", "right", "wrong"]),
       crowd=st.sampled_from([0, CROWD]), place=st.floats(0, 1), pinned=st.sampled_from([0, 1, MANY_PINS]))
@example(choices=[("data", 1), ("forged", 2), ("data", 3)], flow=3, flow_at=1, relayed="bare", crowd=0, place=0.0,
         pinned=MANY_PINS)
def test_thread_writes_what_the_python_path_writes(choices, flow, flow_at, relayed, crowd, place, pinned):
    """On the main socket or on a pinned one, alone or the last of `MANY_PINS` (what it hands over then names the socket)."""
    rig = Rig(pinned=pinned)
    try:
        sender, receiver = sessions()
        data, seg = datagram_run(choices)
        messages = [bytes(data[at : at + seg]) for at in range(0, len(data), seg)]
        messages[flow_at:flow_at] = sealed(sender, tcp_segments(flow)) if flow else []
        messages = enveloped(messages, relayed)
        expected_writes, expected_counts, expected_handed = python_path(messages, ReplayWindow())
        window = NATIVE_MODULE.NativeWindow(receiver.window)
        others = crowd_entries(crowd)
        at = int(place * crowd)
        rig.loop.replace(others[:at] + [(2, receiver.recv_key, window, SRC4, PEER_KEY, FAR)] + others[at:], [],
                         ACCEPT4, b"", [])
        rig.send(messages)
        rig.loop.start()
        rig.wait_receives(len(messages))
        rig.loop.stop()
        assert rig.tun_writes() == expected_writes
        assert [sum(row[i] for row in rig.rows) for i in range(1, 7)] == expected_counts
        taken = rig.loop.take()
        assert [m for m, _, _, _ in taken] == expected_handed and {sid for *_, sid in taken} <= {rig.sid}
        if relayed != "bare":
            assert all(row[7] == 0.0 for row in rig.rows), "relayed messages say nothing about the direct path"
        reference = ReplayWindow()
        python_path(messages, reference)
        assert (window.greatest, window._blocks) == (reference.greatest, reference._blocks)
    finally:
        rig.close()


def test_a_counter_opens_once_whichever_thread_sees_it(rig):
    sender, receiver = sessions()
    receiver.window = NATIVE_MODULE.NativeWindow(receiver.window)
    packets = tcp_segments(3)
    messages = sealed(sender, packets)
    rig.loop.replace([(2, receiver.recv_key, receiver.window, SRC4, PEER_KEY, FAR)], [], ACCEPT4, b"", [])
    rig.send(messages[:2])
    rig.loop.start()
    rig.wait_receives(2)
    assert len(rig.tun_writes()) == 1
    replayed = bytearray(messages[1])
    assert receiver.open_into(replayed, 0, len(replayed)) == -1  # Python refuses what the thread opened
    third = bytearray(messages[2])
    assert receiver.open_into(third, 0, len(third)) == len(packets[2])
    rig.send(messages[2:])  # and the thread refuses what Python opened
    rig.wait_receives(3)
    assert rig.tun_writes() == [] and sum(row[3] for row in rig.rows) == 1


def test_unknown_expired_and_skipped_sources_go_to_python_with_a_wake_up(rig):
    sender, receiver = sessions()
    messages = sealed(sender, tcp_segments(2))
    window = NATIVE_MODULE.NativeWindow(receiver.window)
    rig.loop.replace([(2, receiver.recv_key, window, SRC4, PEER_KEY, 0.0)], [], ACCEPT4, b"", [])  # expired
    rig.send(messages[:1] + [b"", b"\x01\x01hello"])
    rig.loop.start()
    rig.wait_receives(3)
    taken = rig.loop.take()
    assert [(m, seg) for m, _, seg, _ in taken] == [(messages[0], len(messages[0])), (b"", 1), (b"\x01\x01hello", 7)]
    assert taken[0][1] == rig.tx.getsockname()
    host, port = rig.tx.getsockname()
    rig.loop.replace([(2, receiver.recv_key, window, SRC4, PEER_KEY, FAR)], [], ACCEPT4, b"", [(socket.inet_aton(host), port)])
    rig.send(messages[1:])
    rig.wait_receives(4)
    assert [m for m, _, _, _ in rig.loop.take()] == messages[1:] and rig.tun_writes() == []
    assert window.greatest == -1


def test_stop_joins_the_thread_and_leaves_the_socket_alone(rig):
    rig.loop.start()
    rig.loop.stop()
    rig.loop.stop()
    rig.send([b"after"])
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            assert rig.rx.recv(100) == b"after"
            break
        except BlockingIOError:
            time.sleep(0.002)
    else:
        pytest.fail("the datagram sent after stop() did not stay in the socket")


# ---- the send side: TUN reads → sealed datagrams ---------------------------------------------


def tun_read(packet: bytes, hdr=None) -> bytes:
    """A TUN read as the thread gets it: virtio header first (a plain packet without one)."""
    return (hdr or VirtioNetHdr(0, 0, 0, 0, 0, 0)).encode() + packet


def udp4(size: int, fill: int, dst: bytes = DST4) -> bytes:
    return ipv4(SRC4, size, fill, dst)


def received_datagrams(sock: socket.socket, count: int, seconds: float = 5.0, port: int = 0) -> list[bytes]:
    """`count` datagrams, each from `port` if given."""
    sock.settimeout(seconds)
    got = [sock.recvfrom(1 << 16) for _ in range(count)]
    assert not port or {src[1] for _, src in got} == {port}
    return [data for data, _ in got]


@pytest.fixture
def peer_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def install_sender(rig, sender, peer_socket, overlay=DST4, expires_at=FAR, prefix=b"", crowd=0):
    """The sender's row (from the rig's socket for its peer), after `crowd` senders of other peers."""
    host, port = peer_socket.getsockname()
    endpoint = (socket.inet_aton(host), port)
    sender.shared_counter = NATIVE_MODULE.NativeCounter(sender.send_counter)
    rig.loop.replace([], crowd_senders(crowd, endpoint) + [(overlay, sender.remote_index, sender.send_key,
                                                            sender.shared_counter, endpoint, prefix, expires_at,
                                                            rig.sid)],
                     ACCEPT4, b"", [])


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(20, 1400), min_size=1, max_size=8), mss=st.sampled_from([0, 300, 1000]),
       counter=st.sampled_from([0, 5, 2**40]), prefix=st.sampled_from([b"", relay_prefix(PEER_KEY)]),
       crowd=st.sampled_from([0, CROWD]), pinned=st.sampled_from([0, 1, MANY_PINS]), dual=st.booleans())
@example(sizes=[100, 60], mss=300, counter=0, prefix=b"", crowd=0, pinned=1, dual=True)
@example(sizes=[100, 60], mss=300, counter=0, prefix=b"", crowd=0, pinned=MANY_PINS, dual=False)
def test_thread_seals_what_the_python_path_seals(sizes, mss, counter, prefix, crowd, pinned, dual):
    """Plain packets and one TSO super-packet, read from the TUN: the datagrams equal Session/seal_split's,
    and leave from the socket the sender names (the main one, or the pinned one, IPv4 beside a
    dual-stack main socket, whose senders' endpoints are IPv4-mapped)."""
    rig = Rig(dual=dual, pinned=pinned)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        sender, _ = sessions(counter)
        reference, _ = sessions(counter)
        install_sender(rig, sender, peer, prefix=prefix, crowd=crowd)
        reads = [tun_read(udp4(size, i)) for i, size in enumerate(sizes)]
        expected = [prefix + bytes(out[: reference.seal_into(out, 0, r, 10, len(r))])
                    for r in reads for out in [bytearray(4096)]]
        if mss:
            packet, hdr = tcp_super_packet(4, bytes(range(256)) * 12, mss)
            reads.append(tun_read(packet, hdr))
            out = bytearray(1 << 18)
            count, end, first = fastpath.seal_split(reference, prefix, bytearray(reads[-1]), 10, len(reads[-1]), hdr,
                                                    out, 0)
            expected += [bytes(out[at : min(at + first, end)]) for at in range(0, end, first)]
        for read in reads:
            rig.tun_peer.send(read)
        rig.loop.start()
        assert received_datagrams(peer, len(expected), port=rig.rx.getsockname()[1]) == expected
        rig.loop.stop()
        assert sender.shared_counter.value == reference.send_counter
        rows, send_rows, totals = rig.loop.counts()
        inner = sum(len(m) - len(prefix) - OVERHEAD for m in expected)
        assert send_rows == [(DST4, len(expected), inner, send_rows[0][3])]
        assert totals[6] == len(reads) and totals[7] == len(expected)
    finally:
        rig.close()
        peer.close()


def test_reads_it_cannot_seal_go_to_python_in_order(rig, peer_socket):
    sender, _ = sessions()
    install_sender(rig, sender, peer_socket)
    other = tun_read(udp4(100, 1, LAN4))  # no sender for this destination
    needs_checksum = tun_read(udp4(100, 2), VirtioNetHdr(F_NEEDS_CSUM, 0, 0, 0, 20, 6))  # not a partial checksum
    for read in (tun_read(udp4(60, 3)), other, needs_checksum, b"\0" * 12):
        rig.tun_peer.send(read)
    rig.loop.start()
    assert len(received_datagrams(peer_socket, 1)[0]) == 60 + OVERHEAD
    deadline = time.monotonic() + 5
    taken = []
    while len(taken) < 3 and time.monotonic() < deadline:
        taken += rig.loop.take()
        time.sleep(0.002)
    assert taken == [(other, None, 0, 0), (needs_checksum, None, 0, 0), (b"\0" * 12, None, 0, 0)]
    assert sender.shared_counter.value == 1


def test_both_threads_take_distinct_counters(rig, peer_socket):
    """Python seals with the session while the thread does: no counter is used twice."""
    sender, receiver = sessions()
    install_sender(rig, sender, peer_socket)
    rig.loop.start()
    out = bytearray(4096)
    for i in range(200):
        rig.tun_peer.send(tun_read(udp4(80, i)))
        sender.seal_into(out, 0, b"x" * 40, 0, 40)
    datagrams = received_datagrams(peer_socket, 200)
    thread_counters = {int.from_bytes(d[8:16], "little") for d in datagrams}
    assert len(thread_counters) == 200 and sender.shared_counter.value == 400
    python_counters = set(range(400)) - thread_counters
    assert len(python_counters) == 200
    assert all(receiver.open(d) is not None for d in datagrams)


def test_an_expired_sender_leaves_the_read_to_python(rig, peer_socket):
    sender, _ = sessions()
    install_sender(rig, sender, peer_socket, expires_at=0.0)
    read = tun_read(udp4(60, 3))
    rig.tun_peer.send(read)
    rig.loop.start()
    deadline = time.monotonic() + 5
    taken = []
    while not taken and time.monotonic() < deadline:
        taken = rig.loop.take()
        time.sleep(0.002)
    assert taken == [(read, None, 0, 0)] and sender.shared_counter.value == 0


def test_a_relayed_super_packet_larger_than_one_gso_send_leaves_in_two(rig, peer_socket):
    """46 segments of 1368 bytes behind a relay envelope are 66,608 bytes: more than one UDP_SEGMENT send takes."""
    (sender, _), (reference, _) = sessions(), sessions()
    prefix = relay_prefix(PEER_KEY)
    install_sender(rig, sender, peer_socket, prefix=prefix)
    packet, hdr = tcp_super_packet(4, (bytes(range(256)) * 246)[: 46 * 1368], 1368)
    read = tun_read(packet, hdr)
    out = bytearray(1 << 18)
    count, end, first = fastpath.seal_split(reference, prefix, bytearray(read), 10, len(read), hdr, out, 0)
    assert count == 46 and end > 65507
    rig.tun_peer.send(read)
    rig.loop.start()
    assert received_datagrams(peer_socket, count) == [bytes(out[at : min(at + first, end)]) for at in range(0, end, first)]
    rig.loop.stop()
    assert rig.loop.counts()[2][8:] == (2, 0)  # two sends, no error


def test_packets_not_to_the_node_itself_are_counted_as_broadcast_or_multicast(rig):
    """The LAN party counts what arrives for the overlay's broadcast and for joined groups; the
    thread delivers such packets itself, so it counts them per session (the first accepted
    address is the node's own)."""
    sender, receiver = sessions()
    group = bytes([239, 255, 0, 7])
    packets = [ipv4(SRC4, 60, 1), ipv4(SRC4, 60, 2, dst=BROADCAST4), ipv4(SRC4, 60, 3, dst=group)]
    window = NATIVE_MODULE.NativeWindow(receiver.window)
    rig.loop.replace([(2, receiver.recv_key, window, SRC4, PEER_KEY, FAR)], [], ACCEPT4 + group, b"", [])
    rig.send(sealed(sender, packets))
    rig.loop.start()
    rig.wait_receives(3)
    assert len(rig.tun_writes()) == 3
    assert sum(row[1] for row in rig.rows) == 3
    assert (sum(row[9] for row in rig.rows), sum(row[10] for row in rig.rows)) == (1, 1)


def test_ipv6_packets_to_all_nodes_and_a_joined_group_are_counted_as_multicast(rig):
    """The same in an IPv6 overlay: the thread delivers ff02::1 and a joined group (ff02::fb) itself,
    byte for byte, and counts them as multicast; a group not joined is misdirected."""
    sender, receiver = sessions()
    packets = [ipv6_packet(SRC6, DST6, 100, 1), ipv6_packet(SRC6, ALL_NODES6, 100, 2),
               ipv6_packet(SRC6, MDNS6, 100, 3), ipv6_packet(SRC6, SSDP6, 100, 4)]
    window = NATIVE_MODULE.NativeWindow(receiver.window)
    rig.loop.replace([(2, receiver.recv_key, window, SRC6, PEER_KEY, FAR)], [], b"", DST6 + ALL_NODES6 + MDNS6, [])
    rig.send(sealed(sender, packets))
    rig.loop.start()
    rig.wait_receives(4)
    assert sorted(write[10:] for write in rig.tun_writes()) == sorted(packets[:3])  # behind the virtio header
    assert (sum(row[9] for row in rig.rows), sum(row[10] for row in rig.rows)) == (0, 2)


def test_a_sparse_flow_leaves_before_the_bulk_reads_held_ahead_of_it(rig, peer_socket):
    """A ping-sized packet of another flow read after three super-packets is sealed first; a segment
    of the bulk flow read after it stays behind them (reads are held only behind their own flow)."""
    sender, _ = sessions()
    install_sender(rig, sender, peer_socket)
    packet, hdr = tcp_super_packet(4, bytes(range(256)) * 12, 1000)
    segments = [bytes(p) for p in segment(packet, hdr)]
    ping, tail = tun_read(udp4(84, 9)), tun_read(segments[-1])
    for read in [tun_read(packet, hdr)] * 3 + [ping, tail]:
        rig.tun_peer.send(read)
    rig.loop.start()
    datagrams = received_datagrams(peer_socket, 1 + 3 * len(segments) + 1)
    counters = [int.from_bytes(d[8:16], "little") for d in datagrams]
    assert counters == sorted(counters) == list(range(len(datagrams)))
    assert len(datagrams[0]) == 84 + OVERHEAD
    assert [len(d) for d in datagrams[1:]] == [len(s) + OVERHEAD for s in segments] * 3 + [len(segments[-1]) + OVERHEAD]
