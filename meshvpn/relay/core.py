"""The relay's forwarding core, without I/O: who is registered where, and what to forward.

A relay joins nodes that cannot reach each other directly. It never holds a session key:
it moves opaque inner messages from one registered node to another, rewriting the relay
envelope's key from "destination" to "source" (``wire.readdress_relay``).

Rules:

* A node registers with a RELAY_HELLO: a relay token from the coordination server
  (``meshvpn.relaytoken``), in clear, then a box from its static key to ours (proof it holds
  that key) carrying a timestamp. The cheap checks come first: the token (symmetric, naming
  the hello's key) before any Diffie-Hellman, and the box key of a node is computed once and
  cached (`BOX_KEY_CACHE`). The timestamp must lie within `HELLO_MAX_SKEW` of our clock and
  be newer than any earlier hello of that node, so a captured hello is good at most once; the
  shell keeps those floors (`latest_hello`) in its state directory, so also across restarts.
  The answer is a RELAY_HELLO_ACK echoing the timestamp.
* A registration binds the node key to one link: the UDP endpoint the hello came from, or
  the TCP stream it came on (whose channel must have authenticated the same key). A UDP hello
  that would make a registration or move one (a new endpoint, or one another node holds) needs
  proof that it came from there: a valid cookie MAC (``meshvpn.cookie``), checked before any
  Diffie-Hellman; without one the relay answers with a RELAY_COOKIE and changes nothing. A box
  and a token prove the key, not the address, and the mac2 is outside the box, so without this a
  member could point its own registration, and its peers' relayed traffic, at any address.
  Hellos that refresh a registration from its own endpoint need no proof, except under load
  (more Diffie-Hellmans than `DH_RATE` allows) when one would cost a Diffie-Hellman. A registration
  ends when the token expires, when nothing was heard from the node for `IDLE_TIMEOUT`
  (its stream, if any, is closed then), or when its stream closes.
* A RELAY envelope from a registered link goes to the registered link of its destination
  key, if both are of one network (the tokens say which), neither token has run out (at once,
  not only at the next sweep) and the sender's token bucket (``packets_per_second``, ``burst``)
  allows. A stream queues at most ``queue_bytes``; the
  shell pulls frames while its socket can take them.
* Messages come in batches (`receive_many`: a GRO receive, the frames of one TCP read), and
  every message gets every check above, in that order. What a batch saves is the lookups: a
  message whose first 40 bytes (header, destination key, inner header) equal those of the
  message forwarded just before from the same batch goes to the same destination after only
  its own bucket check. Datagrams for one UDP endpoint leave in runs (`runs_to_send`): equal
  sizes back to back, the last may be shorter, which the shell sends with one GSO ``sendmsg``.
* A STUN request on UDP is answered (`relay.stunanswer`); anything else is dropped and counted in `drops`.

Time is Unix seconds (the shell passes ``time.time()``): tokens and hellos carry wall-clock
times. Randomness (hello-ack nonces) comes from the injected ``random_bytes``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Optional, Union

from meshvpn import wire
from meshvpn.config import RelayLimits
from meshvpn.cookie import CookieChecker
from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import public_key
from meshvpn.ratelimit import TokenBucket
from meshvpn.relay.registry import BucketFactory, Registration, Registry
from meshvpn.relay.stunanswer import StunAnswerer
from meshvpn.relaytoken import TokenError, TokenGrant, TokenVerifier
from meshvpn.wire import Endpoint, MessageType

HELLO_MAX_SKEW = 600.0
"""Seconds a hello's timestamp may differ from our clock (the token lifetime: clocks must agree that well anyway)."""
IDLE_TIMEOUT = 30.0
"""Seconds without a message from a registered node before its registration is dropped."""
STREAM_HELLO_TIMEOUT = 10.0
"""Seconds a TCP stream may stay open without a valid hello."""
SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired registrations."""
BOX_KEY_CACHE = 16384
"""Nodes whose box key (one X25519 each) is kept: a node's hellos cost one Diffie-Hellman, not one each."""
DH_RATE = 1000.0
"""Diffie-Hellmans a second (about 4 % of a core) before the relay is under load and asks for cookies."""
DH_BURST = 2000.0
"""Diffie-Hellmans at once: every node of a large relay saying hello after a restart."""


