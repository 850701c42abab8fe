"""STUN codec, Binding responder and client transaction (meshvpn.stun), without sockets.

The RFC 5769 vectors and captured packets live in tests/data/stun/*.bin; their
MESSAGE-INTEGRITY and FINGERPRINT checks prove every byte of them.
"""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.stun import (
    MAGIC_COOKIE,
    SOFTWARE,
    Attr,
    BindingTransaction,
    ChangeRequest,
    ErrorCode,
    NatBehaviour,
    StunClass,
    StunError,
    StunMessage,
    StunMethod,
    StunResult,
    binding_response,
    classify_filtering,
    classify_mapping,
    decode,
    encode,
    is_stun,
    long_term_key,
)
from meshvpn.stun_codec import message_type, split_message_type

DATA = Path(__file__).resolve().parents[1] / "data" / "stun"
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
CLIENT = ("198.51.100.7", 40000)
ORIGIN = ("192.0.2.1", 3478)
OTHER = ("192.0.2.2", 3479)


def packet(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def binding_request(txid: bytes = bytes(12), **attributes) -> bytes:
    """A request as our client sends it: padded (RFC 5780 PADDING) so that a full answer fits."""
    attrs = {Attr[name.upper()]: value for name, value in attributes.items()}
    attrs.setdefault(Attr.PADDING, bytes(64))
    return encode(StunMessage(StunMethod.BINDING, StunClass.REQUEST, txid, attrs), fingerprint=True)


# --- RFC 5769 vectors and captured packets -----------------------------------------------


def test_rfc5769_sample_request_verifies_and_reencodes_byte_exact():
    buf = packet("rfc5769_request")
    msg = decode(buf, key=RFC5769_PASSWORD)
    assert (msg.method, msg.cls, msg.transaction_id) == (StunMethod.BINDING, StunClass.REQUEST, RFC5769_TXID)
    assert msg.attributes[Attr.SOFTWARE] == "STUN test client"
    assert msg.attributes[Attr.USERNAME] == "evtj:h6vY"
    assert msg.attributes[Attr.FINGERPRINT] == 0xE57A3BCF
    # PRIORITY (ICE) is comprehension-required and unknown here; ICE-CONTROLLED is optional.
    assert msg.unknown_required == [0x0024]
    assert msg.attributes[0x8029] == bytes.fromhex("932ff9b151263b36")
    assert encode(msg, key=RFC5769_PASSWORD, fingerprint=True, pad_byte=0x20) == buf


@pytest.mark.parametrize(
    "name, mapped",
    [
        ("rfc5769_ipv4_response", ("192.0.2.1", 32853)),
        ("rfc5769_ipv6_response", ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_sample_responses_verify_and_reencode_byte_exact(name, mapped):
    buf = packet(name)
    msg = decode(buf, key=RFC5769_PASSWORD)
    assert msg.cls == StunClass.SUCCESS
    assert msg.attributes[Attr.XOR_MAPPED_ADDRESS] == mapped
    assert msg.attributes[Attr.SOFTWARE] == "test vector"
    rebuilt = StunMessage(
        StunMethod.BINDING,
        StunClass.SUCCESS,
        RFC5769_TXID,
        {Attr.SOFTWARE: "test vector", Attr.XOR_MAPPED_ADDRESS: mapped},
    )
    assert encode(rebuilt, key=RFC5769_PASSWORD, fingerprint=True, pad_byte=0x20) == buf


def test_rfc5769_long_term_request_verifies_under_md5_key():
    buf = packet("rfc5769_long_term_request")
    msg = decode(buf)
    username = msg.attributes[Attr.USERNAME]
    assert username == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert msg.attributes[Attr.REALM] == "example.org"
    assert msg.attributes[Attr.NONCE] == "f//499k954d6OL34oL9FSTvy64sA"
    key = long_term_key(username, "example.org", "TheMatrIX")
    assert decode(buf, key=key) == msg
    assert encode(msg, key=key) == buf
    with pytest.raises(StunError, match="MESSAGE-INTEGRITY does not match"):
        decode(buf, key=long_term_key(username, "example.org", "TheMatrix"))


def test_rfc5769_wrong_password_and_missing_integrity_are_named():
    with pytest.raises(StunError, match="MESSAGE-INTEGRITY does not match"):
        decode(packet("rfc5769_ipv4_response"), key=b"wrong")
    with pytest.raises(StunError, match="MESSAGE-INTEGRITY is missing"):
        decode(packet("coturn_binding_response"), key=RFC5769_PASSWORD)


def test_coturn_response_decodes_with_rfc5780_addresses():
    msg = decode(packet("coturn_binding_response"))
    assert msg.transaction_id == bytes(range(1, 13))
    assert msg.attributes[Attr.XOR_MAPPED_ADDRESS] == ("127.0.0.1", 40500)
    assert msg.attributes[Attr.MAPPED_ADDRESS] == ("127.0.0.1", 40500)
    assert msg.attributes[Attr.RESPONSE_ORIGIN] == ("127.0.0.1", 34800)
    assert msg.attributes[Attr.OTHER_ADDRESS] == ("127.0.0.2", 34801)
    assert msg.attributes[Attr.SOFTWARE].startswith("Coturn")


def test_coturn_420_lists_the_unknown_attribute():
    msg = decode(packet("coturn_420_response"))
    assert msg.cls == StunClass.ERROR
    assert msg.attributes[Attr.ERROR_CODE].code == 420
    assert msg.attributes[Attr.UNKNOWN_ATTRIBUTES] == (0x7777,)


def test_classic_rfc3489_request_decodes_but_is_not_shared_socket_stun():
    buf = packet("classic_binding_request")
    msg = decode(buf)
    assert msg.classic and msg.cls == StunClass.REQUEST
    assert msg.attributes[Attr.CHANGE_REQUEST] == ChangeRequest()
    assert not is_stun(buf)


# --- codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, cls, value",
    [
        (0x001, StunClass.REQUEST, 0x0001),
        (0x001, StunClass.INDICATION, 0x0011),
        (0x001, StunClass.SUCCESS, 0x0101),
        (0x001, StunClass.ERROR, 0x0111),
        (0xFFF, StunClass.ERROR, 0x3FFF),
        (0x009, StunClass.SUCCESS, 0x0109),
    ],
)
def test_message_type_interleaves_method_and_class(method, cls, value):
    assert message_type(method, cls) == value
    assert split_message_type(value) == (method, cls)


def test_every_known_attribute_round_trips():
    attributes = {
        Attr.MAPPED_ADDRESS: ("203.0.113.9", 1),
        Attr.CHANGE_REQUEST: ChangeRequest(ip=True, port=True),
        Attr.SOURCE_ADDRESS: ("192.0.2.1", 3478),
        Attr.CHANGED_ADDRESS: ("192.0.2.2", 3479),
        Attr.USERNAME: "user:name",
        Attr.ERROR_CODE: ErrorCode(438, "Stale Nonce"),
        Attr.UNKNOWN_ATTRIBUTES: (0x0024, 0x7777, 0x0001),
        Attr.REALM: "example.org",
        Attr.NONCE: "abc",
        Attr.XOR_MAPPED_ADDRESS: ("2001:db8::1", 65535),
        Attr.PADDING: b"\x00" * 7,
        Attr.RESPONSE_PORT: 9999,
        Attr.SOFTWARE: "m\u00e9sh",
        Attr.RESPONSE_ORIGIN: ("::1", 3478),
        Attr.OTHER_ADDRESS: ("198.51.100.1", 3479),
        0x8123: b"opaque",
    }
    msg = StunMessage(StunMethod.BINDING, StunClass.ERROR, bytes(range(12)), attributes)
    buf = encode(msg, key=b"k", fingerprint=True)
    back = decode(buf, key=b"k")
    *decoded, integrity, fingerprint = back.attributes.items()
    assert dict(decoded) == attributes
    assert [integrity[0], fingerprint[0]] == [Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    assert is_stun(buf)


def test_ipv4_mapped_ipv6_source_is_written_as_ipv4():
    msg = StunMessage(1, StunClass.SUCCESS, bytes(12), {Attr.XOR_MAPPED_ADDRESS: ("::ffff:192.0.2.7", 5)})
    assert decode(encode(msg)).attributes[Attr.XOR_MAPPED_ADDRESS] == ("192.0.2.7", 5)


def test_attributes_after_integrity_are_ignored():
    head = encode(StunMessage(1, StunClass.REQUEST, bytes(12), {Attr.SOFTWARE: "a"}), key=b"k")
    buf = bytearray(head + bytes.fromhex("80220004") + b"bbbb" + bytes.fromhex("00010002") + bytes(4))
    buf[2:4] = (len(buf) - 20).to_bytes(2, "big")
    msg = decode(bytes(buf), key=b"k")
    assert msg.attributes[Attr.SOFTWARE] == "a"
    assert Attr.MAPPED_ADDRESS not in msg.attributes


def test_a_repeated_attribute_keeps_the_first():
    msg = StunMessage(1, StunClass.REQUEST, bytes(12), {Attr.SOFTWARE: "aaaa"})
    buf = bytearray(encode(msg) + bytes.fromhex("80220004") + b"bbbb")
    buf[2:4] = (len(buf) - 20).to_bytes(2, "big")
    assert decode(bytes(buf)).attributes[Attr.SOFTWARE] == "aaaa"


def request_with_body(body_hex: str, length: int | None = None) -> bytes:
    """A Binding request header (length field from the body unless given) and a raw body."""
    body = bytes.fromhex(body_hex)
    length = len(body) if length is None else length
    return bytes.fromhex("0001") + length.to_bytes(2, "big") + MAGIC_COOKIE.to_bytes(4, "big") + bytes(12) + body


@pytest.mark.parametrize(
    "buf, message",
    [
        (b"\x00\x01\x00", "shorter than the 20-byte header"),
        (b"\xc0" + request_with_body("")[1:], "does not start with two zero bits"),
        (request_with_body("0000", length=2), "not a multiple of 4"),
        (request_with_body("", length=4), "says 4 body bytes, datagram has 0"),
        (request_with_body("0020 0008"), "only 0 remain"),
        (request_with_body("0020 0004 0003 0001"), "bad XOR-MAPPED-ADDRESS"),
        (request_with_body("0009 0004 0000 0263"), "bad ERROR-CODE"),
        (request_with_body("8022 0002 fffe 0000"), "bad SOFTWARE"),
        (request_with_body("000a 0001 01 000000"), "bad UNKNOWN-ATTRIBUTES"),
        (request_with_body("0003 0002 0000 0000"), "bad CHANGE-REQUEST"),
        (request_with_body("0008 0004 0000 0000"), "bad MESSAGE-INTEGRITY"),
        (request_with_body("8028 0004 00000000"), "FINGERPRINT 0x00000000 does not match"),
        (request_with_body("8028 0004 00000000 8022 0000"), "not the last attribute"),
    ],
)
def test_decode_errors_say_what_is_wrong(buf, message):
    with pytest.raises(StunError, match=message):
        decode(buf)


def test_a_flipped_byte_breaks_the_fingerprint():
    buf = bytearray(packet("rfc5769_ipv4_response"))
    buf[30] ^= 0x01
    with pytest.raises(StunError, match="FINGERPRINT"):
        decode(bytes(buf))


def test_encode_refuses_a_short_transaction_id():
    with pytest.raises(LocalProtocolError):
        encode(StunMessage(1, StunClass.REQUEST, bytes(11)))


def test_is_stun_tells_stun_from_meshvpn_datagrams():
    assert is_stun(binding_request())
    # meshvpn header: version 1, type, two zero reserved bytes; then a receiver index that
    # happens to equal the magic cookie. The length field (0) does not match the datagram.
    meshvpn_data = bytes([1, 3, 0, 0]) + MAGIC_COOKIE.to_bytes(4, "big") + bytes(40)
    assert not is_stun(meshvpn_data)
    assert not is_stun(b"")
    assert not is_stun(binding_request()[:-4])


# --- hypothesis properties -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_stun_error(buf):
    try:
        decode(buf)
    except StunError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_decode_arbitrary_body_behind_a_valid_header_raises_only_stun_error(body):
    body = body[: len(body) - len(body) % 4]
    header = bytes.fromhex("0101") + len(body).to_bytes(2, "big") + MAGIC_COOKIE.to_bytes(4, "big")
    buf = header + bytes(12) + body
    try:
        decode(buf, key=b"k")
    except StunError:
        pass


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
).flatmap(lambda host: st.integers(0, 65535).map(lambda port: (host, port)))


@settings(max_examples=200, deadline=None)
@given(
    txid=st.binary(min_size=12, max_size=12),
    mapped=addresses,
    software=st.text(max_size=40),
    padding=st.binary(max_size=33),
    key=st.none() | st.binary(min_size=1, max_size=32),
    fingerprint=st.booleans(),
)
def test_encode_decode_round_trip(txid, mapped, software, padding, key, fingerprint):
    attributes = {Attr.XOR_MAPPED_ADDRESS: mapped, Attr.SOFTWARE: software, Attr.PADDING: padding}
    msg = StunMessage(StunMethod.BINDING, StunClass.SUCCESS, txid, attributes)
    buf = encode(msg, key=key, fingerprint=fingerprint)
    assert is_stun(buf)
    back = decode(buf, key=key)
    assert back.transaction_id == txid
    assert {t: back.attributes[t] for t in attributes} == attributes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), addresses)
def test_responder_never_raises_on_arbitrary_bytes(buf, source):
    reply = binding_response(buf, source, ORIGIN, OTHER)
    if reply is not None:
        assert decode(reply.data).cls in (StunClass.SUCCESS, StunClass.ERROR)


# --- server responder ----------------------------------------------------------------------


def test_binding_response_reports_the_source_every_way():
    reply = binding_response(binding_request(b"t" * 12), CLIENT, ORIGIN, OTHER)
    assert (reply.send_to, reply.send_from) == (CLIENT, None)
    msg = decode(reply.data)
    assert (msg.cls, msg.transaction_id) == (StunClass.SUCCESS, b"t" * 12)
    assert msg.attributes[Attr.XOR_MAPPED_ADDRESS] == CLIENT
    assert msg.attributes[Attr.MAPPED_ADDRESS] == CLIENT
    assert msg.attributes[Attr.RESPONSE_ORIGIN] == ORIGIN
    assert msg.attributes[Attr.OTHER_ADDRESS] == OTHER
    assert msg.attributes[Attr.SOFTWARE] == SOFTWARE
    assert Attr.FINGERPRINT in msg.attributes


def test_binding_response_leaves_out_what_it_does_not_know():
    msg = decode(binding_response(binding_request(), CLIENT, ("0.0.0.0", 3478)).data)
    assert Attr.RESPONSE_ORIGIN not in msg.attributes
    assert Attr.OTHER_ADDRESS not in msg.attributes


@pytest.mark.parametrize(
    "change, other",
    [
        (ChangeRequest(ip=True, port=True), OTHER),
        (ChangeRequest(ip=True), ("192.0.2.2", ORIGIN[1])),
        (ChangeRequest(port=True), (ORIGIN[0], 3479)),
    ],
)
def test_change_request_to_the_alternate_is_answered_from_it(change, other):
    reply = binding_response(binding_request(change_request=change), CLIENT, ORIGIN, other)
    assert reply.send_from == other
    msg = decode(reply.data)
    assert msg.attributes[Attr.RESPONSE_ORIGIN] == other
    assert msg.attributes[Attr.OTHER_ADDRESS] == other


@pytest.mark.parametrize(
    "change, other",
    [
        (ChangeRequest(port=True), None),
        (ChangeRequest(port=True), OTHER),
        (ChangeRequest(ip=True), OTHER),
        (ChangeRequest(ip=True), (ORIGIN[0], 3479)),
        (ChangeRequest(ip=True, port=True), ("192.0.2.2", ORIGIN[1])),
    ],
)
def test_change_request_the_server_cannot_honour_gets_420(change, other):
    reply = binding_response(binding_request(change_request=change), CLIENT, ORIGIN, other)
    msg = decode(reply.data)
    assert (reply.send_to, reply.send_from) == (CLIENT, None)
    assert msg.attributes[Attr.ERROR_CODE].code == 420
    assert msg.attributes[Attr.UNKNOWN_ATTRIBUTES] == (Attr.CHANGE_REQUEST,)


def test_empty_change_request_is_an_ordinary_request():
    reply = binding_response(binding_request(change_request=ChangeRequest()), CLIENT, ORIGIN)
    assert reply.send_from is None and decode(reply.data).cls == StunClass.SUCCESS


def test_response_port_redirects_to_the_same_host():
    reply = binding_response(binding_request(response_port=5555), CLIENT, ORIGIN)
    assert reply.send_to == (CLIENT[0], 5555)
    assert binding_response(binding_request(response_port=0), CLIENT, ORIGIN) is None, "malformed: no error reply"


def test_unknown_comprehension_required_attribute_gets_420_listing_it():
    msg = decode(binding_response(packet("rfc5769_request"), CLIENT, ORIGIN).data)
    assert msg.transaction_id == RFC5769_TXID
    assert msg.attributes[Attr.ERROR_CODE] == ErrorCode(420, "Unknown Attribute")
    assert msg.attributes[Attr.UNKNOWN_ATTRIBUTES] == (0x0024,)


def test_broken_requests_and_other_methods_get_no_error_reply():
    """A spoofed source must get nothing for a malformed request (issue 13, finding 6)."""
    buf = bytearray(binding_request(b"x" * 12))
    buf[-1] ^= 0xFF
    assert binding_response(bytes(buf), CLIENT, ORIGIN) is None
    other_method = encode(StunMessage(0x003, StunClass.REQUEST, bytes(12), {Attr.PADDING: bytes(64)}))
    assert binding_response(other_method, CLIENT) is None


@pytest.mark.parametrize(
    "buf",
    [
        b"garbage",
        bytes([1, 3, 0, 0]) + bytes(40),
        encode(StunMessage(1, StunClass.INDICATION, bytes(12))),
        encode(StunMessage(1, StunClass.SUCCESS, bytes(12), {Attr.XOR_MAPPED_ADDRESS: CLIENT})),
    ],
)
def test_non_requests_are_dropped(buf):
    assert binding_response(buf, CLIENT, ORIGIN) is None


def test_classic_request_gets_an_rfc3489_answer_no_larger_than_it_allows():
    request = packet("classic_binding_request")
    reply = binding_response(request, CLIENT, ORIGIN, OTHER).data
    msg = decode(reply)
    assert msg.classic and msg.cookie == int.from_bytes(request[4:8], "big")
    assert msg.attributes == {Attr.MAPPED_ADDRESS: CLIENT}, "RFC 3489 cannot pad: only the mapped address fits"
    assert len(reply) <= len(request) + 12
    change = bytearray(request)
    change[-1] = 0x04
    error = decode(binding_response(bytes(change), CLIENT, ORIGIN).data)
    assert error.attributes[Attr.UNKNOWN_ATTRIBUTES] == (Attr.CHANGE_REQUEST, Attr.CHANGE_REQUEST)
    assert Attr.SOFTWARE not in error.attributes and Attr.FINGERPRINT not in error.attributes


# --- client transaction --------------------------------------------------------------------

TXID = bytes(range(12))


def response_to(transaction: BindingTransaction) -> bytes:
    return binding_response(transaction.request(), CLIENT, ORIGIN, OTHER).data


def test_request_is_a_fingerprinted_binding_request():
    transaction = BindingTransaction(TXID, now=100.0, change=ChangeRequest(port=True), software="t")
    msg = decode(transaction.request())
    assert (msg.method, msg.cls, msg.transaction_id) == (StunMethod.BINDING, StunClass.REQUEST, TXID)
    assert msg.attributes[Attr.CHANGE_REQUEST] == ChangeRequest(port=True)
    assert msg.attributes[Attr.SOFTWARE] == "t"
    assert Attr.FINGERPRINT in msg.attributes


def test_retransmit_schedule_follows_rfc5389():
    """Sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; gives up at 39.5 s (RFC 5389 §7.2.1)."""
    transaction = BindingTransaction(TXID, now=1000.0)
    timers = [transaction.get_timer()]
    while True:
        now = transaction.get_timer()
        assert transaction.handle_timer(now - 0.001) is None
        sent = transaction.handle_timer(now)
        if sent is None:
            break
        assert sent == transaction.request()
        timers.append(transaction.get_timer())
    assert [t - 1000.0 for t in timers] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 39.5]
    assert transaction.sent == 7
    assert transaction.timed_out and transaction.done
    assert transaction.failure == "no response to 7 requests"
    assert transaction.get_timer() is None
    assert transaction.receive(response_to(transaction), 1040.0) is None


