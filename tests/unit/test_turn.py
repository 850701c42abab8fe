"""TURN client (meshvpn.turn) and the TURN attributes of the STUN codec, without sockets.

A scripted server in this file answers the client's requests the way coturn does: 401 with
REALM and NONCE to the first Allocate, then signed responses. Time is a plain float.
"""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.stun_codec import (
    Attr,
    ErrorCode,
    StunClass,
    StunError,
    StunMessage,
    StunMethod,
    decode,
    encode,
    long_term_key,
)
from meshvpn.turn import (
    PROTOCOL_UDP,
    AllocationLost,
    AllocationReady,
    AllocationState,
    ChannelBound,
    DataReceived,
    TurnClient,
    TurnConfig,
)

USER, PASSWORD, REALM = "1700000000:node", "secret-password", "meshvpn"
KEY = long_term_key(USER, REALM, PASSWORD)
RELAYED = ("203.0.113.5", 49152)
MAPPED = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 49153)


def counter_bytes():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def reply(request: bytes, cls=StunClass.SUCCESS, key=KEY, **attributes) -> bytes:
    msg = decode(request)
    attrs = {Attr[name.upper()]: value for name, value in attributes.items()}
    return encode(StunMessage(msg.method, cls, msg.transaction_id, attrs), key=key)


def error(request: bytes, code: int, **attributes) -> bytes:
    return reply(request, StunClass.ERROR, key=None, error_code=ErrorCode(code, "x"), **attributes)


def raw_message(attr: int, value: bytes, method=StunMethod.ALLOCATE, cls=StunClass.SUCCESS) -> bytes:
    """A message whose one attribute carries `value` as is, right or wrong."""
    body = encode(StunMessage(method, cls, bytes(12), {0x7FFF: value}))
    return body[:20] + attr.to_bytes(2, "big") + body[22:]


def one(client: TurnClient) -> bytes:
    out = client.datagrams_to_send()
    assert len(out) == 1, out
    return out[0]


def events(client: TurnClient) -> list:
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def allocated(now: float = 0.0, config: TurnConfig | None = None) -> TurnClient:
    """A client through 401 and Allocate success at `now`, lifetime 600."""
    client = TurnClient(USER, PASSWORD, counter_bytes(), config)
    client.allocate(now)
    client.receive(error(one(client), 401, realm=REALM, nonce="n1"), now)
    request = one(client)
    client.receive(reply(request, xor_relayed_address=RELAYED, xor_mapped_address=MAPPED, lifetime=600), now)
    assert client.ready
    events(client)
    return client


# --- the codec's TURN attributes -----------------------------------------------------------


def test_allocate_with_turn_attributes_round_trips_byte_exact():
    attrs = {
        Attr.REQUESTED_TRANSPORT: 17, Attr.DONT_FRAGMENT: True, Attr.EVEN_PORT: True, Attr.LIFETIME: 600,
        Attr.CHANNEL_NUMBER: 0x4001, Attr.XOR_PEER_ADDRESS: PEER, Attr.XOR_RELAYED_ADDRESS: RELAYED,
        Attr.RESERVATION_TOKEN: b"12345678", Attr.DATA: b"abcde",
    }  # fmt: skip
    buf = encode(StunMessage(StunMethod.ALLOCATE, StunClass.REQUEST, bytes(range(12)), attrs), key=KEY)
    msg = decode(buf, key=KEY)
    assert {k: v for k, v in msg.attributes.items() if k != Attr.MESSAGE_INTEGRITY} == attrs
    assert msg.unknown_required == []
    assert encode(msg, key=KEY) == buf


def test_turn_attribute_wire_values():
    buf = encode(StunMessage(StunMethod.CHANNEL_BIND, StunClass.REQUEST, bytes(12), {
        Attr.CHANNEL_NUMBER: 0x4001, Attr.REQUESTED_TRANSPORT: 17, Attr.EVEN_PORT: True, Attr.DONT_FRAGMENT: True,
    }))  # fmt: skip
    assert buf[0:2] == b"\x00\x09"
    assert buf[20:] == bytes.fromhex("000c0004 40010000 00190004 11000000 00180001 80000000 001a0000")


