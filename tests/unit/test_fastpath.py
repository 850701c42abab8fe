"""The batch loops of meshvpn.node.datapath.fastpath: native and pure-Python implementations agree byte for byte.

Each test runs with both implementations (the native one only where it was built, and under
`CI=true` a missing build fails every native test instead of skipping it); the
comparison tests run both on the same input and compare every output byte, the returned
counts and the replay window afterwards.
"""

import os
import random
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.node.datapath import fastpath
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.datapath.offload import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VirtioNetHdr, segment
from meshvpn.noise import SessionKeys
from meshvpn.replay import ReplayWindow
from meshvpn.session import OVERHEAD, KeyRing, Session

NATIVE_MODULE = fastpath._built
needs_native = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
SRC4, DST4 = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
BROADCAST4, LAN4 = bytes([100, 64, 0, 255]), bytes([192, 168, 1, 1])
ACCEPT4 = DST4 + BROADCAST4
"""What the receiver (DST4) accepts: its own address, then the overlay network's broadcast."""
SRC6, DST6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
KEY_A, KEY_B = bytes(range(32)), bytes(range(100, 132))
RELAY_KEY = b"K" * 32


@pytest.fixture(params=["pure", pytest.param("native", marks=needs_native)])
def impl(request, monkeypatch):
    """Run the test with one implementation of the loops."""
    monkeypatch.setattr(fastpath, "_native", NATIVE_MODULE if request.param == "native" else None)
    return request.param


def run_with(native: bool, function, *args):
    """``function(*args)`` with the chosen implementation; an exception is returned, not raised."""
    saved = fastpath._native
    fastpath._native = NATIVE_MODULE if native else None
    try:
        return function(*args)
    except RemoteProtocolError as exc:
        return type(exc)
    finally:
        fastpath._native = saved


def sessions(counter: int = 0):
    sender = Session(SessionKeys(KEY_A, KEY_B, 1, 2, b"P" * 32, True), 0.0)
    receiver = Session(SessionKeys(KEY_B, KEY_A, 2, 1, b"P" * 32, False), 0.0)
    sender.send_counter = counter
    return sender, receiver