def test_custom_rto_and_retransmit_count():
    transaction = BindingTransaction(TXID, now=0.0, rto=0.25, max_retransmits=2)
    assert transaction.get_timer() == 0.25
    assert transaction.handle_timer(0.25) is not None
    assert transaction.get_timer() == 0.75
    assert transaction.handle_timer(0.75) is not None
    assert transaction.get_timer() == 0.75 + 16 * 0.25
    assert transaction.handle_timer(4.75) is None and transaction.timed_out
    assert transaction.sent == 3
    lone = BindingTransaction(TXID, now=0.0, rto=0.25, max_retransmits=0, rm=4)
    assert lone.get_timer() == 1.0


def test_success_response_gives_the_result_once_with_rtt():
    transaction = BindingTransaction(TXID, now=10.0)
    response = response_to(transaction)
    result = transaction.receive(response, 10.25)
    assert result == StunResult(CLIENT, ORIGIN, OTHER, rtt=0.25)
    assert transaction.result == result and transaction.done and transaction.failure is None
    assert transaction.get_timer() is None
    assert transaction.receive(response, 10.5) is None


def test_rtt_is_unknown_after_a_retransmission():
    transaction = BindingTransaction(TXID, now=0.0)
    transaction.handle_timer(0.5)
    assert transaction.receive(response_to(transaction), 0.6).rtt is None


