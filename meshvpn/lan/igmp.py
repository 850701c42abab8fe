"""IGMP as a LAN router sees it: reports and leaves from hosts (v1, v2 and v3), queries to them.

The kernel sends a report out of `meshvpn0` when an application joins a group and a leave (v2)
or a change-to-include-nothing record (v3) when the last one leaves; it repeats its reports
only when a querier asks. So the node plays querier on its TUN (`meshvpn.lan.groups`) and
builds the queries here. Source-specific joins count as joining the group: the mesh forwards
whole groups, and the receiving kernel filters sources.

`parse_report` takes a whole IPv4 packet and raises only `BadIgmp`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from meshvpn.lan.packets import ALL_HOSTS, PROTO_IGMP, BadPacket, ipv4, is_multicast
from meshvpn.checksum import internet_checksum

QUERY = 0x11
V1_REPORT = 0x12
V2_REPORT = 0x16
V2_LEAVE = 0x17
V3_REPORT = 0x22

# RFC 3376 record types.
MODE_IS_INCLUDE, MODE_IS_EXCLUDE, TO_INCLUDE, TO_EXCLUDE, ALLOW_NEW, BLOCK_OLD = range(1, 7)
MAX_RECORDS = 256

# RFC 3376 section 8 defaults (RFC 2236 has the same values for v2).
ROBUSTNESS = 2
QUERY_INTERVAL = 125.0
QUERY_RESPONSE_INTERVAL = 10.0
LAST_MEMBER_QUERY_INTERVAL = 1.0
GROUP_MEMBERSHIP_INTERVAL = ROBUSTNESS * QUERY_INTERVAL + QUERY_RESPONSE_INTERVAL
LAST_MEMBER_QUERY_TIME = ROBUSTNESS * LAST_MEMBER_QUERY_INTERVAL
STARTUP_QUERY_INTERVAL = QUERY_INTERVAL / 4
STARTUP_QUERY_COUNT = ROBUSTNESS

_ROUTER_ALERT = b"\x94\x04\x00\x00"


class BadIgmp(BadPacket):
    """An IGMP message is truncated, has a bad checksum or names a non-multicast group."""


@dataclass(frozen=True)
class Report:
    """What one report or leave says: groups the host is now in, groups it left."""

    version: int
    joined: frozenset[int] = frozenset()
    left: frozenset[int] = frozenset()


def parse_report(packet: bytes | bytearray | memoryview) -> Report | None:
    """The report or leave in an IPv4 packet; None for other IGMP (queries); raises `BadIgmp`."""
    packet = bytes(packet)
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise BadIgmp("not an IPv4 packet")
    ihl, total = (packet[0] & 0x0F) * 4, int.from_bytes(packet[2:4], "big")
    if packet[9] != PROTO_IGMP:
        raise BadIgmp(f"IP protocol {packet[9]}, not IGMP")
    if ihl < 20 or total > len(packet) or total < ihl + 8:
        raise BadIgmp(f"bad lengths: header {ihl}, total {total}, have {len(packet)}")
    message = packet[ihl:total]
    if internet_checksum(message) != 0:
        raise BadIgmp("bad IGMP checksum")
    kind = message[0]
    if kind == V3_REPORT:
        return _v3_report(message)
    if kind not in (V1_REPORT, V2_REPORT, V2_LEAVE):
        return None
    group = _group(message[4:8])
    if kind == V2_LEAVE:
        return Report(2, left=frozenset({group}))
    return Report(1 if kind == V1_REPORT else 2, joined=frozenset({group}))


def _group(raw: bytes) -> int:
    group = int.from_bytes(raw, "big")
    if not is_multicast(group) or group == ALL_HOSTS:
        raise BadIgmp(f"{group:#010x} is not a group a host reports")
    return group


def _v3_report(message: bytes) -> Report:
    return Report(3, *records(message, 4, _group, BadIgmp))


def records(message: bytes, size: int, group: Callable[[bytes], int | None],
            bad: type[BadPacket]) -> tuple[frozenset[int], frozenset[int]]:
    """(joined, left) by the group records of an IGMPv3 report, or of an MLDv2 report (RFC 3810
    5.2.12: the same six kinds, with ``size``-byte addresses: 16 for IPv6, 4 here). Excluding
    sources, or including some, is membership; including none is leaving. ``group`` reads a
    record's address (None: a group that is no news); ``bad`` is what a malformed report raises."""
    count = int.from_bytes(message[6:8], "big")
    if count > MAX_RECORDS:
        raise bad(f"{count} group records")
    layout = struct.Struct(f"!BBH{size}s")
    joined, left, offset = set(), set(), 8
    for _ in range(count):
        if offset + layout.size > len(message):
            raise bad("truncated group record")
        kind, aux_words, sources, raw = layout.unpack_from(message, offset)
        offset += layout.size + size * sources + 4 * aux_words
        if offset > len(message):
            raise bad("truncated group record")
        if not MODE_IS_INCLUDE <= kind <= BLOCK_OLD:
            raise bad(f"group record type {kind}")
        address = group(raw)
        if address is None:
            continue
        if kind in (MODE_IS_EXCLUDE, TO_EXCLUDE) or (kind in (MODE_IS_INCLUDE, TO_INCLUDE, ALLOW_NEW) and sources):
            joined.add(address)
        elif kind in (MODE_IS_INCLUDE, TO_INCLUDE):
            left.add(address)
    return frozenset(joined), frozenset(left - joined)


QUERIER = 0
"""Queries come from 0.0.0.0, as a snooping switch's do (RFC 4541 2.1.1): the node's own
overlay address would be a martian source to its own kernel, which drops the query."""


def query(group: int = 0, source: int = QUERIER) -> bytes:
    """An IGMPv3 query as an IPv4 packet: general (group 0, to 224.0.0.1, hosts answer within
    10 s) or group-specific (to the group, within 1 s)."""
    max_resp = int((QUERY_RESPONSE_INTERVAL if group == 0 else LAST_MEMBER_QUERY_INTERVAL) * 10)
    body = bytearray(struct.pack("!BBH4sBBH", QUERY, max_resp, 0, group.to_bytes(4, "big"),
                                 ROBUSTNESS, int(QUERY_INTERVAL), 0))
    body[2:4] = internet_checksum(body).to_bytes(2, "big")
    return ipv4(source, group or ALL_HOSTS, PROTO_IGMP, bytes(body), ttl=1, options=_ROUTER_ALERT)
