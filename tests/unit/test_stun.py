"""STUN Binding responder, client transaction and RFC 5780 classification (meshvpn.stun), without sockets.

The codec's own tests (RFC 5769 vectors, captured packets, every attribute) are in
test_stun_codec.py, which uses the request builder and addresses here.
"""

from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.stun import (
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
)

from fuzzing import mutated

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


# --- hypothesis properties -----------------------------------------------------------------


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
).flatmap(lambda host: st.integers(0, 65535).map(lambda port: (host, port)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120) | mutated(st.builds(binding_request, st.binary(min_size=12, max_size=12))), addresses)
def test_responder_never_raises_on_arbitrary_bytes(buf, source):
    reply = binding_response(buf, source, ORIGIN, OTHER)
    event("dropped" if reply is None else f"answered {decode(reply.data).cls.name}")
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