@pytest.mark.parametrize("attr, value", [
    (Attr.CHANNEL_NUMBER, b"\x40\x01"), (Attr.LIFETIME, b"\x00\x00\x02"), (Attr.REQUESTED_TRANSPORT, b"\x11"),
    (Attr.DONT_FRAGMENT, b"\x01"), (Attr.EVEN_PORT, b""), (Attr.RESERVATION_TOKEN, b"1234567"),
    (Attr.XOR_PEER_ADDRESS, b"\x00\x01\x00"), (Attr.XOR_RELAYED_ADDRESS, b"\x00\x03\x00\x00\x01\x02\x03\x04"),
])  # fmt: skip
def test_malformed_turn_attributes_are_stun_errors(attr, value):
    buf = raw_message(attr, value)
    with pytest.raises(StunError, match=attr.name.replace("_", "-")):
        decode(buf)


ADDRESSES = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)) | st.tuples(
    st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(lambda ip: ip.compressed),
    st.integers(0, 65535),
)


@settings(max_examples=300, deadline=None)
@given(
    txid=st.binary(min_size=12, max_size=12),
    channel=st.integers(0, 0xFFFF),
    lifetime=st.integers(0, 2**32 - 1),
    peer=ADDRESSES,
    relayed=ADDRESSES,
    data=st.binary(max_size=300),
    even=st.booleans(),
    token=st.binary(min_size=8, max_size=8),
    transport=st.integers(0, 255),
)
def test_turn_attributes_round_trip(txid, channel, lifetime, peer, relayed, data, even, token, transport):
    attrs = {
        Attr.CHANNEL_NUMBER: channel, Attr.LIFETIME: lifetime, Attr.XOR_PEER_ADDRESS: peer,
        Attr.XOR_RELAYED_ADDRESS: relayed, Attr.DATA: data, Attr.EVEN_PORT: even, Attr.RESERVATION_TOKEN: token,
        Attr.REQUESTED_TRANSPORT: transport, Attr.DONT_FRAGMENT: True,
    }  # fmt: skip
    msg = decode(encode(StunMessage(StunMethod.ALLOCATE, StunClass.SUCCESS, txid, attrs)))
    assert msg.attributes == attrs


@settings(max_examples=300, deadline=None)
@given(
    attr=st.sampled_from([Attr.CHANNEL_NUMBER, Attr.LIFETIME, Attr.XOR_PEER_ADDRESS, Attr.DATA,
                          Attr.XOR_RELAYED_ADDRESS, Attr.EVEN_PORT, Attr.REQUESTED_TRANSPORT,
                          Attr.DONT_FRAGMENT, Attr.RESERVATION_TOKEN]),
    value=st.binary(max_size=24),
)
def test_any_turn_attribute_value_decodes_or_raises_stun_error(attr, value):
    buf = raw_message(attr, value, StunMethod.DATA, StunClass.INDICATION)
    try:
        decode(buf)
    except StunError:
        pass


# --- allocation ----------------------------------------------------------------------------


def test_allocate_answers_401_with_long_term_credentials_then_refreshes_60s_before_expiry():
    client = TurnClient(USER, PASSWORD, counter_bytes())
    client.allocate(10.0)
    first = decode(one(client))
    assert (first.method, first.cls) == (StunMethod.ALLOCATE, StunClass.REQUEST)
    assert first.attributes[Attr.REQUESTED_TRANSPORT] == PROTOCOL_UDP
    assert Attr.USERNAME not in first.attributes and Attr.MESSAGE_INTEGRITY not in first.attributes
    client.receive(error(encode(first), 401, realm=REALM, nonce="n1"), 10.1)
    second = one(client)
    signed = decode(second, key=KEY)
    assert signed.transaction_id != first.transaction_id
    assert (signed.attributes[Attr.USERNAME], signed.attributes[Attr.REALM], signed.attributes[Attr.NONCE]) == (
        USER, REALM, "n1")
    client.receive(reply(second, xor_relayed_address=RELAYED, xor_mapped_address=MAPPED, lifetime=600), 10.2)
    assert events(client) == [AllocationReady(RELAYED, MAPPED, 600)]
    assert client.relayed == RELAYED and client.expires_at == pytest.approx(610.2)
    assert client.get_timer() == pytest.approx(550.2)
    client.handle_timer(550.1)
    assert client.datagrams_to_send() == []
    client.handle_timer(550.2)
    refresh = decode(one(client), key=KEY)
    assert (refresh.method, refresh.attributes[Attr.LIFETIME]) == (StunMethod.REFRESH, 600)
    client.receive(reply(encode(refresh, key=KEY), lifetime=300), 550.3)
    assert client.expires_at == pytest.approx(850.3)
    assert client.get_timer() == pytest.approx(790.3)