def test_mapped_address_falls_back_to_classic_attribute():
    transaction = BindingTransaction(TXID, now=0.0)
    old = encode(StunMessage(1, StunClass.SUCCESS, TXID, {Attr.MAPPED_ADDRESS: CLIENT}))
    assert transaction.receive(old, 0.1).mapped == CLIENT


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        b"short",
        encode(StunMessage(1, StunClass.SUCCESS, bytes(12), {Attr.XOR_MAPPED_ADDRESS: CLIENT})),
        encode(StunMessage(1, StunClass.REQUEST, TXID)),
        encode(StunMessage(1, StunClass.SUCCESS, TXID, {Attr.XOR_MAPPED_ADDRESS: CLIENT}))[:-4],
    ],
)
def test_foreign_or_broken_datagrams_are_ignored(buf):
    transaction = BindingTransaction(TXID, now=0.0)
    assert transaction.receive(buf, 0.1) is None
    assert not transaction.done


def test_error_response_fails_the_transaction():
    transaction = BindingTransaction(TXID, now=0.0, change=ChangeRequest(ip=True))
    reply = binding_response(transaction.request(), CLIENT, ORIGIN)
    assert transaction.receive(reply.data, 0.1) is None
    assert transaction.done and not transaction.timed_out
    assert transaction.error.code == 420
    assert transaction.failure == "server answered 420 no alternate address"


