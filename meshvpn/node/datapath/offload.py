"""virtio-net offloads in pure Python: split the TUN's super-packets, coalesce received segments.

Why: Python pays per packet and per syscall, so the data path reads up to 64 KiB TCP
"super-packets" from the TUN (``IFF_VNET_HDR`` + ``TUNSETOFFLOAD``), cuts them into MSS-sized
IP packets itself (one AEAD per inner packet keeps loss granular), and on the way back merges
consecutive segments of one TCP flow into one super-packet for a single TUN write.

Checksums. Computing a TCP checksum in Python costs ~3-4 µs per 1400 bytes, more than the
ChaCha20-Poly1305 seal, so segments carry the kernel's *partial* form instead: the checksum
field holds the folded pseudo-header sum (``CHECKSUM_PARTIAL``). A packet is recognised as
partial purely from its bytes (:func:`partial_checksum_at`): that rule is exact, because a
receiver that writes the packet with ``NEEDS_CSUM`` - or completes it with
:func:`complete_checksum` - gets the right checksum whatever the field held, as long as the
field equals the pseudo-header sum. Packets that are not partial keep their full checksum and
are written without ``NEEDS_CSUM``, so the kernel still verifies them. Segment payloads are
authenticated by the AEAD, so nothing that a checksum would catch is lost.

Coalescing follows wireguard-go's and the kernel's GRO rules, restricted to *adjacent* packets
(never reorders): same addresses, ports, ACK number, TOS/TTL/DF, window, options and header
lengths; contiguous sequence numbers; only ACK (and PSH on the last); equal payload sizes with
a shorter one allowed last; IPv4 without options or fragments, IPv6 without extension headers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

from meshvpn.checksum import fold, internet_checksum, ones_sum
from meshvpn.errors import RemoteProtocolError

VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
_GSO_TYPES = frozenset({GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4})

PROTO_TCP = 6
PROTO_UDP = 17
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
_TCP_CSUM_OFFSET = 16
_UDP_CSUM_OFFSET = 6
MAX_IP_PACKET = 0xFFFF

_VNET = struct.Struct("=BBHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_V4_ID_TO_CSUM = struct.Struct("!HHBBH")


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """``struct virtio_net_hdr`` as the TUN prepends it (host byte order, 10 bytes)."""

    flags: int = 0
    """``F_NEEDS_CSUM``: checksum still to compute from ``csum_start``; ``F_DATA_VALID``."""
    gso_type: int = GSO_NONE
    """``GSO_NONE`` for a plain packet, else how to segment (``GSO_TCPV4`` ...), maybe ``| GSO_ECN``."""
    hdr_len: int = 0
    """Length of the IP + transport headers (a hint; the kernel may leave it short)."""
    gso_size: int = 0
    """Payload bytes per segment (the MSS for TCP)."""
    csum_start: int = 0
    """Where the transport header (and the checksummed region) starts."""
    csum_offset: int = 0
    """Offset of the checksum field from ``csum_start`` (16 for TCP, 6 for UDP)."""

    def encode(self) -> bytes:
        """The 10 wire bytes."""
        return _VNET.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Parse the first 10 bytes; unknown flags or GSO types are refused."""
        if len(data) < VNET_HDR_LEN:
            raise RemoteProtocolError(f"virtio_net_hdr needs {VNET_HDR_LEN} bytes, got {len(data)}")
        hdr = cls(*_VNET.unpack_from(data))
        if hdr.flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
            raise RemoteProtocolError(f"unknown virtio_net_hdr flags {hdr.flags:#x}")
        if hdr.gso_type & ~GSO_ECN not in _GSO_TYPES:
            raise RemoteProtocolError(f"unsupported GSO type {hdr.gso_type:#x}")
        return hdr


PLAIN_HDR = VirtioNetHdr().encode()
"""The header of a packet that needs nothing from the kernel."""


def _partial_hdr(csum_start: int, csum_offset: int) -> bytes:
    return VirtioNetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, csum_start, csum_offset).encode()


_PARTIAL_HDRS = {
    (start, offset): _partial_hdr(start, offset)
    for start in (20, 40)
    for offset in (_TCP_CSUM_OFFSET, _UDP_CSUM_OFFSET)
}


# --- checksums -----------------------------------------------------------------------------


def pseudo_header_sum(addresses: bytes | bytearray | memoryview, proto: int, length: int) -> int:
    """Folded pseudo-header sum; ``addresses`` is source then destination, as in the IP header."""
    return fold(int.from_bytes(addresses, "big") + proto + length)


