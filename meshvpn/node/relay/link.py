"""The node's link to one relay, without I/O: hellos, their acks, UDP first and TCP when UDP fails.

A node keeps a link to every relay the coordination server announced; the one with the lowest
round-trip time is its *home* relay, which it reports to the server, and peers reach it there.

Rules:

* With a token (``set_token``) the link sends a RELAY_HELLO every `hello_interval` (every
  `retry_interval` while it is not ready). Each ack
  (the relay echoes the hello's timestamp) proves the relay holds its key, refreshes our
  registration and measures the round-trip time (RFC 6298 smoothing).
* The link is *ready* while an ack arrived within `down_after` (2 s): the relay's health, tracked
  per relay whether or not it carries traffic, so a dead relay stops being home, and stops
  carrying any pair, within 2 s of its last ack. A hello not acked within `late_after` (or two
  RTTs, if longer) is followed by another at once, and so on until an ack: a lost hello or ack
  costs one more hello, not the link (four tries within `down_after` at the defaults).
  Readiness changes are events.
* UDP first, a stream beside it soon after (Happy Eyeballs): when the link is not ready and its
  first UDP hello since the last ack got none within `stream_after`, the link asks the shell for
  a stream too (`stream.wanted`), UDP hellos going on; the stream races the relay's addresses over
  plain TCP and over TLS (`meshvpn.node.streamdial`). When it comes up before any UDP ack, the
  link moves its hellos there; the first `udp_attempts` UDP hellos still go out at their interval
  beside it, then one every `udp_retry`. An ack over UDP, before or after, moves the link (back)
  to UDP and the stream is closed: UDP is preferred whenever it works.
* A relay named with AAAA and A records has two addresses (`meshvpn.node.relay.addresses`):
  hellos race them, IPv6 first and IPv4 `eyeballs.STAGGER` later while no ack came; the first
  to ack is the relay's address (`endpoint`) until the link stops being ready, when the other
  family is tried at once, for `stream_after` before the stream; the stream's connection
  attempts race them in the same order (``OpenRelayStream.targets``).
* The stream is plain TCP or TLS, raced when the relay has a TLS listener (``RelayInfo.tls_port``);
  a lost stream is reconnected with a jittered backoff, at once when the relay reset one that had
  lasted (`meshvpn.node.streamdial`). Networks that let only
  port 443, or only TLS, through (``meshvpn.tlsenvelope``) get a path this way within a second.
* When the host's network comes back under the stream (`network_back`), the link checks that it
  carries (`meshvpn.node.tcpresume`): a stream whose hellos wait behind TCP's backed-off
  retransmission timer is replaced at once by a new race, else a hello goes over it at once and
  the stream is replaced if its ack does not come within the check's wait (every ack over the
  stream is a round trip the wait learns from). A stream still connecting then is raced again at
  once, and one waiting out its backoff tries at once (`StreamDial.network_back`).
* `check` (traffic through the relay went unanswered): a hello goes out at once, and without
  an ack within `check_timeout` (or three RTTs, if longer) the link is not ready, so a dead
  relay is left within a second instead of `down_after`.
* When our mapping may have moved (a relay path went silent, a direct path died, the network
  changed: ``check(moved=True)``), a peer relay (a member relaying, ``RelayInfo.peer``) is left
  at once and is ready again with its first ack: it sits behind a NAT that lets in only the
  addresses its node sent to, so our new mapping is answered only after a punch, while a server
  relay answers a hello from it at once. Its pairs take a server relay without waiting for
  `check_timeout` and come back when it answers (`docs/paths.md`). Not when only the peer's
  traffic moved to another relay: both ends would then chase each other between relays.
* Timestamps are the wall clock in milliseconds, strictly increasing, because the relay keeps
  the newest timestamp per node to refuse replays.
* A relay asked to make or move a registration over UDP (our first hello, or the first from a
  new address), or under load, answers a UDP hello with a RELAY_COOKIE instead (``meshvpn.cookie``). The link takes it only
  if it answers one of its own recent UDP hellos (by the hello's nonce), stamps every later UDP
  hello with the cookie's mac2 while the cookie is young (`cookie.COOKIE_LIFETIME`) and sends
  the stamped hello at once, not after the next retry. At once only when the new cookie is not
  the one the answered hello already carried, so a relay that keeps refusing is not a loop.

Inputs take ``now`` (monotonic seconds); ``wall_offset`` turns it into Unix time.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from meshvpn import wire
from meshvpn.backoff import uniform
from meshvpn.cookie import CookieJar
from meshvpn.control.messages import RelayInfo
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.relay.addresses import RelayAddresses
from meshvpn.node.streamdial import DialConfig, StreamDial, StreamTarget
from meshvpn.wire import Endpoint, MessageType


_KEPT = 16
"""Recent hellos remembered (timestamps for acks, UDP nonces for cookies)."""


class Transport(enum.StrEnum):
    """How messages reach the relay (a TCP stream may be inside TLS: `StreamDial.tls`)."""

    UDP = "udp"
    TCP = "tcp"


@dataclass
class RelayLinkConfig:
    """Timing of relay hellos and of the TCP fallback; every default is the documented one."""

    hello_interval: float = 1.0
    """Seconds between answered hellos on a ready link: they keep the registration and the NAT
    mapping fresh, find a restarted relay within this time, and leave `down_after` room for
    the retries of a late one."""
    retry_interval: float = 0.5
    """Seconds between hellos while the link is not ready."""
    stream_after: float = 0.5
    """Seconds a not-ready link's UDP hellos go unanswered before a stream is raced beside them:
    above most round trips, so a working UDP path rarely opens one, and short enough that a
    network that lets only TCP 443 out has its relay within a second."""
    down_after: float = 2.0
    """Seconds without an ack after which the link is not ready: a dead relay is left within this
    time of its last ack even when nothing is relayed through it (issue 12's 2 s)."""
    late_after: float = 0.25
    """Seconds a hello waits for its ack (at least two RTTs) before the next one goes: the
    retries that keep a lost hello or ack from costing the link within `down_after`."""
    udp_attempts: int = 3
    """UDP hellos without an ack that go out at the hello interval beside a stream that came up,
    before UDP is tried only every `udp_retry`."""
    udp_retry: float = 30.0
    """Seconds between UDP hellos while on TCP, to move back to UDP when it works again."""
    tcp_backoff_initial: float = 0.5
    """First wait before reconnecting a lost TCP connection; doubles per failure."""
    tcp_backoff_max: float = 10.0
    """Longest wait between TCP reconnection attempts."""
    check_timeout: float = 0.5
    """Seconds a `check` hello waits for its ack (at least three RTTs) before the link is not ready."""


@dataclass(frozen=True)
class SendUdp:
    """Send `data` to the relay at `endpoint` (one of its addresses) over UDP."""

    data: bytes
    endpoint: Endpoint


@dataclass(frozen=True)
class SendTcp:
    """Send `data` as one frame on the relay's TCP connection."""

    data: bytes


@dataclass(frozen=True)
class ReadyChanged:
    """The link became usable, or stopped being usable."""

    ready: bool


Action = SendUdp | SendTcp | ReadyChanged


class RelayLink:
    """One relay as the node sees it; the shell moves bytes and follows `stream`."""

    def __init__(
        self,
        info: RelayInfo,
        node_private: bytes,
        node_public: bytes,
        random_bytes: Callable[[int], bytes],
        wall_offset: float,
        config: Optional[RelayLinkConfig] = None,
        addresses: Sequence[Endpoint] = (),
    ) -> None:
        self.info = info
        self.addresses = RelayAddresses(addresses or (endpoint_of(info),))
        """The relay's addresses (a name's IPv6 and IPv4 ones) and the one it is reached at."""
        self.config = config if config is not None else RelayLinkConfig()
        self.transport = Transport.UDP
        self.ready = False
        self.rtt: Optional[float] = None
        """Smoothed round-trip time of the acks, seconds."""
        self.cookies = 0
        """Cookies taken: how often the relay asked for proof of our address (it is under load)."""
        cfg = self.config
        self.stream = StreamDial(info.tls_port, DialConfig(cfg.tcp_backoff_initial, cfg.tcp_backoff_max),
                                 lambda: uniform(random_bytes))
        """The TCP or TLS stream the shell should keep open while UDP gets no answer."""
        self.stream_endpoint: Optional[Endpoint] = None
        """The address (and port) the stream connected to, while it is up: for status."""
        self._public = node_public
        self._box_key = wire.box_key(node_private, info.public_key)
        self._random_bytes = random_bytes
        self._wall_offset = wall_offset
        self._token: Optional[bytes] = None
        self._token_expires = 0.0
        self._last_ts = 0
        self._sent: dict[int, float] = {}
        self._cookies = CookieJar(info.public_key)
        self._udp_nonces: dict[bytes, Optional[bytes]] = {}
        """Nonces of recent UDP hellos, each with the cookie it was stamped with: a cookie must answer one."""
        self._unanswered_udp = 0
        self._udp_silent_since: Optional[float] = None
        """When the first UDP hello since the last UDP ack went out."""
        self._last_ack: Optional[float] = None
        self._next_hello: Optional[float] = None
        self._next_udp_retry = 0.0
        self._check_until: Optional[float] = None
        """While a `check` is open: when the link is not ready without an ack."""
        self._actions: list[Action] = []

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def endpoint(self) -> Endpoint:
        """Where the relay is reached now (UDP, and the stream with the stream's port)."""
        return self.addresses.endpoint

    @property
    def reached_at(self) -> Endpoint:
        """The relay's address in use, at its UDP/TCP port: the one the stream connected to while
        on a stream, else `endpoint` (for status, and `meshvpn netcheck`'s probes)."""
        if self.transport is Transport.TCP and self.stream_endpoint is not None:
            return self.stream_endpoint._replace(port=self.info.port)
        return self.endpoint

    @property
    def transport_name(self) -> str:
        """``udp``, ``tcp`` or ``tls``, for status."""
        return self.stream.kind if self.transport is Transport.TCP else self.transport.value

    # ---- inputs ---------------------------------------------------------------------

    def set_token(self, token: bytes, expires: float, now: float) -> None:
        """A fresh relay token from the coordination server (``expires`` is Unix time)."""
        first = self._token is None
        self._token, self._token_expires = token, expires
        if first:
            self._hello(now)

    def receive(self, data: bytes, via: Transport, now: float, src: Optional[Endpoint] = None) -> bool:
        """A message from the relay (over UDP from its address `src`, by default `endpoint`) that is
        not a RELAY envelope; True if it was a valid ack or cookie."""
        src = src if src is not None else self.endpoint
        if data[1:2] == bytes((MessageType.RELAY_COOKIE,)):
            return via is Transport.UDP and self._cookie(data, src, now)
        try:
            sealed = wire.decode_sealed(data)
            if sealed.kind != MessageType.RELAY_HELLO_ACK or sealed.sender_public != self.info.public_key:
                return False
            ack = wire.open_sealed(sealed, self._box_key)
        except RemoteProtocolError:
            return False
        sent = self._sent.pop(ack.timestamp_ms, None)
        if sent is None:
            return False
        rtt = now - sent
        self._next_hello = sent + self.config.hello_interval
        self.rtt = rtt if self.rtt is None else self.rtt + (rtt - self.rtt) / 8
        self._last_ack = now
        self._check_until = None
        if via is Transport.TCP:
            self.stream.resume.answered(now, sent)
        if via is Transport.UDP:
            self.addresses.acked(src)
            self._unanswered_udp, self._udp_silent_since = 0, None
            self.transport = Transport.UDP
            self.stream.want(False)
        self._set_ready(True, now)
        return True

    def tcp_up(self, now: float, target: Optional[StreamTarget] = None) -> None:
        """The stream (its channel) is established, to `target`: unless UDP already works, the
        hellos move there, the first at once."""
        self.stream.up(now, target is not None and target.tls)
        self.stream_endpoint = None if target is None else target.endpoint
        if not (self.ready and self.transport is Transport.UDP):
            if self.transport is Transport.UDP:
                self.transport = Transport.TCP
                self._next_udp_retry = max(self._next_udp_retry, now + self.config.udp_retry)
            self._hello(now)

    def tcp_down(self, now: float, reset: bool = False) -> None:
        """The stream failed or closed (the relay `reset` it); `stream` says when and how to reconnect."""
        self.stream.down(now, reset)
        self.stream_endpoint = None
        if self.transport is Transport.TCP:
            self._set_ready(False, now)

    def network_back(self, now: float, retransmitting: Optional[bool]) -> None:
        """The host's network is usable again (`NetworkChanged.resumed`): the stream, if the link is on it
        (of which the kernel says whether it waits for a backed-off retransmission; None: it does
        not say), checks that it carries, and one still connecting is raced again (the module's rules)."""
        if self.stream.connected and self.transport is not Transport.TCP:
            return  # UDP answers: the stream is on its way out
        if self.stream.network_back(now, retransmitting):
            self._hello(now)

    def hello_now(self, now: float) -> None:
        """Send the next hello now rather than at its time (the node's network changed); over UDP too
        on a link that fell back to TCP, since the new network may let UDP through. A ready link
        checks itself (`check`): on a new network that lets no UDP out, it is left, and a stream
        raced, within a second rather than after `down_after`."""
        self._next_udp_retry = now
        if self.ready:
            self.check(now, moved=True)
        elif self._next_hello is not None:
            self._hello(now)

    def check(self, now: float, moved: bool = False) -> None:
        """Traffic through this relay went unanswered: say hello now; no ack in time means not ready.
        When our mapping may have `moved`, a peer relay is left at once until it answers (the
        module's rules say why)."""
        if moved and self.info.peer and self.ready:
            self._set_ready(False, now)
            self._hello(now)
        elif self.ready and self._check_until is None:
            self._check_until = now + max(self.config.check_timeout, 3 * (self.rtt or 0.0))
            self._hello(now)

    def handle_timer(self, now: float) -> None:
        """Send the hello that is due and notice a link that went quiet."""
        self.stream.handle_timer(now)
        if self._check_until is not None and now >= self._check_until:
            self._check_until = None
            self._set_ready(False, now)
        if self.ready and (self._last_ack is None or now >= self._last_ack + self.config.down_after):
            self._set_ready(False, now)
        if self._next_hello is not None and now >= self._next_hello:
            self._hello(now)
        self._want_stream(now)
        while self._token_valid(now) and (endpoint := self.addresses.due(now)) is not None:
            self._actions.append(SendUdp(self._udp_hello(now), endpoint))

    # ---- outputs --------------------------------------------------------------------

    def get_timer(self) -> Optional[float]:
        deadlines = [self._next_hello, self.stream.deadline(), self._check_until, self.addresses.timer(),
                     self._stream_at()]
        if self.ready and self._last_ack is not None:
            deadlines.append(self._last_ack + self.config.down_after)
        return min((d for d in deadlines if d is not None), default=None)

    def next_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    # ---- internals ------------------------------------------------------------------

    def _hello(self, now: float) -> None:
        cfg = self.config
        late = max(cfg.late_after, 2 * (self.rtt or 0.0))
        self._next_hello = now + (late if self.ready else cfg.retry_interval)  # an ack puts it at `hello_interval`
        if not self._token_valid(now):
            return
        on_stream = self.transport is Transport.TCP
        if not on_stream or self._unanswered_udp < cfg.udp_attempts or now >= self._next_udp_retry:
            if on_stream and self._unanswered_udp >= cfg.udp_attempts:
                self._next_udp_retry = now + cfg.udp_retry
            self._unanswered_udp += 1
            if self._udp_silent_since is None:
                self._udp_silent_since = now
            self._actions.append(SendUdp(self._udp_hello(now), self.addresses.round(now)))
        self._want_stream(now)
        if on_stream and self.stream.connected:
            self._actions.append(SendTcp(self._sealed_hello(now)))

    def _stream_at(self) -> Optional[float]:
        """When the link wants a stream beside UDP, if UDP stays silent until then."""
        if self.info.peer:  # a peer relay has no stream
            return None
        if self.ready or self.stream.wanted or self._udp_silent_since is None:
            return None
        return self._udp_silent_since + self.config.stream_after

    def _want_stream(self, now: float) -> None:
        at = self._stream_at()
        if at is not None and now >= at:
            self.stream.want()

    def _token_valid(self, now: float) -> bool:
        return self._token is not None and self._token_expires > now + self._wall_offset

    def _cookie(self, data: bytes, src: Endpoint, now: float) -> bool:
        """A RELAY_COOKIE for one of our UDP hellos: keep the cookie; say hello again at once if it is news."""
        answered = self._cookies.consume(data, self._udp_nonces, now)
        if answered is None:
            return False
        stamped_with = self._udp_nonces.pop(answered)
        self.cookies += 1
        if self._token_valid(now) and self._cookies.current(now) != stamped_with:
            self._actions.append(SendUdp(self._udp_hello(now), src))
        return True

    def _udp_hello(self, now: float) -> bytes:
        """A hello for UDP, stamped with our cookie if we hold a young one; its nonce is kept."""
        nonce = self._random_bytes(wire.BOX_NONCE_LEN)
        self._udp_nonces[nonce] = self._cookies.current(now)
        while len(self._udp_nonces) > _KEPT:
            del self._udp_nonces[next(iter(self._udp_nonces))]
        return self._cookies.stamp(self._sealed_hello(now, nonce), now)

    def _sealed_hello(self, now: float, nonce: Optional[bytes] = None) -> bytes:
        ts = max(int((now + self._wall_offset) * 1000), self._last_ts + 1)
        self._last_ts = ts
        self._sent[ts] = now
        while len(self._sent) > _KEPT:
            del self._sent[next(iter(self._sent))]
        hello = wire.RelayHello(ts, self._token)
        nonce = nonce if nonce is not None else self._random_bytes(wire.BOX_NONCE_LEN)
        return wire.seal(MessageType.RELAY_HELLO, self._public, nonce, self._box_key, hello)

    def _set_ready(self, ready: bool, now: float) -> None:
        if ready != self.ready:
            self.ready = ready
            if not ready and self.addresses.failed():
                self._next_hello = now  # the other family at once, not after a hello interval
                self._udp_silent_since = None  # and its own `stream_after` before a stream
            self._actions.append(ReadyChanged(ready))


def endpoint_of(info: RelayInfo) -> Endpoint:
    """Where the relay `info` announces (its host an IP address) listens, as the node sends to it."""
    return Endpoint(ipaddress.ip_address(info.host).compressed, info.port)
