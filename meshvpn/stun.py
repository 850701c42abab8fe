"""STUN Binding: the server's responder and the client's transaction, both sans-IO.

The responder turns one request datagram into at most one reply and says which local address
the reply must leave from (RFC 5780 CHANGE-REQUEST). The client transaction follows RFC 5389
§7.2.1: it sends at 0, RTO, 3·RTO, 7·RTO ... (Rc = 7 sends in all), waits Rm·RTO after the last
and then gives up; the caller feeds it `now` and whatever STUN datagrams arrive. A daemon that
shares its UDP socket with STUN keeps these objects itself; `meshvpn.stunio` wraps them for
asyncio.

The message codec lives in `meshvpn.stun_codec`; its public names are re-exported here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from meshvpn.errors import LocalProtocolError
from meshvpn.stun_codec import (
    MAGIC_COOKIE,
    TRANSACTION_ID_SIZE,
    Address,
    Attr,
    ChangeRequest,
    ErrorCode,
    StunClass,
    StunError,
    StunMessage,
    StunMethod,
    attr_name,
    decode,
    decode_header,
    encode,
    is_stun,
    long_term_key,
)

__all__ = [
    "MAGIC_COOKIE",
    "MAX_RETRANSMITS",
    "RTO",
    "TRANSACTION_ID_SIZE",
    "SOFTWARE",
    "Address",
    "Attr",
    "BindingReply",
    "BindingTransaction",
    "ChangeRequest",
    "ErrorCode",
    "NatBehaviour",
    "StunClass",
    "StunError",
    "StunMessage",
    "StunMethod",
    "StunResult",
    "attr_name",
    "binding_response",
    "classify_filtering",
    "classify_mapping",
    "decode",
    "encode",
    "is_stun",
    "long_term_key",
]

SOFTWARE = "meshvpn"
"""SOFTWARE attribute value on every response we send (when it fits, see `binding_response`)."""
REQUEST_SIZE = 120
"""Bytes our client pads its requests to (RFC 5780 PADDING): a reply may be no larger than its
request plus the mapped address, and a full RFC 5780 answer over IPv6 needs this much."""
_DROPPABLE = (Attr.SOFTWARE, Attr.FINGERPRINT, Attr.RESPONSE_ORIGIN, Attr.OTHER_ADDRESS,
              Attr.SOURCE_ADDRESS, Attr.CHANGED_ADDRESS, Attr.MAPPED_ADDRESS)
"""What a reply leaves out, in this order, until it fits its budget: never the (XOR-)mapped address
a client asked for."""

RTO = 0.5
"""RFC 5389 §7.2.1 default initial retransmission timeout, seconds."""
MAX_RETRANSMITS = 6
"""Rc - 1: seven requests are sent in all."""
RM = 16
"""After the last request, wait Rm·RTO for a response."""


# --- server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BindingReply:
    """A datagram the server must send, where to, and from which local address."""

    data: bytes
    send_to: Address
    send_from: Address | None = None
    """None: the socket the request arrived on; else the address CHANGE-REQUEST asked for."""


def _changed_origin(
    change: ChangeRequest, origin: Address | None, other: Address | None
) -> Address | None:
    """The address a CHANGE-REQUEST asks to answer from, if it is the alternate socket's.

    The server has two sockets, not RFC 5780's four: a change is honoured only when it leads
    exactly to the alternate, i.e. it changes exactly what differs between the two.
    """
    if origin is None or other is None:
        return None
    if (change.ip, change.port) != (other[0] != origin[0], other[1] != origin[1]):
        return None
    return other


def _advertised(address: Address | None) -> Address | None:
    """An address worth telling a client: not a wildcard such as 0.0.0.0 or ::."""
    if address is None or ipaddress.ip_address(address[0]).is_unspecified:
        return None
    return address


def _reply(
    request: StunMessage, cls: StunClass, attributes: dict, send_to: Address, budget: int, send_from=None
) -> BindingReply | None:
    """Encode a response of at most `budget` bytes, leaving out `_DROPPABLE` attributes as needed
    (None if even the essentials do not fit); RFC 3489 clients get neither SOFTWARE nor FINGERPRINT,
    unknown to them."""
    fingerprint = not request.classic
    if not request.classic:
        attributes[Attr.SOFTWARE] = SOFTWARE
    droppable = [attr for attr in _DROPPABLE if attr in attributes or (attr is Attr.FINGERPRINT and fingerprint)]
    essential = Attr.MAPPED_ADDRESS if request.classic or Attr.XOR_MAPPED_ADDRESS not in attributes else None
    while True:
        message = StunMessage(request.method, cls, request.transaction_id, attributes, request.cookie)
        data = encode(message, fingerprint=fingerprint)
        if len(data) <= budget:
            return BindingReply(data, send_to, send_from)
        if not droppable or droppable[0] is essential:
            return None
        attr = droppable.pop(0)
        if attr is Attr.FINGERPRINT:
            fingerprint = False
        else:
            attributes.pop(attr, None)


def reply_budget(request: bytes, source: Address) -> int:
    """The largest reply to `request` from `source`: the request plus one mapped address, so that
    a spoofed request makes the server no amplifier."""
    return len(request) + (24 if ":" in source[0] else 12)


def _error(request: StunMessage, source: Address, budget: int, code: int, reason: str, unknown=()) -> BindingReply | None:
    attributes: dict = {Attr.ERROR_CODE: ErrorCode(code, reason)}
    if unknown:
        # RFC 3489 §11.2.3: an odd list repeats an entry instead of being padded.
        repeat = tuple(unknown[-1:]) if request.classic and len(unknown) % 2 else ()
        attributes[Attr.UNKNOWN_ATTRIBUTES] = tuple(unknown) + repeat
    reply = _reply(request, StunClass.ERROR, dict(attributes), source, budget)
    if reply is None:  # the reason phrase is the one part of an error that can go
        attributes[Attr.ERROR_CODE] = ErrorCode(code, "")
        reply = _reply(request, StunClass.ERROR, attributes, source, budget)
    return reply


def binding_response(
    request: bytes,
    source: Address,
    response_origin: Address | None = None,
    other_address: Address | None = None,
) -> BindingReply | None:
    """Answer one datagram received from `source` on a socket bound to `response_origin`.

    `other_address` is the server's alternate socket (RFC 5780 OTHER-ADDRESS); a CHANGE-REQUEST
    that asks for a change other than "to the alternate" gets 420, as does an unknown
    comprehension-required attribute. Anything else that is not a well-formed Binding request
    (garbage, a broken request, another method, RESPONSE-PORT 0) is dropped (None) without an
    error reply: a spoofed source must get nothing for it. No reply is larger than
    `reply_budget`: what does not fit is left out, and an error that does not fit is not sent.
    """
    try:
        method, cls, _, _ = decode_header(request)
        msg = decode(request)
    except StunError:
        return None
    if cls != StunClass.REQUEST or method != StunMethod.BINDING:
        return None
    budget = reply_budget(request, source)
    if msg.unknown_required:
        return _error(msg, source, budget, 420, "Unknown Attribute", msg.unknown_required)
    change = msg.attributes.get(Attr.CHANGE_REQUEST, ChangeRequest())
    send_from = None
    if change.ip or change.port:
        send_from = _changed_origin(change, response_origin, other_address)
        if send_from is None:
            return _error(msg, source, budget, 420, "no alternate address", [Attr.CHANGE_REQUEST])
    send_to = source
    if Attr.RESPONSE_PORT in msg.attributes:
        if not msg.attributes[Attr.RESPONSE_PORT]:
            return None
        send_to = (source[0], msg.attributes[Attr.RESPONSE_PORT])
    origin = _advertised(send_from or response_origin)
    other_address = _advertised(other_address)
    if msg.classic:
        attributes = {
            Attr.MAPPED_ADDRESS: source,
            Attr.SOURCE_ADDRESS: origin,
            Attr.CHANGED_ADDRESS: other_address,
        }
    else:
        attributes = {
            Attr.XOR_MAPPED_ADDRESS: source,
            Attr.MAPPED_ADDRESS: source,
            Attr.RESPONSE_ORIGIN: origin,
            Attr.OTHER_ADDRESS: other_address,
        }
    present = {k: v for k, v in attributes.items() if v is not None}
    return _reply(msg, StunClass.SUCCESS, present, send_to, budget, send_from)


# --- client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StunResult:
    """What a successful Binding transaction learned."""

    mapped: Address
    """Our address as the server saw it (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS)."""
    response_origin: Address | None = None
    """Where the response came from, as the server says (RFC 5780)."""
    other_address: Address | None = None
    """The server's alternate address, if it has one (RFC 5780)."""
    rtt: float | None = None
    """Round-trip time; None when a retransmission makes it ambiguous (Karn's rule)."""


