"""TURN client (RFC 8656, formerly RFC 5766) for one allocation over UDP, without I/O.

A node behind a NAT that defeats hole punching can still be reached through a standard TURN
server (coturn and friends): it *allocates* a relayed address on the server, *permits* peers'
IP addresses, *binds* a channel number to each peer address, and from then on exchanges
ChannelData with the server, which forwards it from and to the relayed address.

Rules:

* Allocate first without credentials; the server answers 401 with REALM and NONCE, and every
  later request carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY with the long-term key
  MD5(username:realm:password). An allocation's requests keep its username; fresh credentials
  wait for the next Allocate. 438 (stale nonce) takes the new nonce and retries at once.
  Success responses to authenticated requests must carry a valid MESSAGE-INTEGRITY.
* The allocation is refreshed `refresh_margin` before its lifetime ends; a failed refresh is
  retried until the allocation expires, and then the client allocates anew with backoff. 437
  (allocation mismatch: the server still holds one for our 5-tuple, e.g. after a restart)
  deletes the old allocation with a zero-lifetime Refresh and allocates again.
* `set_peers` says which peer addresses must be reachable. Each peer IP gets a permission
  (CreatePermission, refreshed every `permission_refresh`, they last 300 s) and each peer
  address a channel (ChannelBind, 0x4000-0x7FFF, refreshed every `channel_refresh`, they
  last 600 s). Peers dropped from the set are simply no longer refreshed.
* Requests are retransmitted as RFC 5389 §7.2.1 says (RTO doubling, 7 sends, 16 RTO wait).
  Over TCP or TLS (``reliable``) a request is sent once and fails after `RELIABLE_TIMEOUT`.
* Data goes out as ChannelData once the peer's channel is bound (4-byte header; padding is
  optional on UDP and accepted on receipt, see `meshvpn.turn_codec`), else as a Send
  indication. The hot path only prepends `CHANNEL_HEADER`; it never calls into the client.

Inputs take ``now`` (monotonic seconds) and randomness comes from ``random_bytes``. Outputs are
pulled: `datagrams_to_send()` (all for the server), `next_event()` and `get_timer()`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from meshvpn.backoff import doubling
from meshvpn.stun import RM, SOFTWARE
from meshvpn.stun_codec import (
    TRANSACTION_ID_SIZE,
    Address,
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
from meshvpn.turn_codec import CHANNEL_HEADER, CHANNEL_MAX, CHANNEL_MIN
from meshvpn.turn_events import (  # noqa: F401 (re-exported: the client's API)
    AllocationLost,
    AllocationReady,
    AllocationState,
    ChannelBound,
    DataReceived,
    Event,
    TurnConfig,
)

PROTOCOL_UDP = 17
"""REQUESTED-TRANSPORT value for UDP relaying."""
PERMISSION_LIFETIME = 300.0
"""Seconds a permission lasts on the server (RFC 8656 §9)."""
CHANNEL_LIFETIME = 600.0
"""Seconds a channel binding lasts on the server (RFC 8656 §12)."""
RELIABLE_TIMEOUT = 39.5
"""Seconds a request over TCP or TLS waits for its response (RFC 5389 §7.2.2, Ti)."""


@dataclass
class _Transaction:
    """One outstanding request and its retransmission schedule (RFC 5389 §7.2.1)."""

    method: StunMethod
    attributes: dict
    data: bytes
    key: Optional[bytes]
    """The long-term key it was signed with; None for the first, unauthenticated Allocate."""
    deadline: float
    interval: float
    sends_left: int
    retries: int = 0
    """Times it was re-sent with new credentials or a fresh nonce (401, 438)."""
    target: object = None
    """The peer IP (CreatePermission), peer address (ChannelBind) or lifetime (Refresh)."""
    sent: float = 0.0
    """When it went (first): a response's round trip."""


@dataclass
class _Peer:
    """A peer address we keep reachable: its channel and when its binding is next due."""

    channel: int
    bound: bool = False
    due: Optional[float] = None
    """When to send ChannelBind; None while one is in flight."""