def tcp_super_packet(version: int, payload: bytes, mss: int, flags: int = 0x10, seq: int = 4000,
                     options: bytes = b"\x01\x01\x08\x0a" + bytes(8)) -> tuple[bytes, VirtioNetHdr]:
    """A TSO super-packet as the TUN hands it over (partial checksum left to the split)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (20 + len(options)) // 4 << 4, flags, 500, 0, 0)
    tcp += options
    length = len(tcp) + len(payload)
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0xFFF0, 0x4000, 64, 6, 0, SRC4, DST4)
        l3, kind = 20, GSO_TCPV4
    else:
        ip = struct.pack("!IHBB", 6 << 28, length, 6, 64) + SRC6 + DST6
        l3, kind = 40, GSO_TCPV6
    return ip + tcp + payload, VirtioNetHdr(F_NEEDS_CSUM, kind, l3 + len(tcp), mss, l3, 16)


def udp_super_packet(version: int, payload: bytes, size: int) -> tuple[bytes, VirtioNetHdr]:
    udp = struct.pack("!HHHH", 5353, 5354, 8 + len(payload), 0) + payload
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, SRC4, DST4)
        l3 = 20
    else:
        ip = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + SRC6 + DST6
        l3 = 40
    return ip + udp, VirtioNetHdr(F_NEEDS_CSUM, GSO_UDP_L4, l3 + 8, size, l3, 6)


def seal_all(packet: bytes, hdr: VirtioNetHdr, prefix: bytes = b"", counter: int = 0):
    """Seal with a fresh sender: (result, out bytes, next counter)."""
    sender, _ = sessions(counter)
    out = bytearray(fastpath.room_for(len(packet), len(prefix)) + 8)
    result = fastpath.seal_split(sender, prefix, bytearray(packet), 0, len(packet), hdr, out, 8)
    return result, bytes(out), sender.send_counter


payloads = st.integers(min_value=1, max_value=20000).map(lambda n: bytes((i * 13 + n) & 0xFF for i in range(n)))


# --- seal_split ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_seal_split_seals_each_segment_split_in_place_makes(impl, version):
    packet, hdr = tcp_super_packet(version, bytes(range(256)) * 20, 1368, flags=0x18)
    prefix = b"\x01\x07\x00\x00" + RELAY_KEY
    result, out, counter = seal_all(packet, hdr, prefix)
    segments = segment(packet, hdr)
    count, end, first_size = result
    assert count == len(segments) == counter == 4
    assert first_size == len(prefix) + OVERHEAD + len(segments[0])
    _, receiver = sessions()
    at = 8
    for n, expected in enumerate(segments):
        size = len(prefix) + OVERHEAD + len(expected)
        assert out[at : at + len(prefix)] == prefix
        message = out[at + len(prefix) : at + size]
        assert message[:16] == struct.pack("<BBHIQ", 1, 3, 0, 2, n)
        assert receiver.open(message) == expected
        at += size
    assert at == end


@needs_native
@settings(max_examples=150, deadline=None)
@given(version=st.sampled_from([4, 6]), payload=payloads, mss=st.integers(min_value=400, max_value=9000),
       flags=st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x98]), seq=st.integers(0, 2**32 - 1),
       prefix=st.sampled_from([b"", b"\x01\x07\x00\x00" + RELAY_KEY]), counter=st.integers(0, 2**40))
def test_seal_split_native_equals_pure_on_tcp(version, payload, mss, flags, seq, prefix, counter):
    packet, hdr = tcp_super_packet(version, payload, mss, flags, seq)
    assert run_with(True, seal_all, packet, hdr, prefix, counter) == run_with(False, seal_all, packet, hdr, prefix, counter)


@needs_native
@settings(max_examples=60, deadline=None)
@given(version=st.sampled_from([4, 6]), payload=payloads, size=st.integers(min_value=400, max_value=4000))
def test_seal_split_native_equals_pure_on_udp(version, payload, size):
    packet, hdr = udp_super_packet(version, payload, size)
    assert run_with(True, seal_all, packet, hdr) == run_with(False, seal_all, packet, hdr)


@needs_native
@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000), kind=st.sampled_from([GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 0x81]),
       gso=st.integers(0, 3000), start=st.integers(0, 70), offset=st.sampled_from([6, 16, 7]),
       mutate=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6))
def test_seal_split_on_garbage_raises_only_remote_errors_alike(data, kind, gso, start, offset, mutate):
    packet = bytearray(tcp_super_packet(4 if kind != GSO_TCPV6 else 6, data, 1000)[0])
    for where, value in mutate:
        if where < len(packet):
            packet[where] = value
    hdr = VirtioNetHdr(F_NEEDS_CSUM, kind, 0, gso, start, offset)
    native = run_with(True, seal_all, bytes(packet), hdr)
    assert native == run_with(False, seal_all, bytes(packet), hdr)
    assert native is RemoteProtocolError or native[0] is None or native[0][0] >= 1


def test_seal_split_leaves_oversized_or_odd_packets_to_split_in_place(impl):
    packet, hdr = tcp_super_packet(4, bytes(65 * 100), 100)
    sender, _ = sessions()
    out = bytearray(200000)
    assert fastpath.seal_split(sender, b"", bytearray(packet), 0, len(packet), hdr, out, 0) is None
    assert sender.send_counter == 0


def test_seal_split_refuses_a_short_buffer_before_sealing(impl):
    packet, hdr = tcp_super_packet(4, bytes(3000), 1000)
    sender, _ = sessions()
    with pytest.raises(fastpath.LocalProtocolError):
        fastpath.seal_split(sender, b"", bytearray(packet), 0, len(packet), hdr, bytearray(4000), 0)
    assert sender.send_counter == 0


# --- open_run ------------------------------------------------------------------------------


def ipv4(src: bytes, size: int, fill: int, dst: bytes = DST4) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, src, dst) + bytes([fill & 0xFF]) * (size - 20)


DESTINATIONS = {"misdirected": LAN4, "broadcast": BROADCAST4}


def datagram_run(choices, seg_size: int = 300) -> tuple[bytearray, int]:
    """A GRO-style run of ``seg_size`` datagrams built from ``(what, n)`` choices; the last may be shorter."""
    sender, _ = sessions()
    sealed = []
    out = bytearray(4096)
    for what, n in choices:
        packet = ipv4(SRC4 if what != "spoofed" else DST4, seg_size - OVERHEAD - (n % 40 if what == "short" else 0), n,
                      DESTINATIONS.get(what, DST4))
        if what == "keepalive":
            end = sender.seal_into(out, 0, b"", 0, 0, int(wire.MessageType.KEEPALIVE))
        else:
            end = sender.seal_into(out, 0, packet, 0, len(packet))
        message = bytearray(out[:end])
        if what == "forged":
            message[20 + n % 100] ^= 1
        elif what == "replay" and sealed:
            message = bytearray(sealed[n % len(sealed)])
        elif what == "other index":
            message[4] ^= 0x40
        elif what == "garbage":
            message = bytearray(random.Random(n).randbytes(len(message)))
        sealed.append(bytes(message))
    data = bytearray(b"".join(message.ljust(seg_size, b"\0") if i + 1 < len(sealed) else message
                              for i, message in enumerate(sealed)))
    return data, seg_size


def open_all(data: bytes, seg_size: int, relay_key, window_state, at: int = 0, accept: bytes = ACCEPT4,
             native_window: bool = False):
    """Open a copy of ``data`` with a receiver whose window is ``window_state``: everything observable.

    With ``native_window`` the receiver's window is a NativeWindow copy, as the native loop installs it.
    """
    _, receiver = sessions()
    receiver.window.greatest, receiver.window._blocks = window_state[0], list(window_state[1])
    if native_window:
        receiver.window = NATIVE_MODULE.NativeWindow(receiver.window)
    buf = bytearray(data)
    to_tun = []
    result = fastpath.open_run(receiver, 2, relay_key, SRC4, accept, buf, memoryview(buf), at, len(buf), seg_size,
                               to_tun)
    spans = [(v.obj is buf, bytes(v)) for v in to_tun]
    return result, bytes(buf), spans, receiver.window.greatest, receiver.window._blocks


def fresh_window():
    return (-1, [0] * len(ReplayWindow()._blocks))


kinds = st.sampled_from(["data", "data", "data", "short", "keepalive", "forged", "replay", "spoofed",
                         "other index", "garbage", "misdirected", "broadcast"])


def test_open_run_opens_counts_and_stops_at_another_index(impl):
    choices = [("data", 1), ("forged", 2), ("keepalive", 3), ("spoofed", 4), ("replay", 0), ("data", 5),
               ("other index", 6), ("data", 7)]
    data, seg = datagram_run(choices)
    (next_at, authentic, opened, opened_bytes, failed, spoofed, wrong_key, misdirected, casts), _, spans, greatest, _ = \
        open_all(data, seg, None, fresh_window())
    assert next_at == 6 * seg, "stops where the datagram to another index starts"
    assert (authentic, opened, failed, spoofed, wrong_key, misdirected, casts) == (3, 2, 3, 1, 0, 0, 0), \
        "a padded keepalive fails"
    assert opened_bytes == 2 * (seg - OVERHEAD) and greatest == 5
    assert [body for _, body in spans] == [ipv4(SRC4, seg - OVERHEAD, 1), ipv4(SRC4, seg - OVERHEAD, 5)]
    assert all(in_place for in_place, _ in spans)


def test_open_run_takes_a_keepalive_that_ends_the_run(impl):
    data, seg = datagram_run([("data", 1), ("keepalive", 2)])
    result, *_ = open_all(data, seg, None, fresh_window())
    assert result == (len(data), 2, 1, seg - OVERHEAD, 0, 0, 0, 0, 0)


def test_open_run_keeps_only_packets_for_our_address_or_broadcast_and_counts_broadcasts(impl):
    data, seg = datagram_run([("data", 1), ("misdirected", 2), ("broadcast", 3), ("spoofed", 4), ("data", 5)])
    (next_at, authentic, opened, _, failed, spoofed, wrong_key, misdirected, casts), _, spans, _, _ = open_all(
        data, seg, None, fresh_window())
    assert (authentic, opened, failed, spoofed, wrong_key, misdirected, casts) == (5, 3, 0, 1, 0, 1, 1)
    assert [body[16:20] for _, body in spans] == [DST4, BROADCAST4, DST4]


MDNS6, ALL_NODES6, SSDP6 = (bytes.fromhex(h) for h in ("ff0200000000000000000000000000fb", "ff02" + "00" * 13 + "01",
                                                         "ff02" + "00" * 13 + "0c"))


def ipv6_packet(src: bytes, dst: bytes, size: int, fill: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, size - 40, 17, 255, src, dst) + bytes([fill & 0xFF]) * (size - 40)


def test_open_run_keeps_ipv6_multicast_to_joined_groups_and_all_nodes_and_counts_it(impl):
    """An IPv6 overlay: ours, all-nodes ff02::1 and a joined group (mDNS) are kept byte for byte and
    counted as casts; a group not joined (SSDP) is misdirected; another source is spoofed."""
    sender, _ = sessions()
    out, seg = bytearray(4096), 200
    packets = [ipv6_packet(src, dst, seg - OVERHEAD, n) for n, (src, dst) in enumerate(
        [(SRC6, DST6), (SRC6, MDNS6), (SRC6, ALL_NODES6), (SRC6, SSDP6), (DST6, MDNS6)])]
    data = bytearray()
    for packet in packets:
        data += out[: sender.seal_into(out, 0, packet, 0, len(packet))]
    _, receiver = sessions()
    to_tun = []
    accept = DST6 + ALL_NODES6 + MDNS6
    result = fastpath.open_run(receiver, 2, None, SRC6, accept, data, memoryview(data), 0, len(data), seg, to_tun)
    (_, authentic, opened, _, failed, spoofed, _, misdirected, casts) = result
    assert (authentic, opened, failed, spoofed, misdirected, casts) == (5, 3, 0, 1, 1, 2)
    assert [bytes(view) for view in to_tun] == packets[:3]


def test_open_run_accepts_nothing_before_the_node_has_an_address(impl):
    data, seg = datagram_run([("data", 1), ("broadcast", 2)])
    for accept in (b"", DST4[:3], DST4 + b"\x01"):
        result, _, spans, _, _ = open_all(data, seg, None, fresh_window(), 0, accept)
        assert result[2] == 0 and result[7] == 2 and spans == []


def test_open_run_checks_the_relay_envelope_key(impl):
    data, seg = datagram_run([("data", 1), ("data", 2)])
    envelope = lambda key, message: b"\x01\x07\x00\x00" + key + message
    relayed = bytearray(envelope(RELAY_KEY, data[:seg]) + envelope(b"X" * 32, data[seg:]))
    result, *_ = open_all(relayed, seg + 36, RELAY_KEY, fresh_window())
    assert result == (len(relayed), 1, 1, seg - OVERHEAD, 0, 0, 1, 0, 0)
    bare, *_ = open_all(relayed, seg + 36, None, fresh_window())
    assert bare[0] == 0, "an envelope is not a bare message"


def test_open_run_with_a_key_ring_rotates_to_the_confirmed_session(impl):
    ring = KeyRing()
    _, receiver = sessions()
    ring.install(receiver)
    data, seg = datagram_run([("data", 1), ("data", 2)])
    to_tun = []
    result = fastpath.open_run(ring, 2, None, SRC4, ACCEPT4, data, memoryview(data), 0, len(data), seg, to_tun)
    assert result[:3] == (len(data), 2, 2) and ring.current is receiver and len(to_tun) == 2


@needs_native
@settings(max_examples=300, deadline=None)
@given(choices=st.lists(st.tuples(kinds, st.integers(0, 1000)), min_size=1, max_size=12),
       greatest=st.sampled_from([-1, 0, 3, 64, 8200, 2**63 + 5]), start=st.integers(0, 3))
def test_open_run_native_equals_pure(choices, greatest, start):
    data, seg = datagram_run(choices)
    window = fresh_window()
    if greatest >= 0:
        window = (greatest, [(greatest * 2654435761 + i) % 2**64 for i in range(len(window[1]))])
    at = min(start * seg, len(data))
    pure = run_with(False, open_all, bytes(data), seg, None, window, at)
    assert run_with(True, open_all, bytes(data), seg, None, window, at) == pure
    assert run_with(True, open_all, bytes(data), seg, None, window, at, ACCEPT4, True) == pure
    assert run_with(False, open_all, bytes(data), seg, None, window, at, ACCEPT4, True) == pure


@needs_native
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1500), seg_size=st.integers(1, 600), relayed=st.booleans(),
       header=st.sampled_from([b"", b"\x01\x03\x00\x00\x02\x00\x00\x00", b"\x01\x04\x00\x00\x02\x00\x00\x00",
                               b"\x01\x07\x00\x00" + RELAY_KEY + b"\x01\x03\x00\x00\x02\x00\x00\x00"]))
def test_open_run_on_garbage_never_raises_and_agrees(data, seg_size, relayed, header):
    data = header + data
    key = RELAY_KEY if relayed else None
    native = run_with(True, open_all, data, seg_size, key, fresh_window())
    assert native == run_with(False, open_all, data, seg_size, key, fresh_window())
    assert native[0][2] == 0, "nothing forged opens"


# --- coalesce_iov --------------------------------------------------------------------------


def coalesce_all(packets: list[bytes]):
    """Coalesce writable copies of ``packets``: each iovec as bytes, and the packets afterwards."""
    views = [memoryview(bytearray(packet)) for packet in packets]
    return [[bytes(part) for part in iov] for iov in fastpath.coalesce_iov(views)], [bytes(v) for v in views]


def stream(version: int, payload: bytes, mss: int, flags: int = 0x10, seq: int = 4000) -> list[bytes]:
    return segment(*tcp_super_packet(version, payload, mss, flags, seq))


def test_coalesce_merges_a_split_super_packet_back(impl):
    packet, hdr = tcp_super_packet(4, bytes(range(256)) * 20, 1000)
    iovs, _ = coalesce_all(segment(packet, hdr))
    assert len(iovs) == 1
    merged = VirtioNetHdr.decode(iovs[0][0])
    assert (merged.gso_type, merged.gso_size, merged.csum_start) == (GSO_TCPV4, 1000, 20)
    assert b"".join(iovs[0][1:])[52:] == packet[52:]


@needs_native
@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from([4, 6]), st.integers(1, 6000), st.integers(200, 1500),
                                st.sampled_from([0x10, 0x18, 0x11, 0x12])), min_size=1, max_size=4),
       order=st.randoms(use_true_random=False),
       mutate=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60), st.integers(1, 255)), max_size=3),
       extra=st.lists(st.binary(max_size=80), max_size=3))
def test_coalesce_native_equals_pure(parts, order, mutate, extra):
    packets = [p for version, size, mss, flags in parts for p in stream(version, bytes(size), mss, flags)]
    packets += extra + [udp_super_packet(4, b"u" * 30, 100)[0]]
    if order.random() < 0.3:
        order.shuffle(packets)
    for which, where, value in mutate:
        if packets and packets[which % len(packets)]:
            changed = bytearray(packets[which % len(packets)])
            changed[where % len(changed)] ^= value
            packets[which % len(packets)] = bytes(changed)
    assert run_with(True, coalesce_all, packets) == run_with(False, coalesce_all, packets)


# --- through the data path -----------------------------------------------------------------


@pytest.mark.parametrize("relayed", [False, True])
def test_a_tun_read_is_sealed_in_one_run_and_opened_as_its_segments(impl, relayed):
    from test_dataplane_batches import A_ADDR, A_KEY, B_ADDR, EP_A, RELAY, Runs, planes, raw

    from meshvpn.node.datapath.dataplane import SendBuffer
    from meshvpn.node.pathfinder import Path, PathKind
    from meshvpn.node.peers import Route

    prefix = wire.header(wire.MessageType.RELAY) + A_KEY
    a, b = planes(Route(Path(PathKind.RELAY), RELAY, prefix) if relayed else None)
    packet, hdr = tcp_super_packet(4, bytes(range(250)) * 30, 1200)
    packet = packet[:12] + raw(A_ADDR) + raw(B_ADDR) + packet[20:]
    read = bytearray(hdr.encode() + packet)
    sink = Runs()
    assert a.seal_super_packet(read, len(read), 1.0, SendBuffer(sink, 64, 65507))
    (endpoint, data, seg), = sink.runs
    to_tun = []
    b.open_datagrams(bytearray(data), len(data), seg, RELAY if relayed else EP_A, 2.0, to_tun)
    assert [bytes(v) for v in to_tun] == segment(packet, hdr)
    assert a.core.peers.find("peer").counters.tx_packets == b.core.peers.find("peer").counters.rx_packets == 7
    plain = bytearray(bytes(10) + packet)
    assert not a.seal_super_packet(plain, len(plain), 1.0, SendBuffer(sink)), "GSO_NONE reads take seal_packets"


# --- selection -----------------------------------------------------------------------------


def test_environment_switch_forces_pure_python():
    code = "from meshvpn.node.datapath import fastpath; print(fastpath.NATIVE)"
    env = dict(os.environ, MESHVPN_PURE_PYTHON="1")
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert forced.stdout.strip() == "False"
    env["MESHVPN_PURE_PYTHON"] = "0"
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == str(NATIVE_MODULE is not None)