def test_a_success_response_without_valid_integrity_is_ignored():
    client = TurnClient(USER, PASSWORD, counter_bytes())
    client.allocate(0.0)
    client.receive(error(one(client), 401, realm=REALM, nonce="n1"), 0.0)
    request = one(client)
    client.receive(reply(request, key=None, xor_relayed_address=RELAYED), 0.1)
    client.receive(reply(request, key=b"wrong", xor_relayed_address=RELAYED), 0.1)
    assert client.state == AllocationState.ALLOCATING
    client.receive(reply(request, xor_relayed_address=RELAYED), 0.2)
    assert client.ready


def test_stale_nonce_438_retries_with_the_new_nonce():
    client = allocated()
    client.handle_timer(540.0)
    refresh = one(client)
    client.receive(error(refresh, 438, nonce="n2"), 540.1)
    retry = decode(one(client), key=KEY)
    assert retry.method == StunMethod.REFRESH and retry.attributes[Attr.NONCE] == "n2"
    client.receive(reply(encode(retry, key=KEY), lifetime=600), 540.2)
    assert client.get_timer() == pytest.approx(1080.2)


def test_wrong_password_fails_after_one_authenticated_try_and_retries_with_backoff():
    client = TurnClient(USER, "wrong", counter_bytes())
    client.allocate(0.0)
    client.receive(error(one(client), 401, realm=REALM, nonce="n1"), 0.0)
    client.receive(error(one(client), 401, realm=REALM, nonce="n1"), 0.1)
    assert client.state == AllocationState.FAILED and "401" in client.failure
    assert events(client) == [AllocationLost(client.failure)]
    assert client.get_timer() == pytest.approx(1.1)
    client.set_credentials(USER, PASSWORD)
    client.handle_timer(1.1)
    retry = one(client)
    assert decode(retry, key=KEY).method == StunMethod.ALLOCATE
    client.receive(error(retry, 401, realm=REALM, nonce="n1"), 1.2)
    client.receive(error(one(client), 401, realm=REALM, nonce="n1"), 1.3)
    assert client.get_timer() == pytest.approx(3.3)


def test_requests_are_retransmitted_on_the_rfc5389_schedule_then_the_allocation_fails():
    client = TurnClient(USER, PASSWORD, counter_bytes(), TurnConfig(rto=0.5, max_retransmits=6))
    client.allocate(0.0)
    request = one(client)
    sends = []
    while client.state == AllocationState.ALLOCATING:
        now = client.get_timer()
        client.handle_timer(now)
        for data in client.datagrams_to_send():
            assert data == request
            sends.append(now)
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert client.failure == "Allocate failed: no response" and client.retry_at == pytest.approx(40.5)


def test_allocation_mismatch_437_deletes_the_old_allocation_and_allocates_again():
    client = TurnClient(USER, PASSWORD, counter_bytes())
    client.allocate(0.0)
    client.receive(error(one(client), 401, realm=REALM, nonce="n1"), 0.0)
    client.receive(error(one(client), 437), 0.1)
    delete = one(client)
    assert decode(delete, key=KEY).attributes[Attr.LIFETIME] == 0
    client.receive(reply(delete, lifetime=0), 0.2)
    again = one(client)
    assert decode(again, key=KEY).method == StunMethod.ALLOCATE
    client.receive(reply(again, xor_relayed_address=RELAYED, lifetime=600), 0.3)
    assert client.ready


def test_refresh_failures_retry_until_expiry_then_the_client_allocates_anew():
    client = allocated(config=TurnConfig(max_retransmits=0))
    client.handle_timer(540.0)
    client.receive(error(one(client), 500), 540.0)
    assert client.get_timer() == pytest.approx(541.0)
    client.handle_timer(541.0)
    one(client)
    client.handle_timer(600.0)
    assert client.state == AllocationState.FAILED and client.failure == "allocation expired"
    assert events(client) == [AllocationLost("allocation expired")]
    client.handle_timer(601.0)
    assert decode(one(client)).method == StunMethod.ALLOCATE


