"""Userspace TSO/GRO: segments are valid IP packets, and coalescing gives the super-packet back.

Checksums are checked with an independent word-by-word RFC 1071 sum, not the module's helpers.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.errors import RemoteProtocolError
from meshvpn.node.datapath import offload
from meshvpn.node.datapath.offload import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    VirtioNetHdr,
)

SRC4, DST4 = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
SRC6, DST6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
OPTIONS = bytes.fromhex("0101080a0000162e00000bb8")  # NOP NOP timestamps, as Linux sends


def ref_sum(data: bytes) -> int:
    """Ones'-complement sum, one 16-bit word at a time."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def transport_ok(packet: bytes) -> bool:
    """Whether the TCP/UDP checksum of a complete packet verifies."""
    l3 = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    src, dst = (packet[12:16], packet[16:20]) if l3 == 20 else (packet[8:24], packet[24:40])
    proto = packet[9] if l3 == 20 else packet[6]
    return ref_sum(pseudo(src, dst, proto, len(packet) - l3) + packet[l3:]) == 0xFFFF


def is_partial(packet: bytes, csum_at: int) -> bool:
    """Whether the checksum field holds the folded pseudo-header sum (kernel CHECKSUM_PARTIAL)."""
    l3 = 20 if packet[0] >> 4 == 4 else 40
    src, dst = (packet[12:16], packet[16:20]) if l3 == 20 else (packet[8:24], packet[24:40])
    proto = packet[9] if l3 == 20 else packet[6]
    expected = ref_sum(pseudo(src, dst, proto, len(packet) - l3))
    return struct.unpack_from("!H", packet, l3 + csum_at)[0] == expected


def ipv4_header(total: int, ident: int, proto: int, ttl: int = 64, tos: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, 0x4000, ttl, proto, 0, SRC4, DST4)
    return head[:10] + struct.pack("!H", ~ref_sum(head) & 0xFFFF) + head[12:]


