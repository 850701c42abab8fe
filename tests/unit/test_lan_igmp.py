"""IGMP reports and leaves as the kernel sends them, and the queries a querier sends."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.lan import igmp, packets
from meshvpn.lan.igmp import BadIgmp, Report
from meshvpn.node.datapath.offload import internet_checksum
from meshvpn.sim.packets import igmp_message, igmp_v2, igmp_v3, ip, udp

ME = "100.64.0.1"
MDNS, SSDP, LANWORLD = ip("224.0.0.251"), ip("239.255.255.250"), ip("224.0.2.60")


def test_v1_and_v2_reports_and_leave() -> None:
    assert igmp.parse_report(igmp_v2(ME, igmp.V1_REPORT, "224.0.0.251")) == Report(1, joined=frozenset({MDNS}))
    assert igmp.parse_report(igmp_v2(ME, igmp.V2_REPORT, "239.255.255.250")) == Report(2, joined=frozenset({SSDP}))
    assert igmp.parse_report(igmp_v2(ME, igmp.V2_LEAVE, "224.0.2.60")) == Report(2, left=frozenset({LANWORLD}))


def test_v3_records_join_and_leave() -> None:
    report = igmp.parse_report(igmp_v3(
        ME,
        (igmp.TO_EXCLUDE, "224.0.0.251", ()),                 # join, any source
        (igmp.MODE_IS_EXCLUDE, "239.255.255.250", ()),        # still a member
        (igmp.TO_INCLUDE, "224.0.2.60", ()),                  # leave
        (igmp.ALLOW_NEW, "239.1.2.3", ("100.64.0.9",)),       # source-specific join
        (igmp.BLOCK_OLD, "239.1.2.4", ("100.64.0.9",)),       # says nothing about membership
    ))
    assert report == Report(3, joined=frozenset({MDNS, SSDP, ip("239.1.2.3")}), left=frozenset({LANWORLD}))


def test_queries_are_not_reports_and_bad_messages_are_refused() -> None:
    assert igmp.parse_report(igmp.query()) is None
    bad = bytearray(igmp_v2(ME, igmp.V2_REPORT, "224.0.0.251"))
    bad[-1] ^= 1
    cases = [
        bytes(bad),                                                           # checksum
        igmp_v2(ME, igmp.V2_REPORT, "10.0.0.1"),                              # not a group
        igmp_v2(ME, igmp.V2_REPORT, "224.0.0.1"),                             # all-hosts is never reported
        udp(ME, "224.0.0.22", 1, 2, b"12345678"),                             # not IGMP
        igmp_message(ME, "224.0.0.22", struct.pack("!BBHHH", igmp.V3_REPORT, 0, 0, 0, 2) + b"\x02\x00\x00\x00"),
        igmp_v3(ME, (9, "239.1.1.1", ())),                                    # unknown record type
    ]
    for packet in cases:
        try:
            igmp.parse_report(packet)
        except BadIgmp:
            continue
        raise AssertionError(f"accepted {packet.hex()}")


def test_query_is_what_hosts_expect() -> None:
    general = igmp.query()
    header = packets.parse(general)
    assert (header.src, header.dst, header.ttl, header.proto) == (igmp.QUERIER, packets.ALL_HOSTS, 1, packets.PROTO_IGMP)
    assert general[20:24] == b"\x94\x04\x00\x00"  # router alert, as RFC 3376 requires
    body = general[24:]
    assert len(body) == 12 and internet_checksum(body) == 0
    assert (body[0], body[1], body[4:8], body[8] & 7, body[9]) == (igmp.QUERY, 100, bytes(4), 2, 125)
    specific = igmp.query(SSDP)
    assert packets.parse(specific).dst == SSDP and specific[25] == 10 and specific[28:32] == bytes([239, 255, 255, 250])
    assert internet_checksum(general[:24]) == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([igmp.V1_REPORT, igmp.V2_REPORT, igmp.V2_LEAVE, igmp.V3_REPORT, 0x11]))
def test_parse_report_raises_only_bad_igmp(body: bytes, kind: int) -> None:
    for packet in (igmp_message(ME, "224.0.0.22", bytes([kind]) + body[:3].ljust(3, b"\0") + body[3:]),
                   packets.ipv4(ip(ME), ip("224.0.0.22"), packets.PROTO_IGMP, body), body):
        try:
            report = igmp.parse_report(packet)
        except BadIgmp:
            continue
        assert report is None or all(packets.is_multicast(group) for group in report.joined | report.left)