def test_refresh_437_loses_the_allocation_at_once():
    client = allocated()
    client.handle_timer(540.0)
    client.receive(error(one(client), 437), 540.0)
    assert client.state == AllocationState.FAILED and client.relayed is None


# --- permissions and channels --------------------------------------------------------------


def test_set_peers_permits_each_ip_and_binds_each_address_then_refreshes_both_on_time():
    client = allocated()
    other = ("203.0.113.5", 50000)
    client.set_peers([PEER, other], 1.0)
    requests = [decode(d, key=KEY) for d in client.datagrams_to_send()]
    assert [r.method for r in requests] == [StunMethod.CREATE_PERMISSION] + [StunMethod.CHANNEL_BIND] * 2
    assert requests[0].attributes[Attr.XOR_PEER_ADDRESS][0] == PEER[0]
    channels = [r.attributes[Attr.CHANNEL_NUMBER] for r in requests[1:]]
    assert channels == [0x4000, 0x4001]
    assert client.send(PEER, b"hi")[:2] == b"\x00\x16"  # Send indication until bound
    for request in requests:
        client.receive(reply(encode(request, key=KEY)), 1.5)
    assert events(client) == [ChannelBound(PEER, 0x4000), ChannelBound(other, 0x4001)]
    assert client.send(PEER, b"hi") == b"\x40\x00\x00\x02hi"
    assert client.peer_of_channel == {0x4000: PEER, 0x4001: other}
    assert client.get_timer() == pytest.approx(241.5)
    client.handle_timer(241.5)
    assert [decode(d).method for d in client.datagrams_to_send()] == [StunMethod.CREATE_PERMISSION]
    client.handle_timer(541.5)
    again = [decode(d).method for d in client.datagrams_to_send()]
    assert again.count(StunMethod.CHANNEL_BIND) == 2


def test_a_failed_channel_bind_is_retried_and_a_dropped_peer_is_forgotten():
    client = allocated()
    client.set_peers([PEER], 1.0)
    permission, bind = client.datagrams_to_send()
    client.receive(reply(permission), 1.1)
    client.receive(error(bind, 400), 1.1)
    assert client.channel(PEER) is None and client.get_timer() == pytest.approx(2.1)
    client.handle_timer(2.1)
    client.receive(reply(one(client)), 2.2)
    assert client.channel(PEER) == 0x4000
    client.set_peers([], 3.0)
    assert client.peer_of_channel == {} and client.permissions == {}
    assert client.get_timer() == pytest.approx(540.0)


def test_data_indications_from_permitted_ips_only():
    client = allocated()
    client.set_peers([PEER], 1.0)
    client.datagrams_to_send()

    def indication(peer):
        attrs = {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: b"payload"}
        return encode(StunMessage(StunMethod.DATA, StunClass.INDICATION, bytes(12), attrs))

    client.receive(indication(("192.0.2.99", 1)), 2.0)
    client.receive(indication(("203.0.113.5", 1234)), 2.0)
    assert events(client) == [DataReceived(("203.0.113.5", 1234), b"payload")]


def test_losing_the_allocation_unbinds_channels_and_rebinds_after_reallocation():
    client = allocated()
    client.set_peers([PEER], 1.0)
    for request in client.datagrams_to_send():
        client.receive(reply(request), 1.1)
    assert client.channel(PEER) == 0x4000
    client.handle_timer(540.0)
    refresh, permission = client.datagrams_to_send()
    assert decode(permission).method == StunMethod.CREATE_PERMISSION
    client.receive(error(refresh, 437), 540.0)
    assert client.channel(PEER) is None and client.get_timer() == pytest.approx(541.0)
    client.handle_timer(541.0)
    client.receive(reply(one(client), xor_relayed_address=RELAYED, lifetime=600), 541.1)
    methods = [decode(d).method for d in client.datagrams_to_send()]
    assert methods == [StunMethod.CREATE_PERMISSION, StunMethod.CHANNEL_BIND]


def test_close_sends_a_zero_lifetime_refresh_once():
    client = allocated()
    client.close(5.0)
    assert decode(one(client), key=KEY).attributes[Attr.LIFETIME] == 0
    assert client.state == AllocationState.CLOSED and client.get_timer() is None
