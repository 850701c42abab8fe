"""STUN codec (meshvpn.stun_codec, re-exported by meshvpn.stun): RFC 5769 vectors, captured
packets, every attribute, and garbage that raises only StunError. The request builder and the
strategies it shares with the responder's tests are in test_stun.py.

The RFC 5769 vectors and captured packets live in tests/data/stun/*.bin; their
MESSAGE-INTEGRITY and FINGERPRINT checks prove every byte of them.
"""

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn.errors import LocalProtocolError
from meshvpn.stun import (
    MAGIC_COOKIE,
    Attr,
    ChangeRequest,
    ErrorCode,
    StunClass,
    StunError,
    StunMessage,
    StunMethod,
    decode,
    encode,
    is_stun,
    long_term_key,
)
from meshvpn.stun_codec import message_type, split_message_type

from fuzzing import mutated
from test_stun import DATA, RFC5769_PASSWORD, RFC5769_TXID, addresses, binding_request, packet


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


CAPTURED = [packet(path.stem) for path in sorted(DATA.glob("*.bin"))]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | mutated(st.sampled_from(CAPTURED)))
def test_decode_arbitrary_bytes_raises_only_stun_error(buf):
    try:
        msg = decode(buf)
    except StunError:
        event("refused")
        return
    event("decoded")
    assert len(msg.transaction_id) == 12


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