@dataclass(frozen=True, slots=True)
class Stream:
    """A TCP connection of the shell, named by the shell's id."""

    conn_id: Hashable


Link = Union[Endpoint, Stream]
Bytes = Union[bytes, bytearray, memoryview]

_SAME_ROUTE = wire.RELAY_PREFIX_LEN + wire.HEADER_LEN
"""Bytes of an envelope that decide where it goes and whether it is well formed: equal ones, equal fate."""


class Run:
    """Datagrams for one UDP endpoint, back to back: each `size` bytes, the last may be shorter."""

    __slots__ = ("dst", "data", "size", "source")

    def __init__(self, dst: Endpoint, data: bytearray, size: int, source: Optional[Link]) -> None:
        self.dst = dst
        self.data = data
        self.size = size
        self.source = source
        """The link the forwarded datagrams came from (None for the relay's own): one run, one source."""

    def datagrams(self) -> list[bytes]:
        """The run cut into its datagrams."""
        data, size = bytes(self.data), self.size
        return [data[first : first + size] for first in range(0, len(data), size)]


@dataclass(eq=False)
class _StreamState:
    """What the core keeps per TCP stream: the channel's key and frames awaiting the socket."""

    channel_key: bytes
    opened: float
    queue: deque = field(default_factory=deque)
    queued_bytes: int = 0
    registered: bool = False


@dataclass
class RelayStats:
    """Counters for the status line and tests."""

    forwarded: int = 0
    forwarded_bytes: int = 0
    hellos: int = 0
    runs: int = 0
    """Runs the forwarded UDP datagrams left in (`Run`): forwarded per run is the batching."""