class TurnClient:
    """One allocation on one TURN server; the caller sends every datagram to that server."""

    def __init__(
        self,
        username: str,
        password: str,
        random_bytes: Callable[[int], bytes],
        config: Optional[TurnConfig] = None,
        reliable: bool = False,
    ) -> None:
        self.config = config if config is not None else TurnConfig()
        self.reliable = reliable
        """Requests go over a stream (TCP, TLS): no retransmissions."""
        self.heard = False
        """Whether the server ever answered a request (over UDP: whether UDP reaches it at all)."""
        self.unanswered = False
        """A request on the ready allocation got no answer at all: the server went dark for us."""
        self.state = AllocationState.IDLE
        self.relayed: Optional[Address] = None
        self.mapped: Optional[Address] = None
        self.expires_at: Optional[float] = None
        self.retry_at: Optional[float] = None
        self.failure: Optional[str] = None
        """Why the last attempt failed, for status."""
        self.peers: dict[Address, _Peer] = {}
        self.peer_of_channel: dict[int, Address] = {}
        """Bound channels: the inbound ChannelData lookup."""
        self.permissions: dict[str, Optional[float]] = {}
        """Peer IP → when its CreatePermission is next due (None while in flight)."""
        self._username = username
        self._password = password
        self._realm: Optional[str] = None
        self._nonce: Optional[str] = None
        self._key: Optional[bytes] = None
        self._fresh: Optional[tuple[str, str]] = None
        """Credentials for the next Allocate (`set_credentials`)."""
        self._random_bytes = random_bytes
        self._refresh_at: Optional[float] = None
        self._failures = 0
        self._next_channel = CHANNEL_MIN
        self._numbers: dict[Address, int] = {}
        """Channel numbers ever given to a peer on this allocation: the server keeps a binding
        for 10 minutes and refuses another number for the same peer, so a peer that returns
        gets its old one."""
        self._transactions: dict[bytes, _Transaction] = {}
        self._datagrams: list[bytes] = []
        self._events: deque[Event] = deque()

    # ---- inputs -----------------------------------------------------------------------

    def allocate(self, now: float, retries: int = 0) -> None:
        """Ask for an allocation (again, after a failure)."""
        self._take_fresh()
        self.state = AllocationState.ALLOCATING
        self.retry_at = None
        attributes = {Attr.REQUESTED_TRANSPORT: PROTOCOL_UDP, Attr.LIFETIME: self.config.lifetime,
                      Attr.SOFTWARE: SOFTWARE}
        self._request(StunMethod.ALLOCATE, attributes, now, retries=retries)

    def allocate_later(self, when: float) -> None:
        """Allocate at `when` rather than now (a backoff the owner chose)."""
        self.state, self.retry_at = AllocationState.FAILED, when

    def refresh(self, now: float) -> None:
        """Refresh the ready allocation now: whether the server still answers is then known."""
        if self.state == AllocationState.READY:
            self._refresh_at = now
            self._service(now)

    def set_credentials(self, username: str, password: str) -> None:
        """Fresh credentials (TURN REST API ones expire): the next Allocate uses them. Requests on an
        allocation made (or being made) keep the username it was made with: the server refuses
        another one with 441 (RFC 8656 §5; coturn does), and it keeps the allocation's."""
        self._fresh = (username, password)
        if self.state not in (AllocationState.ALLOCATING, AllocationState.READY):
            self._take_fresh()

    def set_peers(self, peers: Iterable[Address], now: float) -> None:
        """Keep exactly these peer addresses reachable: a permission per IP, a channel per address."""
        wanted = dict.fromkeys(peers)
        for peer in [p for p in self.peers if p not in wanted]:
            gone = self.peers.pop(peer)
            self.peer_of_channel.pop(gone.channel, None)
        for peer in wanted:
            if peer not in self.peers:
                self.peers[peer] = _Peer(self._channel_for(peer), due=now)
        ips = {peer[0] for peer in wanted}
        self.permissions = {ip: self.permissions.get(ip, now) for ip in ips}
        self._service(now)

    def receive(self, buf: bytes, now: float) -> Optional[float]:
        """A STUN datagram from the server (ChannelData is the caller's, see `peer_of_channel`); when
        the request it answers went, if it answers one (over a stream: a ping's round trip)."""
        try:
            msg = decode(buf)
        except StunError:
            return None
        if msg.cls == StunClass.INDICATION:
            self._indication(msg)
            return None
        tx = self._transactions.get(msg.transaction_id)
        if tx is None or msg.cls not in (StunClass.SUCCESS, StunClass.ERROR):
            return None
        self.heard = True
        if msg.cls == StunClass.SUCCESS and tx.key is not None:
            try:
                decode(buf, key=tx.key)
            except StunError:
                return None
        del self._transactions[msg.transaction_id]
        if msg.cls == StunClass.ERROR:
            self._error(tx, msg, now)
        else:
            self._success(tx, msg, now)
        self._service(now)
        return tx.sent

    def handle_timer(self, now: float) -> None:
        """Retransmit, refresh and retry whatever is due."""
        for txid, tx in list(self._transactions.items()):
            if now < tx.deadline:
                continue
            if tx.sends_left == 0:
                del self._transactions[txid]
                self.unanswered = self.unanswered or self.state == AllocationState.READY
                self._failed(tx, "no response", now)
                continue
            tx.sends_left -= 1
            tx.interval *= 2
            tx.deadline += tx.interval if tx.sends_left else RM * self.config.rto
            self._datagrams.append(tx.data)
        self._service(now)

    def close(self, now: float) -> None:
        """Give the allocation back (a zero-lifetime Refresh, sent once) and stop."""
        if self.state == AllocationState.READY:
            self._request(StunMethod.REFRESH, {Attr.LIFETIME: 0}, now, target=0)
        self.state = AllocationState.CLOSED
        self._transactions.clear()

    # ---- outputs ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == AllocationState.READY

    def channel(self, peer: Address) -> Optional[int]:
        """The bound channel to `peer`, or None."""
        entry = self.peers.get(peer)
        return entry.channel if entry is not None and entry.bound else None

    def send(self, peer: Address, data: bytes) -> bytes:
        """The datagram that carries `data` to `peer`: ChannelData if bound, else a Send indication."""
        channel = self.channel(peer)
        if channel is not None:
            return CHANNEL_HEADER.pack(channel, len(data)) + data
        attributes = {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: data}
        return encode(StunMessage(StunMethod.SEND, StunClass.INDICATION, self._random_bytes(TRANSACTION_ID_SIZE),
                                  attributes))

    def datagrams_to_send(self) -> list[bytes]:
        out, self._datagrams = self._datagrams, []
        return out

    def next_event(self) -> Optional[Event]:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> Optional[float]:
        deadlines = [tx.deadline for tx in self._transactions.values()]
        if self.state == AllocationState.READY:
            deadlines += [self._refresh_at, self.expires_at]
            deadlines += [p.due for p in self.peers.values()]
            deadlines += list(self.permissions.values())
        elif self.state == AllocationState.FAILED:
            deadlines.append(self.retry_at)
        return min((d for d in deadlines if d is not None), default=None)

    # ---- internals --------------------------------------------------------------------

    def _request(self, method: StunMethod, attributes: dict, now: float, target: object = None,
                 retries: int = 0) -> None:
        txid = self._random_bytes(TRANSACTION_ID_SIZE)
        message_attributes = dict(attributes)
        key = self._key
        if key is not None:
            message_attributes[Attr.USERNAME] = self._username
            message_attributes[Attr.REALM] = self._realm
            message_attributes[Attr.NONCE] = self._nonce
        data = encode(StunMessage(method, StunClass.REQUEST, txid, message_attributes), key=key)
        if self.reliable:
            tx = _Transaction(method, attributes, data, key, now + RELIABLE_TIMEOUT, 0.0, 0, retries, target, now)
        else:
            tx = _Transaction(method, attributes, data, key, now + self.config.rto, self.config.rto,
                              self.config.max_retransmits, retries, target, now)
        self._transactions[txid] = tx
        self._datagrams.append(data)

    def _take_fresh(self) -> None:
        if self._fresh is not None:
            (self._username, self._password), self._fresh = self._fresh, None
            if self._realm is not None:
                self._key = long_term_key(self._username, self._realm, self._password)

    def _resend(self, tx: _Transaction, now: float) -> None:
        self._request(tx.method, tx.attributes, now, tx.target, tx.retries + 1)

    def _service(self, now: float) -> None:
        """Send whatever is due on a ready allocation; allocate again when a retry is due."""
        if self.state == AllocationState.FAILED and self.retry_at is not None and now >= self.retry_at:
            self.allocate(now)
        if self.state != AllocationState.READY:
            return
        if self.expires_at is not None and now >= self.expires_at:
            self._lost("allocation expired", now)
            return
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            self._request(StunMethod.REFRESH, {Attr.LIFETIME: self.config.lifetime}, now,
                          target=self.config.lifetime)
        for ip, due in self.permissions.items():
            if due is not None and now >= due:
                self.permissions[ip] = None
                self._request(StunMethod.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: (ip, 0)}, now, target=ip)
        for peer, entry in self.peers.items():
            if entry.due is not None and now >= entry.due:
                entry.due = None
                attributes = {Attr.CHANNEL_NUMBER: entry.channel, Attr.XOR_PEER_ADDRESS: peer}
                self._request(StunMethod.CHANNEL_BIND, attributes, now, target=peer)

    def _success(self, tx: _Transaction, msg: StunMessage, now: float) -> None:
        cfg = self.config
        if tx.method == StunMethod.ALLOCATE:
            relayed = msg.attributes.get(Attr.XOR_RELAYED_ADDRESS)
            if relayed is None or self.state != AllocationState.ALLOCATING:
                self._lost("Allocate response without XOR-RELAYED-ADDRESS", now)
                return
            self.state = AllocationState.READY
            self.relayed, self.mapped = relayed, msg.attributes.get(Attr.XOR_MAPPED_ADDRESS)
            self._failures = 0
            self.failure = None
            self._set_lifetime(msg.attributes.get(Attr.LIFETIME, cfg.lifetime), now)
            self._events.append(AllocationReady(relayed, self.mapped, msg.attributes.get(Attr.LIFETIME, cfg.lifetime)))
        elif tx.method == StunMethod.REFRESH:
            if tx.target == 0:
                if self.state == AllocationState.ALLOCATING:
                    self.allocate(now, tx.retries)
                return
            self._set_lifetime(msg.attributes.get(Attr.LIFETIME, cfg.lifetime), now)
        else:
            permission = tx.method == StunMethod.CREATE_PERMISSION
            entry = self._due_again(tx, now + (cfg.permission_refresh if permission else cfg.channel_refresh))
            if entry is not None and not entry.bound:
                entry.bound = True
                self.peer_of_channel[entry.channel] = tx.target
                self._events.append(ChannelBound(tx.target, entry.channel))

    def _error(self, tx: _Transaction, msg: StunMessage, now: float) -> None:
        error = msg.attributes.get(Attr.ERROR_CODE, ErrorCode(0, "no ERROR-CODE"))
        realm, nonce = msg.attributes.get(Attr.REALM), msg.attributes.get(Attr.NONCE)
        if error.code in (401, 438) and nonce is not None and tx.retries < 2:
            if error.code == 401 and tx.key is not None and tx.retries > 0:
                self._failed(tx, f"server answered {error.code} {error.reason}", now)
                return
            self._realm = realm or self._realm
            self._nonce = nonce
            if self._realm is None:
                self._failed(tx, "401 without REALM", now)
                return
            self._key = long_term_key(self._username, self._realm, self._password)
            self._resend(tx, now)
            return
        if tx.method == StunMethod.ALLOCATE and error.code == 437 and self._key is not None and tx.retries < 3:
            self._request(StunMethod.REFRESH, {Attr.LIFETIME: 0}, now, target=0, retries=tx.retries + 1)
            return
        if tx.method == StunMethod.REFRESH and error.code == 437 and tx.target != 0:
            self._lost("the server no longer knows the allocation (437)", now)
            return
        self._failed(tx, f"server answered {error.code} {error.reason}", now)

    def _failed(self, tx: _Transaction, reason: str, now: float) -> None:
        """A request ended without success: what that means depends on what it was for."""
        cfg = self.config
        if tx.method == StunMethod.ALLOCATE or (tx.method == StunMethod.REFRESH and tx.target == 0):
            if self.state == AllocationState.ALLOCATING:
                self._lost(f"Allocate failed: {reason}", now)
        elif tx.method == StunMethod.REFRESH:
            if self.state == AllocationState.READY:
                self._refresh_at = min(now + cfg.retry_initial, self.expires_at or now)
        else:
            self._due_again(tx, now + cfg.retry_initial)

    def _due_again(self, tx: _Transaction, when: float) -> Optional[_Peer]:
        """Schedule the next CreatePermission or ChannelBind for `tx`'s target; a ChannelBind's peer."""
        if tx.method == StunMethod.CREATE_PERMISSION:
            if tx.target in self.permissions:
                self.permissions[tx.target] = when
            return None
        entry = self.peers.get(tx.target)
        if entry is not None:
            entry.due = when
        return entry

    def _lost(self, reason: str, now: float) -> None:
        cfg = self.config
        was_ready = self.state == AllocationState.READY
        self.state = AllocationState.FAILED
        self.failure = reason
        self.relayed = self.mapped = self.expires_at = self._refresh_at = None
        self.retry_at = now + doubling(cfg.retry_initial, cfg.retry_max, self._failures)
        self._failures += 1
        self._transactions.clear()
        self.peer_of_channel.clear()
        for entry in self.peers.values():
            entry.bound, entry.due = False, now
        self.permissions = dict.fromkeys(self.permissions, now)
        if was_ready or self._failures == 1:
            self._events.append(AllocationLost(reason))

    def _set_lifetime(self, lifetime: int, now: float) -> None:
        self.expires_at = now + lifetime
        self._refresh_at = now + max(lifetime - self.config.refresh_margin, lifetime / 2)

    def _indication(self, msg: StunMessage) -> None:
        if msg.method != StunMethod.DATA:
            return
        peer, data = msg.attributes.get(Attr.XOR_PEER_ADDRESS), msg.attributes.get(Attr.DATA)
        if peer is not None and data is not None and peer[0] in self.permissions:
            self._events.append(DataReceived(peer, data))

    def _channel_for(self, peer: Address) -> int:
        number = self._numbers.get(peer)
        if number is None:
            number = self._numbers[peer] = self._next_channel
            self._next_channel = number + 1 if number < CHANNEL_MAX else CHANNEL_MIN
        return number