class BindingTransaction:
    """Client side of one Binding request over UDP (RFC 5389 §7.2.1).

    Create it when the first request is sent, at `now`; send `request()` then and each
    datagram `handle_timer` returns; hand `receive` every STUN datagram. It ends with
    `result` set, or with `failure` (and `error` for an error response) set.
    """

    def __init__(
        self,
        transaction_id: bytes,
        now: float,
        rto: float = RTO,
        max_retransmits: int = MAX_RETRANSMITS,
        *,
        rm: int = RM,
        change: ChangeRequest | None = None,
        software: str | None = None,
    ) -> None:
        if len(transaction_id) != TRANSACTION_ID_SIZE:
            raise LocalProtocolError(f"transaction id is {len(transaction_id)} bytes, not 12")
        attributes: dict = {}
        if software:
            attributes[Attr.SOFTWARE] = software
        if change and (change.ip or change.port):
            attributes[Attr.CHANGE_REQUEST] = change
        request = StunMessage(StunMethod.BINDING, StunClass.REQUEST, transaction_id, attributes)
        self.transaction_id = transaction_id
        self._request = encode(request, fingerprint=True)
        if len(self._request) < REQUEST_SIZE:  # RFC 5780 PADDING, so that servers may answer in full
            attributes[Attr.PADDING] = bytes(max(0, REQUEST_SIZE - len(self._request) - 4))
            self._request = encode(request, fingerprint=True)
        self._match = self._request[4:20]
        self._started = now
        self._interval = rto
        self._final_wait = rm * rto
        self._sends_left = max_retransmits
        self._deadline: float | None = now + (rto if max_retransmits else self._final_wait)
        self.sent = 1
        self.result: StunResult | None = None
        self.error: ErrorCode | None = None
        self.failure: str | None = None
        self.timed_out = False

    @property
    def done(self) -> bool:
        """True once the transaction succeeded, failed or timed out."""
        return self._deadline is None

    def request(self) -> bytes:
        """The request datagram (every retransmission is these same bytes)."""
        return self._request

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called; None once done."""
        return self._deadline

    def handle_timer(self, now: float) -> bytes | None:
        """Return the request to retransmit, or None (not yet due, or now timed out)."""
        if self._deadline is None or now < self._deadline:
            return None
        if self._sends_left == 0:
            self.timed_out = True
            self._finish(f"no response to {self.sent} requests")
            return None
        self._sends_left -= 1
        self.sent += 1
        self._interval *= 2
        self._deadline += self._interval if self._sends_left else self._final_wait
        return self._request

    def receive(self, buf: bytes, now: float) -> StunResult | None:
        """Consume a datagram; return the result when it is our success response, else None."""
        if self._deadline is None or buf[4:20] != self._match:
            return None
        try:
            msg = decode(buf)
        except StunError:
            return None
        if msg.cls == StunClass.ERROR:
            self.error = msg.attributes.get(Attr.ERROR_CODE, ErrorCode(0, "no ERROR-CODE"))
            self._finish(f"server answered {self.error.code} {self.error.reason}")
            return None
        if msg.cls != StunClass.SUCCESS:
            return None
        mapped = msg.attributes.get(Attr.XOR_MAPPED_ADDRESS) or msg.attributes.get(Attr.MAPPED_ADDRESS)
        if msg.unknown_required or mapped is None:
            unknown = ", ".join(attr_name(t) for t in msg.unknown_required) or "no mapped address"
            self._finish(f"unusable response: {unknown}")
            return None
        self.result = StunResult(
            mapped,
            msg.attributes.get(Attr.RESPONSE_ORIGIN),
            msg.attributes.get(Attr.OTHER_ADDRESS),
            now - self._started if self.sent == 1 else None,
        )
        self._deadline = None
        return self.result

    def _finish(self, failure: str) -> None:
        self.failure = failure
        self._deadline = None


# --- RFC 5780 behaviour discovery: classification only -----------------------------------


class NatBehaviour(Enum):
    """RFC 4787 mapping or filtering behaviour, as RFC 5780 §4.3 and §4.4 classify it."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


