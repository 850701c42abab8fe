"""A TURN server's answers, in memory: enough of RFC 8656 for a node to allocate and bind channels.

It answers each request as a real server would after its first round: 401 with a realm and a nonce
to an unsigned request, success (signed with the long-term key) to a signed one, an allocation
with `relayed` as its relayed address. Used by the TURN unit tests and the node's removal tests.
"""

from __future__ import annotations

from meshvpn.stun_codec import Attr, ErrorCode, StunClass, StunMessage, decode, encode, long_term_key, StunMethod
from meshvpn.wire import Endpoint

REALM = "meshvpn"


def turn_answer(request: bytes, relayed: Endpoint, username: str = "100:me", password: str = "pw") -> tuple[int, bytes]:
    """(the request's method, the server's reply to it)."""
    key = long_term_key(username, REALM, password)
    msg = decode(request)
    if Attr.MESSAGE_INTEGRITY not in msg.attributes:
        attrs = {Attr.ERROR_CODE: ErrorCode(401, "Unauthorized"), Attr.REALM: REALM, Attr.NONCE: "n"}
        return msg.method, encode(StunMessage(msg.method, StunClass.ERROR, msg.transaction_id, attrs))
    if msg.attributes[Attr.USERNAME] != username:
        raise AssertionError(f"signed by {msg.attributes[Attr.USERNAME]!r}, not {username!r}")
    attrs = {Attr.XOR_RELAYED_ADDRESS: relayed, Attr.LIFETIME: 600} if msg.method == StunMethod.ALLOCATE else {}
    return msg.method, encode(StunMessage(msg.method, StunClass.SUCCESS, msg.transaction_id, attrs), key=key)
