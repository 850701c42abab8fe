"""The relay answers STUN Binding requests on its UDP port: the second server of a node's mapping test."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import keys, wire
from meshvpn.config import RelayLimits
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relay.stunanswer import PER_SOURCE_BURST, PER_SOURCE_RATE
from meshvpn.stun import Attr, BindingTransaction, ChangeRequest, StunClass, StunMessage, StunMethod, decode, encode
from meshvpn.stun import reply_budget
from meshvpn.wire import Endpoint

from fuzzing import mutated

NOW = 1_700_000_000.0
TXID = bytes(range(12))
NODE = Endpoint("198.51.100.7", 41641)


@pytest.fixture
def relay():
    coord_public = keys.public_key(bytes([1]) * 32)
    return RelayCore(bytes([2]) * 32, coord_public, RelayLimits(), lambda n: bytes(n), NOW)


def ask(relay, source=NODE, now=NOW, change=None):
    """One Binding transaction from `source` through the relay core: its result, or None."""
    txn = BindingTransaction(TXID, now, change=change)
    relay.receive(txn.request(), source, now)
    for dst, data in relay.datagrams_to_send():
        assert dst == source
        txn.receive(data, now)
    return txn


def test_a_binding_request_gets_the_source_endpoint_back(relay):
    txn = ask(relay)
    assert txn.result is not None and txn.result.mapped == NODE
    assert relay.stun.answered == 1
    assert relay.status()["drops"] == {}


@pytest.mark.parametrize("source, mapped", [
    (Endpoint("2001:db8::7", 41641), ("2001:db8::7", 41641)),
    (Endpoint("::ffff:198.51.100.7", 41641), ("198.51.100.7", 41641)),
])
def test_ipv6_and_ipv4_mapped_sources_get_their_own_family(relay, source, mapped):
    assert ask(relay, source).result.mapped == mapped


def test_a_change_request_gets_420_the_relay_has_no_alternate(relay):
    txn = ask(relay, change=ChangeRequest(ip=True, port=True))
    assert txn.result is None and txn.error.code == 420


def test_a_binding_response_or_indication_is_not_answered(relay):
    for cls in (StunClass.SUCCESS, StunClass.INDICATION):
        relay.receive(encode(StunMessage(StunMethod.BINDING, cls, TXID), fingerprint=True), NODE, NOW)
    assert relay.datagrams_to_send() == []
    assert relay.drops["STUN not a Binding request"] == 2 and relay.stun.answered == 0


def test_answers_are_limited_per_source_prefix_and_other_prefixes_still_get_theirs(relay):
    """Addresses of one IPv6 /64 share one allowance; the burst spent, the next is refused."""
    burst = int(PER_SOURCE_BURST)
    answered = [ask(relay, Endpoint(f"2001:db8:0:1::{n + 1:x}", 5000)).result is not None for n in range(burst + 3)]
    assert answered == [True] * burst + [False] * 3
    assert relay.drops["STUN rate limited"] == 3
    assert ask(relay, Endpoint("2001:db8:0:2::1", 5000)).result is not None
    assert ask(relay, Endpoint("2001:db8:0:1::1", 5000), now=NOW + 2 / PER_SOURCE_RATE).result is not None


def test_stun_on_a_tcp_stream_and_other_garbage_stay_malformed_drops(relay):
    request = BindingTransaction(TXID, NOW).request()
    relay.stream_opened(Stream("conn"), bytes(32), NOW)
    relay.receive(request, Stream("conn"), NOW)
    relay.receive(b"\x00" * 40, NODE, NOW)
    assert relay.datagrams_to_send() == [] and relay.drops["malformed"] == 2


def test_relay_traffic_in_the_same_batch_is_unaffected(relay):
    """A STUN request between envelopes is answered; the envelopes are still judged as before."""
    stray = wire.encode_relay(bytes(32), wire.header(wire.MessageType.DATA) + bytes(30))
    relay.receive_many([stray, BindingTransaction(TXID, NOW).request(), stray], NODE, NOW)
    assert relay.stun.answered == 1 and relay.drops["sender not registered"] == 2


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_requests_never_raise_and_no_reply_outgrows_its_request(data):
    relay = RelayCore(bytes([2]) * 32, keys.public_key(bytes([1]) * 32), RelayLimits(), lambda n: bytes(n), NOW)
    request = data.draw(mutated(st.just(BindingTransaction(TXID, NOW).request())))
    relay.receive(request, NODE, NOW)
    for dst, reply in relay.datagrams_to_send():
        assert len(reply) <= reply_budget(request, dst)
        message = decode(reply)
        assert message.cls in (StunClass.SUCCESS, StunClass.ERROR)
        if message.cls == StunClass.SUCCESS:
            assert message.attributes[Attr.XOR_MAPPED_ADDRESS] == NODE
