"""Issue 13, finding 6: the STUN responder is no amplifier, whatever the request."""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.stun import Attr, ChangeRequest, StunClass, StunMessage, StunMethod, binding_response, decode, encode
from test_stun import ORIGIN, OTHER, addresses

requests = st.builds(
    lambda txid, padding, software, change: encode(StunMessage(
        StunMethod.BINDING, StunClass.REQUEST, txid,
        {k: v for k, v in ((Attr.PADDING, padding), (Attr.SOFTWARE, software), (Attr.CHANGE_REQUEST, change))
         if v is not None}), fingerprint=True),
    st.binary(min_size=12, max_size=12), st.none() | st.binary(max_size=80), st.none() | st.text(max_size=30),
    st.none() | st.builds(ChangeRequest, st.booleans(), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(requests, addresses, st.sampled_from([OTHER, None, ("192.0.2.2", ORIGIN[1])]))
def test_no_reply_is_larger_than_its_request_plus_the_mapped_address(request, source, other):
    reply = binding_response(request, source, ORIGIN, other)
    assert reply is not None, "every well-formed Binding request gets an answer that fits"
    assert len(reply.data) <= len(request) + (24 if ":" in source[0] else 12)
    msg = decode(reply.data)
    if msg.cls == StunClass.SUCCESS:
        assert msg.attributes[Attr.XOR_MAPPED_ADDRESS] == source