def _addresses(packet: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    return packet[12:20] if packet[0] >> 4 == 4 else packet[8:40]


def transport_checksum_at(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(csum_start, csum_offset)`` of an unfragmented TCP/UDP packet whose lengths add up.

    IPv4 (any header length) or IPv6 without extension headers; anything else is None, and the
    data path forwards it untouched.
    """
    size = len(packet)
    if size < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        start = (packet[0] & 0x0F) * 4
        proto = packet[9]
        if start < 20 or (packet[6] & 0x3F) or packet[7] or _U16.unpack_from(packet, 2)[0] != size:
            return None
    elif version == 6 and size >= 40:
        start = 40
        proto = packet[6]
        if _U16.unpack_from(packet, 4)[0] + 40 != size:
            return None
    else:
        return None
    if proto == PROTO_TCP and size >= start + 20:
        return start, _TCP_CSUM_OFFSET
    if proto == PROTO_UDP and size >= start + 8:
        return start, _UDP_CSUM_OFFSET
    return None


def partial_checksum_at(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """Like :func:`transport_checksum_at`, but only if the checksum field holds the partial form."""
    where = transport_checksum_at(packet)
    if where is None:
        return None
    start, offset = where
    proto = PROTO_TCP if offset == _TCP_CSUM_OFFSET else PROTO_UDP
    expected = pseudo_header_sum(_addresses(packet), proto, len(packet) - start)
    return where if _U16.unpack_from(packet, start + offset)[0] == expected else None


def complete_checksum(packet: bytearray | memoryview, csum_start: int, csum_offset: int) -> None:
    """Turn a partial checksum into the full one, in place (what the kernel does for NEEDS_CSUM)."""
    if csum_start + csum_offset + 2 > len(packet):
        raise RemoteProtocolError("checksum field beyond the end of the packet")
    value = internet_checksum(packet[csum_start:])
    if value == 0 and csum_offset == _UDP_CSUM_OFFSET:
        value = 0xFFFF
    _U16.pack_into(packet, csum_start + csum_offset, value)


def tun_header_for(packet: bytes | bytearray | memoryview) -> bytes:
    """The virtio header for writing one packet: NEEDS_CSUM if it carries a partial checksum."""
    where = partial_checksum_at(packet)
    if where is None:
        return PLAIN_HDR
    return _PARTIAL_HDRS.get(where) or _partial_hdr(*where)


# --- segmentation (userspace TSO/USO) ------------------------------------------------------


def _gso_layout(buf: bytearray | memoryview, start: int, end: int, hdr: VirtioNetHdr) -> tuple[bool, bool, int, int]:
    """(is TCP, is IPv4, header length, payload length) of a super-packet, after checking that its
    virtio header and its own headers agree; RemoteProtocolError when they do not."""
    kind = hdr.gso_type & ~GSO_ECN
    is_tcp = kind in (GSO_TCPV4, GSO_TCPV6)
    l3 = hdr.csum_start
    size = end - start
    if kind == GSO_NONE or start < 0 or end > len(buf) or size < l3 + (20 if is_tcp else 8) or not hdr.gso_size:
        raise RemoteProtocolError("GSO packet shorter than its headers")
    version = buf[start] >> 4
    if version not in (4, 6) or (kind == GSO_TCPV4 and version != 4) or (kind == GSO_TCPV6 and version != 6):
        raise RemoteProtocolError("GSO type does not match the IP header")
    is_v4 = version == 4
    proto = PROTO_TCP if is_tcp else PROTO_UDP
    if is_v4 and (l3 < 20 or (buf[start] & 0x0F) * 4 != l3 or buf[start + 9] != proto) or not is_v4 and l3 < 40:
        raise RemoteProtocolError("GSO packet's IP header does not match its checksum start")
    if hdr.csum_offset != (_TCP_CSUM_OFFSET if is_tcp else _UDP_CSUM_OFFSET):
        raise RemoteProtocolError("GSO checksum offset does not match the transport")
    hl = l3 + ((buf[start + l3 + 12] >> 4) * 4 if is_tcp else 8)
    payload = size - hl
    if (is_tcp and hl < l3 + 20) or payload <= 0:
        raise RemoteProtocolError("GSO packet has a bad transport header or no payload")
    return is_tcp, is_v4, hl, payload


def split_in_place(
    buf: bytearray | memoryview, start: int, end: int, hdr: VirtioNetHdr
) -> Iterator[tuple[int, int]]:
    """Yield ``(first, last)`` byte ranges of ``buf``, one valid IP packet per segment.

    ``buf[start:end]`` is the super-packet that followed ``hdr``. Segment *i*'s headers are
    written just in front of its payload, over the tail of segment *i-1*'s payload, so nothing
    is copied but headers; the price is that a range is valid only until the next one is
    requested. IPv4 IDs increase by one per segment and header checksums are computed; TCP
    sequence numbers advance; FIN/PSH stay on the last segment only and CWR on the first;
    TCP/UDP checksums are left partial (see the module docstring).
    """
    is_tcp, is_v4, hl, payload = _gso_layout(buf, start, end, hdr)
    l3 = hdr.csum_start
    proto = PROTO_TCP if is_tcp else PROTO_UDP
    gso = hdr.gso_size
    count = -(-payload // gso)
    head = bytearray(buf[start : start + hl])
    addresses = bytes(_addresses(head))
    flags = head[l3 + 13] if is_tcp else 0
    seq0 = _U32.unpack_from(head, l3 + 4)[0] if is_tcp else 0
    id0, frag, ttl = (_U16.unpack_from(head, 4)[0], _U16.unpack_from(head, 6)[0], head[8]) if is_v4 else (0, 0, 0)

    def template(seg_payload: int, seg_flags: int) -> tuple[bytes, int]:
        """Header bytes for a segment of this size and flags, with the IPv4 sum sans id/csum."""
        seg_len = hl + seg_payload
        if is_v4:
            _U16.pack_into(head, 2, seg_len)
            _V4_ID_TO_CSUM.pack_into(head, 4, 0, frag, ttl, proto, 0)
        else:
            _U16.pack_into(head, 4, seg_len - 40)
        if is_tcp:
            head[l3 + 13] = seg_flags
        else:
            _U16.pack_into(head, l3 + 4, seg_len - l3)
        _U16.pack_into(head, l3 + hdr.csum_offset, pseudo_header_sum(addresses, proto, seg_len - l3))
        return bytes(head), (ones_sum(head[:l3]) if is_v4 else 0)

    last_payload = payload - (count - 1) * gso
    first = template(gso if count > 1 else last_payload, flags & ~(TCP_FIN | TCP_PSH) if count > 1 else flags)
    middle = template(gso, flags & ~(TCP_FIN | TCP_PSH | TCP_CWR))
    last = template(last_payload, flags & ~TCP_CWR) if count > 1 else first
    pack_v4 = _V4_ID_TO_CSUM.pack_into
    pack_seq = _U32.pack_into
    for i in range(count):
        tmpl, v4_sum = first if i == 0 else last if i == count - 1 else middle
        at = start + i * gso
        buf[at : at + hl] = tmpl
        if is_v4:
            ident = (id0 + i) & 0xFFFF
            pack_v4(buf, at + 4, ident, frag, ttl, proto, ~fold(v4_sum + ident) & 0xFFFF)
        if is_tcp:
            pack_seq(buf, at + l3 + 4, (seq0 + i * gso) & 0xFFFFFFFF)
        yield at, at + hl + (gso if i < count - 1 else last_payload)


def segment(super_packet: bytes | bytearray | memoryview, hdr: VirtioNetHdr) -> list[bytes]:
    """The IP packets a GSO super-packet stands for, as independent copies."""
    work = bytearray(super_packet)
    return [bytes(work[first:last]) for first, last in split_in_place(work, 0, len(work), hdr)]


# --- coalescing (userspace GRO) ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Shape:
    """How to compare whole TCP/IP headers of one (IP version, header length) as one integer."""

    l3: int
    hl: int
    same_size: int
    """Mask clearing what changes between equal-sized segments: IPv4 id and checksum, seq, PSH."""
    any_size: int
    """Also clears the length fields and the TCP checksum, for a shorter last segment."""
    seq_shift: int
    psh_bit: int
    ip_shift: int
    """Shift that leaves the IPv4 header (to verify its checksum); 0 for IPv6, which has none."""


def _field_mask(hl: int, fields: Sequence[tuple[int, int]]) -> int:
    mask = (1 << (hl * 8)) - 1
    for offset, width in fields:
        mask &= ~(((1 << (width * 8)) - 1) << ((hl - offset - width) * 8))
    return mask


def _shape(version: int, hl: int) -> _Shape:
    l3 = 20 if version == 4 else 40
    varying = [(l3 + 4, 4)] + ([(4, 2), (10, 2)] if version == 4 else [])
    psh_bit = TCP_PSH << ((hl - l3 - 14) * 8)
    same = _field_mask(hl, varying) & ~psh_bit
    length = (2, 2) if version == 4 else (4, 2)
    any_size = same & _field_mask(hl, [length, (l3 + _TCP_CSUM_OFFSET, 2)])
    ip_shift = (hl - 20) * 8 if version == 4 else 0
    return _Shape(l3, hl, same, any_size, (hl - l3 - 8) * 8, psh_bit, ip_shift)


_SHAPES = {
    (version, l3 + tcp_len): _shape(version, l3 + tcp_len)
    for version, l3 in ((4, 20), (6, 40))
    for tcp_len in range(20, 61, 4)
}


def _tcp_candidate(packet: memoryview) -> tuple[_Shape, int, int] | None:
    """``(shape, seq, flags)`` if ``packet`` may start or end a coalesced run, else None."""
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[0] != 0x45 or packet[9] != PROTO_TCP or _U16.unpack_from(packet, 2)[0] != size:
            return None
        if (packet[6] & 0x3F) or packet[7] or ones_sum(packet[:20]) != 0xFFFF:
            return None
        l3 = 20
    elif version == 6:
        if size < 60 or packet[6] != PROTO_TCP or _U16.unpack_from(packet, 4)[0] + 40 != size:
            return None
        l3 = 40
    else:
        return None
    hl = l3 + (packet[l3 + 12] >> 4) * 4
    flags = packet[l3 + 13]
    if hl < l3 + 20 or size <= hl or (flags != TCP_ACK and flags != TCP_ACK | TCP_PSH):
        return None
    if partial_checksum_at(packet) is None:
        return None
    return _SHAPES[version, hl], _U32.unpack_from(packet, l3 + 4)[0], flags


def _close_run(run: list, shape: _Shape, gso: int, psh: bool) -> list:
    """Rewrite the head packet's headers for the merged length; return the run as an iovec."""
    head = run[1]
    l3 = shape.l3
    if len(run) == 2:
        run[0] = _PARTIAL_HDRS[l3, _TCP_CSUM_OFFSET]
        return run
    total = len(head) + sum(map(len, run[2:]))
    if l3 == 20:
        _U16.pack_into(head, 2, total)
        _U16.pack_into(head, 10, 0)
        _U16.pack_into(head, 10, internet_checksum(head[:20]))
        gso_type = GSO_TCPV4
    else:
        _U16.pack_into(head, 4, total - 40)
        gso_type = GSO_TCPV6
    if psh:
        head[l3 + 13] |= TCP_PSH
    _U16.pack_into(head, l3 + _TCP_CSUM_OFFSET, pseudo_header_sum(_addresses(head), PROTO_TCP, total - l3))
    run[0] = VirtioNetHdr(F_NEEDS_CSUM, gso_type, shape.hl, gso, l3, _TCP_CSUM_OFFSET).encode()
    return run


def coalesce_iov(packets: Sequence[memoryview]) -> list[list]:
    """Group ``packets`` (writable views: a merged run's head is rewritten in place) into TUN writes,
    each an iovec ``[virtio_hdr, packet, payload...]`` for ``os.writev``; merged payloads are
    referenced, not copied. Order is preserved: only adjacent segments of one flow merge."""
    out: list[list] = []
    run: list | None = None
    shape = _SHAPES[4, 40]
    hl = gso = key = next_seq = room = same_size = seq_shift = ip_shift = psh_bit = 0
    from_bytes = int.from_bytes
    for packet in packets:
        if run is not None:
            size = len(packet)
            if size == hl + gso:
                value = from_bytes(packet[:hl], "big")
                if (
                    value & same_size == key
                    and (value >> seq_shift) & 0xFFFFFFFF == next_seq
                    and (not ip_shift or (value >> ip_shift) % 0xFFFF == 0)
                    and room >= gso
                ):
                    run.append(packet[hl:])
                    room -= gso
                    next_seq = (next_seq + gso) & 0xFFFFFFFF
                    if value & psh_bit:
                        out.append(_close_run(run, shape, gso, True))
                        run = None
                    continue
            elif size < hl + gso and size - hl <= room:
                found = _tcp_candidate(packet)
                if (
                    found is not None
                    and found[0] is shape
                    and found[1] == next_seq
                    and from_bytes(packet[:hl], "big") & shape.any_size == key & shape.any_size
                ):
                    run.append(packet[hl:])
                    out.append(_close_run(run, shape, gso, found[2] & TCP_PSH != 0))
                    run = None
                    continue
            out.append(_close_run(run, shape, gso, False))
            run = None
        found = _tcp_candidate(packet)
        if found is None:
            out.append([tun_header_for(packet), packet])
            continue
        shape, seq, flags = found
        hl = shape.hl
        gso = len(packet) - hl
        if flags & TCP_PSH:
            out.append([_PARTIAL_HDRS[shape.l3, _TCP_CSUM_OFFSET], packet])
            continue
        run = [None, packet]
        same_size, seq_shift, ip_shift, psh_bit = shape.same_size, shape.seq_shift, shape.ip_shift, shape.psh_bit
        key = from_bytes(packet[:hl], "big") & same_size
        next_seq = (seq + gso) & 0xFFFFFFFF
        room = MAX_IP_PACKET - len(packet)
    if run is not None:
        out.append(_close_run(run, shape, gso, False))
    return out


def coalesce(packets: Sequence[bytes | bytearray | memoryview]) -> list[tuple[VirtioNetHdr, bytes]]:
    """Merge adjacent same-flow TCP segments; each result is what one TUN write would carry."""
    views = [memoryview(bytearray(packet)) for packet in packets]
    return [(VirtioNetHdr.decode(iov[0]), b"".join(iov[1:])) for iov in coalesce_iov(views)]