def tcp_packet(
    version: int, payload: bytes, seq: int = 1000, flags: int = TCP_ACK, ident: int = 7,
    ack: int = 55, ttl: int = 64, options: bytes = OPTIONS, partial: bool = True, window: int = 502,
) -> bytes:
    """A TCP/IP packet as the kernel hands it to a TUN with offloads: partial checksum."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (20 + len(options)) // 4 << 4, flags, window, 0, 0)
    tcp += options
    length = len(tcp) + len(payload)
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    if partial:
        csum = ref_sum(pseudo(src, dst, 6, length))
    else:
        csum = ~ref_sum(pseudo(src, dst, 6, length) + tcp + payload) & 0xFFFF
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    if version == 4:
        return ipv4_header(20 + length, ident, 6, ttl) + tcp + payload
    return struct.pack("!IHBB", 6 << 28, length, 6, ttl) + SRC6 + DST6 + tcp + payload


def udp_packet(version: int, payload: bytes, ident: int = 9) -> bytes:
    length = 8 + len(payload)
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    udp = struct.pack("!HHHH", 5353, 5354, length, ref_sum(pseudo(src, dst, 17, length))) + payload
    if version == 4:
        return ipv4_header(20 + length, ident, 17) + udp
    return struct.pack("!IHBB", 6 << 28, length, 17, 64) + SRC6 + DST6 + udp


def tso_hdr(version: int, mss: int, options: bytes = OPTIONS) -> VirtioNetHdr:
    l3 = 20 if version == 4 else 40
    kind = GSO_TCPV4 if version == 4 else GSO_TCPV6
    return VirtioNetHdr(F_NEEDS_CSUM, kind, l3 + 20 + len(options), mss, l3, 16)


payloads = st.integers(min_value=1, max_value=9000).map(lambda n: bytes((i * 7 + n) & 0xFF for i in range(n)))


# --- checksum helpers --------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=0xFFFF))
def test_checksum_helpers_agree_with_word_by_word_sum(data: bytes, initial: int) -> None:
    assert offload.ones_sum(data) == ref_sum(data)
    expected = ~ref_sum(struct.pack("!H", initial) + data) & 0xFFFF
    assert offload.internet_checksum(data, initial) == expected


def test_fold_keeps_the_ones_complement_representation() -> None:
    assert offload.fold(0) == 0
    assert offload.fold(0xFFFF) == 0xFFFF
    assert offload.fold(0x1FFFE) == 0xFFFF


@pytest.mark.parametrize("version", [4, 6])
def test_complete_checksum_turns_partial_into_valid(version: int) -> None:
    packet = bytearray(tcp_packet(version, b"hello world"))
    where = offload.partial_checksum_at(packet)
    assert where is not None and not transport_ok(bytes(packet))
    offload.complete_checksum(packet, *where)
    assert transport_ok(bytes(packet))
    assert offload.partial_checksum_at(packet) is None


def test_tun_header_marks_only_partial_packets() -> None:
    partial = VirtioNetHdr.decode(offload.tun_header_for(tcp_packet(4, b"x")))
    assert (partial.flags, partial.csum_start, partial.csum_offset) == (F_NEEDS_CSUM, 20, 16)
    assert offload.tun_header_for(tcp_packet(4, b"x", partial=False)) == offload.PLAIN_HDR
    udp = VirtioNetHdr.decode(offload.tun_header_for(udp_packet(6, b"abc")))
    assert (udp.flags, udp.csum_start, udp.csum_offset) == (F_NEEDS_CSUM, 40, 6)
    assert offload.tun_header_for(b"\x45" + bytes(30)) == offload.PLAIN_HDR


# --- virtio_net_hdr ----------------------------------------------------------------------


@settings(max_examples=300)
@given(
    st.sampled_from([0, F_NEEDS_CSUM, 2, 3]),
    st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_TCPV4 | 0x80]),
    st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=4, max_size=4),
)
def test_vnet_hdr_round_trips(flags: int, kind: int, sizes: list[int]) -> None:
    hdr = VirtioNetHdr(flags, kind, *sizes)
    assert len(hdr.encode()) == offload.VNET_HDR_LEN
    assert VirtioNetHdr.decode(hdr.encode() + b"trailing") == hdr


@settings(max_examples=300)
@given(st.binary(max_size=16))
def test_vnet_hdr_decoder_raises_only_remote_errors(data: bytes) -> None:
    try:
        VirtioNetHdr.decode(data)
    except RemoteProtocolError:
        pass


# --- segmentation ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 6]), payloads, st.integers(min_value=1, max_value=1500),
       st.sampled_from([TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_PSH | TCP_FIN, TCP_ACK | TCP_CWR]))
def test_segments_are_valid_packets_covering_the_payload(version: int, payload: bytes, mss: int, flags: int) -> None:
    packet = tcp_packet(version, payload, seq=0xFFFFF000, flags=flags, ident=0xFFFE)
    segments = offload.segment(packet, tso_hdr(version, mss))
    hl = (20 if version == 4 else 40) + 32
    assert len(segments) == -(-len(payload) // mss)
    assert b"".join(seg[hl:] for seg in segments) == payload
    for i, seg in enumerate(segments):
        assert len(seg) - hl == (mss if i < len(segments) - 1 else len(payload) - mss * i)
        seq, = struct.unpack_from("!I", seg, hl - 28)
        assert seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        last = i == len(segments) - 1
        expected_flags = flags & ~(0 if last else TCP_FIN | TCP_PSH) & ~(0 if i == 0 else TCP_CWR)
        assert seg[hl - 32 + 13] == expected_flags
        assert is_partial(seg, 16)
        completed = bytearray(seg)
        offload.complete_checksum(completed, hl - 32, 16)
        assert transport_ok(bytes(completed))
        if version == 4:
            assert struct.unpack_from("!HH", seg, 2) == (len(seg), (0xFFFE + i) & 0xFFFF)
            assert ref_sum(seg[:20]) == 0xFFFF
        else:
            assert struct.unpack_from("!H", seg, 4)[0] == len(seg) - 40


@pytest.mark.parametrize("version", [4, 6])
def test_udp_segmentation_sets_lengths_and_partial_checksums(version: int) -> None:
    payload = bytes(range(256)) * 10
    l3 = 20 if version == 4 else 40
    hdr = VirtioNetHdr(F_NEEDS_CSUM, GSO_UDP_L4, l3 + 8, 1000, l3, 6)
    segments = offload.segment(udp_packet(version, payload), hdr)
    assert [len(seg) - l3 - 8 for seg in segments] == [1000, 1000, 560]
    assert b"".join(seg[l3 + 8:] for seg in segments) == payload
    for seg in segments:
        assert struct.unpack_from("!H", seg, l3 + 4)[0] == len(seg) - l3
        assert is_partial(seg, 6)


def test_split_in_place_reuses_the_buffer() -> None:
    packet = bytearray(tcp_packet(4, bytes(5000)))
    ranges = list(offload.split_in_place(packet, 0, len(packet), tso_hdr(4, 1448)))
    assert ranges == [(0, 1500), (1448, 2948), (2896, 4396), (4344, 5052)]


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=200), st.integers(min_value=0, max_value=0xFFFF),
       st.integers(min_value=0, max_value=127), st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4]))
def test_segment_raises_only_remote_errors_on_garbage(data: bytes, gso: int, start: int, kind: int) -> None:
    for offset in (6, 16, start):
        try:
            offload.segment(data, VirtioNetHdr(F_NEEDS_CSUM, kind, 0, gso, start, offset))
        except RemoteProtocolError:
            pass


# --- coalescing --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 6]), payloads, st.integers(min_value=500, max_value=1500), st.booleans())
def test_coalesce_of_segments_is_the_super_packet(version: int, payload: bytes, mss: int, psh: bool) -> None:
    flags = TCP_ACK | (TCP_PSH if psh else 0)
    packet = tcp_packet(version, payload, flags=flags)
    merged = offload.coalesce(offload.segment(packet, tso_hdr(version, mss)))
    assert len(merged) == 1
    hdr, data = merged[0]
    assert data == packet
    l3 = 20 if version == 4 else 40
    if len(payload) > mss:
        assert hdr == VirtioNetHdr(F_NEEDS_CSUM, tso_hdr(version, mss).gso_type, l3 + 32, mss, l3, 16)
    else:
        assert (hdr.flags, hdr.gso_type, hdr.csum_start, hdr.csum_offset) == (F_NEEDS_CSUM, GSO_NONE, l3, 16)


def test_coalesce_splits_runs_where_gro_must() -> None:
    seg = 1000
    base = [tcp_packet(4, bytes(seg), seq=1000 + i * seg, ident=i) for i in range(3)]
    cases = {
        "gap in sequence": tcp_packet(4, bytes(seg), seq=1000 + 4 * seg, ident=3),
        "other ttl": tcp_packet(4, bytes(seg), seq=1000 + 3 * seg, ident=3, ttl=63),
        "other ack": tcp_packet(4, bytes(seg), seq=1000 + 3 * seg, ident=3, ack=56),
        "other window": tcp_packet(4, bytes(seg), seq=1000 + 3 * seg, ident=3, window=503),
        "fin": tcp_packet(4, bytes(seg), seq=1000 + 3 * seg, ident=3, flags=TCP_ACK | TCP_FIN),
        "full checksum": tcp_packet(4, bytes(seg), seq=1000 + 3 * seg, ident=3, partial=False),
        "other options": tcp_packet(4, bytes(seg), seq=1000 + 3 * seg, ident=3, options=bytes(12)),
        "larger": tcp_packet(4, bytes(seg + 1), seq=1000 + 3 * seg, ident=3),
    }
    for name, extra in cases.items():
        out = offload.coalesce(base + [extra])
        assert [len(data) for _, data in out] == [20 + 32 + 3 * seg, len(extra)], name


def test_coalesce_ends_a_run_after_a_short_or_psh_segment() -> None:
    seq = iter(range(0, 10**6, 1000))
    first = [tcp_packet(4, bytes(1000), seq=next(seq)) for _ in range(2)]
    short = tcp_packet(4, bytes(500), seq=next(seq))
    after_short = tcp_packet(4, bytes(1000), seq=2500)
    out = offload.coalesce(first + [short, after_short])
    assert [len(data) - 52 for _, data in out] == [2500, 1000]
    pushed = [tcp_packet(6, bytes(1000), seq=i * 1000, flags=TCP_ACK | (TCP_PSH if i == 1 else 0)) for i in range(3)]
    out = offload.coalesce(pushed)
    assert [len(data) - 72 for _, data in out] == [2000, 1000]
    assert out[0][1][40 + 13] == TCP_ACK | TCP_PSH


def test_coalesce_rejects_a_corrupt_ipv4_header_checksum() -> None:
    good = [tcp_packet(4, bytes(1000), seq=i * 1000, ident=i) for i in range(2)]
    bad = bytearray(tcp_packet(4, bytes(1000), seq=2000, ident=2))
    bad[10] ^= 1
    out = offload.coalesce(good + [bytes(bad)])
    assert [len(data) for _, data in out] == [2052, 1052]
    assert out[1][1] == bytes(bad)


def test_coalesce_passes_other_traffic_through_in_order() -> None:
    udp = udp_packet(4, b"dns?")
    tcp = [tcp_packet(4, bytes(1000), seq=i * 1000, ident=i) for i in range(2)]
    out = offload.coalesce([udp, *tcp, b"\x60junk"])
    assert [data for _, data in out][0] == udp and out[2][1] == b"\x60junk"
    assert out[0][0].csum_offset == 6 and out[2][0] == VirtioNetHdr()


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_coalesce_never_raises_and_keeps_garbage_intact(packets: list[bytes]) -> None:
    assert [data for _, data in offload.coalesce(packets)] == packets