def classify_mapping(
    local: Address, to_primary: Address, to_alternate_ip: Address | None, to_alternate: Address | None
) -> NatBehaviour:
    """Mapping behaviour from the mapped addresses three queries saw (RFC 5780 §4.3).

    `to_primary` answered a query to the server's primary address, `to_alternate_ip` one to
    (alternate IP, primary port), `to_alternate` one to (alternate IP, alternate port). The
    later ones are not needed (None) when an earlier result already decides.
    """
    if to_primary == local or to_alternate_ip == to_primary:
        return NatBehaviour.ENDPOINT_INDEPENDENT
    if to_alternate_ip is None or to_alternate is None:
        raise LocalProtocolError("mapping differs from the local address: queries 2 and 3 are needed")
    if to_alternate == to_alternate_ip:
        return NatBehaviour.ADDRESS_DEPENDENT
    return NatBehaviour.ADDRESS_AND_PORT_DEPENDENT


def classify_filtering(changed_address_answered: bool, changed_port_answered: bool) -> NatBehaviour:
    """Filtering behaviour from which CHANGE-REQUEST answers got through (RFC 5780 §4.4).

    `changed_address_answered`: a response sent from the alternate IP and port arrived;
    `changed_port_answered`: one from the primary IP but the alternate port arrived.
    """
    if changed_address_answered:
        return NatBehaviour.ENDPOINT_INDEPENDENT
    if changed_port_answered:
        return NatBehaviour.ADDRESS_DEPENDENT
    return NatBehaviour.ADDRESS_AND_PORT_DEPENDENT