class RelayCore:
    """Sans-IO relay; see the module docstring for its rules."""

    def __init__(
        self,
        private_key: bytes,
        coord_public: bytes,
        limits: RelayLimits,
        random_bytes: Callable[[int], bytes],
        now: float,
        bucket: BucketFactory = TokenBucket,
    ) -> None:
        """`bucket` makes each registration's token bucket (see `meshvpn.relay.registry`)."""
        self.public_key = public_key(private_key)
        self.limits = limits
        self.drops: Counter = Counter()
        """Dropped messages by reason."""
        self.stats = RelayStats()
        self._private = private_key
        self._tokens = TokenVerifier(private_key, coord_public)
        self._random_bytes = random_bytes
        self.registry = Registry(bucket)
        self._by_key, self._by_link = self.registry.by_key, self.registry.by_link
        self._box_keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._cookies = CookieChecker(self.public_key, random_bytes, now)
        self._dh_budget = TokenBucket(DH_RATE, DH_BURST, now)
        self.stun = StunAnswerer(self.drops, now)
        self.latest_hello: dict[bytes, int] = {}
        """Per node key, the timestamp (Unix ms) of the newest hello taken: older ones are replays.
        Pruned in place once out of `HELLO_MAX_SKEW` (the shell's journal reads this very dict)."""
        self._streams: dict[Stream, _StreamState] = {}
        self._runs: list[Run] = []
        self._to_close: list[Stream] = []
        self._to_flush: dict[Stream, None] = {}
        self._next_sweep = now + SWEEP_INTERVAL

    # ---- inputs ---------------------------------------------------------------------

    def restore_hellos(self, floors: dict[bytes, int]) -> None:
        """Hello timestamps taken before a restart (from the state directory): none at or below is taken again."""
        for node, timestamp_ms in floors.items():
            if timestamp_ms > self.latest_hello.get(node, -1):
                self.latest_hello[node] = timestamp_ms

    def set_limits(self, limits: RelayLimits) -> None:
        """New forwarding limits (a reload); buckets keep their level, capped at the new burst."""
        self.limits = limits
        self.registry.set_limits(limits)

    def stream_opened(self, stream: Stream, channel_key: bytes, now: float) -> None:
        """A TCP stream finished its channel handshake as `channel_key`."""
        self._streams[stream] = _StreamState(channel_key, now)

    def stream_closed(self, stream: Stream) -> None:
        """The TCP stream is gone; its node, if registered on it, is no longer reachable."""
        if self._streams.pop(stream, None) is not None:
            reg = self._by_link.get(stream)
            if reg is not None:
                self._unregister(reg)

    def receive(self, data: Bytes, link: Link, now: float) -> None:
        """One message from a UDP endpoint or a TCP stream; anything wrong is dropped and counted."""
        self.receive_many((data,), link, now)

    def receive_many(self, messages: Iterable[Bytes], link: Link, now: float) -> None:
        """Messages from one link, in order, each checked as `receive` would; none is kept after the call.

        An envelope that passed every check starts a streak; the envelopes after it whose first
        `_SAME_ROUTE` bytes are equal join it and cost only their token each (`_relay_streak`).
        """
        src = self._by_link.get(link)
        streak: list[Bytes] = []
        route = b""
        dst: Optional[Registration] = None
        for data in messages:
            if streak and data[:_SAME_ROUTE] == route:
                streak.append(data)
                continue
            if streak:
                self._relay_streak(streak, src, dst, now)
                streak = []
            try:
                kind = wire.message_type(data)
            except RemoteProtocolError:
                if not self.stun.answer(data, link, now, self._send_datagram):
                    self.drops["malformed"] += 1
                continue
            if kind == MessageType.RELAY:
                dst = self._check(data, src, now)
                if dst is not None:
                    streak, route = [data], bytes(data[:_SAME_ROUTE])
            elif kind == MessageType.RELAY_HELLO:
                self._hello(bytes(data), link, now)
                src = self._by_link.get(link)
            else:
                self.drops["not for a relay"] += 1
        if streak:
            self._relay_streak(streak, src, dst, now)

    def receive_gro(self, data: Bytes, size: int, link: Link, now: float) -> None:
        """A GRO receive from a UDP endpoint: datagrams of `size` bytes back to back, the last may be shorter."""
        view = memoryview(data)
        self.receive_many((view[first : first + size] for first in range(0, max(len(view), 1), size)), link, now)

    def handle_timer(self, now: float) -> None:
        """Drop expired or idle registrations, close streams that never said hello."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        for reg in [r for r in self._by_key.values() if r.expires <= now or r.last_heard + IDLE_TIMEOUT <= now]:
            self.drops["registration expired"] += 1
            self._unregister(reg)
            if isinstance(reg.link, Stream) and reg.link in self._streams:
                self._to_close.append(reg.link)
        for stream, state in self._streams.items():
            if not state.registered and state.opened + STREAM_HELLO_TIMEOUT <= now:
                self._to_close.append(stream)
        horizon = (now - HELLO_MAX_SKEW) * 1000
        for node in [k for k, ts in self.latest_hello.items() if ts < horizon]:
            del self.latest_hello[node]

    # ---- outputs --------------------------------------------------------------------

    def get_timer(self) -> float:
        """When `handle_timer` is next due."""
        return self._next_sweep

    def runs_to_send(self) -> list[Run]:
        """UDP datagrams to send, in order, in runs (one GSO send each); each is returned once."""
        out, self._runs = self._runs, []
        return out

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        """`runs_to_send` cut into single datagrams."""
        return [(run.dst, datagram) for run in self.runs_to_send() for datagram in run.datagrams()]

    def streams_to_flush(self) -> list[Stream]:
        """Streams that got frames since the last call (each once); see `pull_stream`."""
        out = list(self._to_flush)
        self._to_flush.clear()
        return out

    def pull_stream(self, stream: Stream) -> list[bytes]:
        """Take every frame queued for `stream`.

        The shell calls it for each stream of `streams_to_flush` whose socket is not paused, and
        again when a paused socket resumes; frames left waiting count towards ``queue_bytes``.
        """
        state = self._streams.get(stream)
        if state is None or not state.queue:
            return []
        frames = list(state.queue)
        state.queue.clear()
        state.queued_bytes = 0
        return frames

    def streams_to_close(self) -> list[Stream]:
        """Streams the shell should close (bad hello, or none in time); each returned once."""
        out, self._to_close = self._to_close, []
        for stream in out:
            self.stream_closed(stream)
        return out

    def status(self) -> dict:
        """Registrations and counters, for the log and the service status line."""
        streams = sum(1 for reg in self._by_key.values() if isinstance(reg.link, Stream))
        return {
            "nodes": len(self._by_key),
            "nodes_tcp": streams,
            "forwarded": self.stats.forwarded,
            "forwarded_bytes": self.stats.forwarded_bytes,
            "runs": self.stats.runs,
            "drops": dict(self.drops),
        }

    def serves(self, link: Link) -> bool:
        """Whether a node is registered on `link` (what it sends there may be for forwarding)."""
        return link in self._by_link

    def registered_link(self, node_key: bytes) -> Optional[Link]:
        """Where `node_key` is registered, if it is."""
        reg = self._by_key.get(node_key)
        return None if reg is None else reg.link

    # ---- forwarding -----------------------------------------------------------------

    def _check(self, data: Bytes, src: Optional[Registration], now: float) -> Optional[Registration]:
        """Every check of a RELAY envelope from `src`, its token spent: where it may go, if anywhere."""
        if src is None:
            self.drops["sender not registered"] += 1
            return None
        if src.expires <= now:
            self.drops["sender's token expired"] += 1
            return None
        src.last_heard = now
        if not src.bucket.take(now):
            self.drops["rate limited"] += 1
            return None
        try:
            dst_key = wire.decode_relay(data).node_key
        except RemoteProtocolError:
            self.drops["malformed"] += 1
            return None
        dst = self._by_key.get(dst_key)
        if dst is None:
            self.drops["destination not registered"] += 1
            return None
        if dst.expires <= now:
            self.drops["destination's token expired"] += 1
            return None
        if dst.network != src.network:
            self.drops["destination in another network"] += 1
            return None
        return dst

    def _relay_streak(self, streak: list[Bytes], src: Registration, dst: Registration, now: float) -> None:
        """Forward `streak` readdressed to its source: the first has passed `_check`, the rest only need a token.

        The rest start alike with the first (header, destination, inner header), so its checks are
        theirs; tokens are spent in order, and once the bucket is empty it stays so at this `now`.
        """
        allowed = 1 + src.bucket.take_many(len(streak) - 1, now)
        if allowed < len(streak):
            self.drops["rate limited"] += len(streak) - allowed
            del streak[allowed:]
        self.stats.forwarded += allowed
        self.stats.forwarded_bytes += sum(map(len, streak))
        link = dst.link
        if isinstance(link, Stream):
            for data in streak:
                self._send(link, wire.readdress_relay(data, src.key))
            return
        head, send, source = wire.relay_prefix(src.key), self._send_datagram, src.link
        for data in streak:
            send(link, head, data[wire.RELAY_PREFIX_LEN :], source)

    def _send(self, link: Link, message: bytes) -> None:
        if not isinstance(link, Stream):
            self._send_datagram(link, message)
            return
        state = self._streams[link]
        if state.queued_bytes + len(message) > self.limits.queue_bytes:
            self.drops["stream queue full"] += 1
            return
        state.queue.append(message)
        state.queued_bytes += len(message)
        self._to_flush[link] = None

    def _send_datagram(self, dst: Endpoint, head: Bytes, body: Bytes = b"", source: Optional[Link] = None) -> None:
        """Append `head` + `body` to the last run if it has their source and `dst`, is full, and is no shorter."""
        runs = self._runs
        last = runs[-1] if runs else None
        size = len(head) + len(body)
        if (last is None or last.dst != dst or last.source != source or size > last.size
                or len(last.data) % last.size):
            last = Run(dst, bytearray(), size, source)
            runs.append(last)
            self.stats.runs += source is not None
        last.data += head
        last.data += body

    # ---- registration ---------------------------------------------------------------

    def _hello(self, data: bytes, link: Link, now: float) -> None:
        """Cheapest checks first: layout, token, then (cached) box key, box, freshness, address."""
        try:
            sealed = wire.decode_sealed(data)
            node = sealed.sender_public
            grant = self._tokens.verify(sealed.token, node, now)
        except TokenError as exc:
            self._refuse(link, f"token {exc.reason}")
            return
        except RemoteProtocolError:
            self._refuse(link, "bad hello")
            return
        stream = self._streams.get(link) if isinstance(link, Stream) else None
        if isinstance(link, Stream) and (stream is None or stream.channel_key != node):
            self._refuse(link, "hello from another key than the stream's")
            return
        key = self._box_keys.get(node)
        why = None if stream is not None else self._proof_needed(node, link, key is None, now)
        if why is not None and not self._proven(data, sealed, link, now, why):
            return
        try:
            key = key if key is not None else self._new_box_key(node)
            hello = wire.open_sealed(sealed, key)
        except RemoteProtocolError:
            self._refuse(link, "bad hello")
            return
        if abs(hello.timestamp_ms / 1000 - now) > HELLO_MAX_SKEW:
            self._refuse(link, "hello timestamp out of range")
            return
        if hello.timestamp_ms <= self.latest_hello.get(node, -1):
            self._refuse(link, "replayed hello")
            return
        self._accept(node, link, key, grant, hello.timestamp_ms, now)

    def _accept(self, node: bytes, link: Link, key: bytes, grant: TokenGrant, timestamp_ms: int, now: float) -> None:
        self.latest_hello[node] = timestamp_ms
        self.stats.hellos += 1
        self._register(node, link, grant, now)
        stream = self._streams.get(link) if isinstance(link, Stream) else None
        if stream is not None:
            stream.registered = True
        nonce = self._random_bytes(wire.BOX_NONCE_LEN)
        self._send(link, wire.seal(MessageType.RELAY_HELLO_ACK, self.public_key, nonce, key,
                                   wire.RelayHelloAck(timestamp_ms)))

    def _proof_needed(self, node: bytes, link: Endpoint, costs_dh: bool, now: float) -> Optional[str]:
        """Why a UDP hello from `link` must carry a cookie for it, if it must (the drop reason's tail)."""
        holder = self._by_link.get(link)
        under_load = costs_dh and not self._dh_budget.take(now)
        if holder is not None and holder.key != node:
            return "address held by another node"
        if holder is None:
            return "new or moved registration"
        return "under load" if under_load else None

    def _proven(self, data: bytes, sealed: wire.Sealed, link: Link, now: float, why: str) -> bool:
        """Whether the hello carries a cookie for its UDP source; if not, send one and count why."""
        if self._cookies.valid(data, link, now):
            return True
        self.drops[f"unproven hello: {why}"] += 1
        self._send_datagram(link, self._cookies.reply(sealed.nonce, link, now))
        return False

    def _new_box_key(self, node: bytes) -> bytes:
        """One X25519 for `node`, kept in the bounded cache (least recently made goes first)."""
        key = wire.box_key(self._private, node)
        self._box_keys[node] = key
        if len(self._box_keys) > BOX_KEY_CACHE:
            self._box_keys.popitem(last=False)
        return key

    def _register(self, node: bytes, link: Link, grant: TokenGrant, now: float) -> None:
        self.registry.register(node, link, grant.expires, grant.network, self.limits, now)

    def _unregister(self, reg: Registration) -> None:
        self.registry.unregister(reg)

    def _refuse(self, link: Link, reason: str) -> None:
        self.drops[reason] += 1
        if isinstance(link, Stream) and link in self._streams and not self._streams[link].registered:
            self._to_close.append(link)
