"""NAT-PMP (RFC 6886) and PCP (RFC 6887) messages: exact bytes, and garbage raises only PortMapError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from meshvpn.errors import RemoteProtocolError
from meshvpn.node.portmap import natpmp, pcp
from meshvpn.node.portmap.natpmp import PortMapError

NONCE = bytes(range(12))
MAPPED_V4 = bytes(10) + b"\xff\xff"


def test_natpmp_requests_are_the_rfc_layouts() -> None:
    assert natpmp.address_request() == b"\x00\x00"
    assert natpmp.map_request(41641, 41641, 7200) == struct.pack("!BBHHHI", 0, 1, 0, 41641, 41641, 7200)
    assert natpmp.map_request(41641, 0, 0) == b"\x00\x01\x00\x00\xa2\xa9\x00\x00\x00\x00\x00\x00"


def test_natpmp_responses_decode() -> None:
    address = natpmp.decode(b"\x00\x80\x00\x00" + struct.pack("!I", 99) + bytes([203, 0, 113, 100]))
    assert address == natpmp.AddressResponse(0, 99, "203.0.113.100")
    mapped = natpmp.decode(struct.pack("!BBHIHHI", 0, 129, 0, 100, 41641, 50000, 3600))
    assert mapped == natpmp.MapResponse(0, 100, 41641, 50000, 3600)
    refused = natpmp.decode(struct.pack("!BBHIHHI", 0, 129, 2, 100, 41641, 0, 0))
    assert refused.result == 2 and natpmp.result_text(refused.result) == "not authorized or refused"


@pytest.mark.parametrize("data, why", [
    (b"\x00", "too short"),
    (b"\x01\x80\x00\x00", "version 1"),
    (b"\x00\x80\x00\x00\x00\x00", "address response of 6 bytes"),
    (b"\x00\x81\x00\x00" + bytes(8), "mapping response of 12 bytes"),
    (b"\x00\x83\x00\x05" + bytes(4), "unsupported opcode"),
    (b"\x00\x01" + bytes(10), "unexpected opcode 1"),
])
def test_natpmp_garbage_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(PortMapError, match=why):
        natpmp.decode(data)


def test_pcp_requests_are_the_rfc_layouts() -> None:
    announce = pcp.announce_request("10.1.0.11")
    assert announce == b"\x02\x00\x00\x00" + bytes(4) + MAPPED_V4 + bytes([10, 1, 0, 11])
    request = pcp.map_request("10.1.0.11", NONCE, 41641, 41641, 7200)
    assert len(request) == 60
    assert request[:8] == b"\x02\x01\x00\x00" + struct.pack("!I", 7200)
    assert request[24:36] == NONCE and request[36] == 17
    assert struct.unpack_from("!HH", request, 40) == (41641, 41641)
    assert request[44:] == MAPPED_V4 + bytes(4)


def pcp_map_response(result: int = 0, lifetime: int = 7200, port: int = 41641, external=(203, 0, 113, 100),
                     nonce: bytes = NONCE, options: bytes = b"", protocol: int = 17) -> bytes:
    header = struct.pack("!BBBBII", 2, 0x81, 0, result, lifetime, 42) + bytes(12)
    return header + struct.pack("!12sB3xHH16s", nonce, protocol, 41641, port, MAPPED_V4 + bytes(external)) + options


def test_pcp_responses_decode() -> None:
    assert pcp.decode(pcp_map_response()) == pcp.Response(1, 0, 7200, 42, NONCE, 17, 41641, 41641, "203.0.113.100")
    announce = pcp.decode(struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, 42) + bytes(12))
    assert (announce.opcode, announce.result) == (0, 0)
    refused = pcp.decode(struct.pack("!BBBBII", 2, 0x81, 0, 8, 30, 42) + bytes(12))
    assert refused.result == 8 and pcp.result_text(refused.result) == "no resources"
    with_option = pcp_map_response(options=b"\x01\x00\x00\x10" + bytes(16))
    assert pcp.decode(with_option).external_port == 41641


def test_tcp_mappings_use_natpmp_opcode_2_and_pcp_protocol_6() -> None:
    assert natpmp.map_request(41641, 41641, 7200, natpmp.TCP) == struct.pack("!BBHHHI", 0, 2, 0, 41641, 41641, 7200)
    tcp = natpmp.decode(struct.pack("!BBHIHHI", 0, 130, 0, 100, 41641, 50000, 3600))
    assert tcp == natpmp.MapResponse(0, 100, 41641, 50000, 3600, natpmp.TCP)
    request = pcp.map_request("10.1.0.11", NONCE, 41641, 41641, 7200, protocol=natpmp.TCP)
    assert request[36] == 6 and request[:36] == pcp.map_request("10.1.0.11", NONCE, 41641, 41641, 7200)[:36]
    assert pcp.decode(pcp_map_response(protocol=6)).protocol == natpmp.TCP
    with pytest.raises(PortMapError, match="protocol 1,"):
        pcp.decode(pcp_map_response(protocol=1))
    with pytest.raises(ValueError):
        natpmp.map_request(41641, 0, 0, 1)


@pytest.mark.parametrize("data, why", [
    (bytes(20), "20 bytes"),
    (bytes(26), "26 bytes"),
    (b"\x01" + bytes(23), "version 1"),
    (b"\x02\x01" + bytes(22), "a request"),
    (b"\x02\x85" + bytes(22), "opcode 5"),
    (struct.pack("!BBBBII", 2, 0x81, 0, 0, 0, 0) + bytes(28), "MAP response of 40 bytes"),
    (pcp_map_response(options=b"\x01\x00"), "multiple of 4"),
    (pcp_map_response(options=b"\x01\x00\x00\x20" + bytes(4)), "option longer"),
])
def test_pcp_garbage_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(PortMapError, match=why):
        pcp.decode(data)


def test_requests_out_of_range_are_the_callers_fault() -> None:
    with pytest.raises(ValueError):
        natpmp.map_request(0, 0, 10)
    with pytest.raises(ValueError):
        pcp.map_request("10.0.0.1", b"short", 41641, 0, 10)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=1200), st.binary(max_size=64).map(lambda b: b"\x02" + b),
                 st.binary(max_size=20).map(lambda b: b"\x00\x81" + b),
                 st.binary(max_size=20).map(lambda b: b"\x00\x82" + b),
                 st.binary(max_size=80).map(lambda b: pcp_map_response()[:24] + b)))
def test_any_datagram_decodes_or_raises_only_the_remote_error(data: bytes) -> None:
    for decode in (natpmp.decode, pcp.decode):
        try:
            decode(data)
        except RemoteProtocolError as exc:
            assert isinstance(exc, PortMapError)