@pytest.mark.parametrize(
    "attributes, failure",
    [
        ({Attr.SOFTWARE: "x"}, "unusable response: no mapped address"),
        ({Attr.XOR_MAPPED_ADDRESS: CLIENT, 0x0024: b"\0\0\0\1"}, "unusable response: attribute 0x0024"),
    ],
)
def test_unusable_success_response_fails_the_transaction(attributes, failure):
    transaction = BindingTransaction(TXID, now=0.0)
    assert transaction.receive(encode(StunMessage(1, StunClass.SUCCESS, TXID, attributes)), 0.1) is None
    assert transaction.failure == failure and transaction.result is None


def test_transaction_id_must_be_96_bits():
    with pytest.raises(LocalProtocolError):
        BindingTransaction(bytes(16), now=0.0)


def test_stun_error_is_a_remote_protocol_error():
    assert issubclass(StunError, RemoteProtocolError)


# --- RFC 5780 classification ---------------------------------------------------------------

LOCAL = ("10.0.0.2", 5000)
NAT_A = ("203.0.113.5", 62000)
NAT_B = ("203.0.113.5", 62001)
NAT_C = ("203.0.113.5", 62002)


@pytest.mark.parametrize(
    "results, behaviour",
    [
        ((LOCAL, LOCAL, None, None), NatBehaviour.ENDPOINT_INDEPENDENT),
        ((LOCAL, NAT_A, NAT_A, None), NatBehaviour.ENDPOINT_INDEPENDENT),
        ((LOCAL, NAT_A, NAT_B, NAT_B), NatBehaviour.ADDRESS_DEPENDENT),
        ((LOCAL, NAT_A, NAT_B, NAT_C), NatBehaviour.ADDRESS_AND_PORT_DEPENDENT),
    ],
)
def test_classify_mapping(results, behaviour):
    assert classify_mapping(*results) == behaviour


def test_classify_mapping_asks_for_the_queries_it_needs():
    with pytest.raises(LocalProtocolError):
        classify_mapping(LOCAL, NAT_A, NAT_B, None)


@pytest.mark.parametrize(
    "both, port, behaviour",
    [
        (True, True, NatBehaviour.ENDPOINT_INDEPENDENT),
        (True, False, NatBehaviour.ENDPOINT_INDEPENDENT),
        (False, True, NatBehaviour.ADDRESS_DEPENDENT),
        (False, False, NatBehaviour.ADDRESS_AND_PORT_DEPENDENT),
    ],
)
def test_classify_filtering(both, port, behaviour):
    assert classify_filtering(both, port) == behaviour
