"""One TURN server as the node sees it: which transport and which address its allocation lives on.

The node's TURN machine (`meshvpn.node.turn.core`) keeps one of these per announced server; this
module owns the choice of way to the server, the way a relay link (`meshvpn.node.relay.link`)
owns its own, with the same pieces and the same timing:

* **UDP first, a stream beside it soon after.** When the first Allocate over UDP got no answer
  within `STREAM_AFTER` (the relay links' ``stream_after``), a stream is raced beside it: TCP and
  TLS to every address (`meshvpn.node.streamdial`, `meshvpn.node.streamrace`), while the UDP
  client goes on allocating (its requests racing the addresses, `meshvpn.node.relay.addresses`).
  The stream that connects first carries a new allocation (RFC 8656 §12.5).
* **Back to UDP when it answers.** While on a stream the UDP client keeps trying with its own
  backoff (retransmissions, then a new Allocate up to `TurnConfig.retry_max` later); the first
  answer over UDP moves the allocation back to UDP and the stream is closed (the server deletes
  an allocation whose connection closed). UDP is preferred whenever it works.
* **Silence.** When the address the allocation settled on stops answering (a Refresh, permission
  or channel binding went unanswered, or a `check` after unanswered traffic got no answer within
  `CHECK_TIMEOUT`), the allocation is given up and made anew at once: over UDP with the address
  that went dark last (the other family first), a stream raced after `STREAM_AFTER` as at start.
  A server that flaps (silent again within `SILENT_BACKOFF`'s longest wait of its last allocation
  being ready) waits a doubling backoff before the next one.
* **The network back under the stream** (`network_back`, a link outage that kept our addresses):
  the stream checks that it carries, as a relay link's does (`StreamDial.network_back`,
  `meshvpn.node.tcpresume`). One whose requests wait behind TCP's backed-off retransmission timer
  is replaced at once; else a Refresh goes over it at once, and without its answer within the
  check's wait (every answer on the stream is a round trip it learns from) it is replaced too.
  Replaced: closed, with the allocation on it (the server deletes it with the connection), and
  raced again at once, without backoff; the new stream carries a new allocation. An allocation
  still being made on the stream is not checked: its Allocate's own answer decides. A stream still
  connecting (raced while the network was gone, after the allocation's check gave it up) is raced
  again at once, its SYNs being behind TCP's backed-off SYN retransmission.

Sans-IO: inputs take ``now``; the owner collects the clients' datagrams and events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from meshvpn.backoff import doubling
from meshvpn.control import messages as m
from meshvpn.node.relay.addresses import RelayAddresses
from meshvpn.node.relay.link import RelayLinkConfig
from meshvpn.node.streamdial import StreamDial
from meshvpn.turn import TurnClient
from meshvpn.turn_codec import StreamFramer
from meshvpn.wire import Endpoint

STREAM_AFTER = RelayLinkConfig.stream_after
"""Seconds without an answer over UDP after the first Allocate before a stream is raced beside it."""
CHECK_TIMEOUT = 1.0
"""Seconds a `check` (a Refresh sent at once) waits for any answer before the server is taken for
silent: two UDP retransmission timeouts, so one lost datagram alone does not cost the allocation."""
SILENT_BACKOFF = (1.0, 30.0)
"""First and longest wait before allocating again on a server that went silent again soon after
its last allocation was ready (doubling per silence); an allocation that lasted the longest wait
resets it."""


@dataclass
class ServerLink:
    """One announced TURN server, our allocation on it and the way there."""

    info: m.TurnServer
    addresses: RelayAddresses
    """The server's addresses (a name's IPv6 and IPv4 ones) and the one it answered at."""
    new_client: Callable[[m.TurnServer, bool], TurnClient]
    """A fresh client with the server's credentials, for a stream (True) or for UDP."""
    client: TurnClient = field(init=False)
    """The allocation in use: over UDP while `stream` is None, else over the stream."""
    udp: Optional[TurnClient] = None
    """While on a stream: the UDP client allocating beside it, to move back when UDP answers."""
    started: float = 0.0
    """When the client started allocating over UDP (for `STREAM_AFTER`)."""
    stream: Optional[StreamDial] = None
    """The TCP or TLS stream the allocation lives on (or is raced for); None while on UDP."""
    framer: Optional[StreamFramer] = None
    racing: list[bytes] = field(default_factory=list)
    """The latest requests sent over UDP while no address answered: the race's next addresses get them."""
    check_until: Optional[float] = None
    """While a `check` is open: when the server is taken for silent without an answer."""
    silences: int = 0
    """Times the server went silent in a row, each soon after an allocation (the backoff's exponent)."""
    ready_at: Optional[float] = None
    """When the last allocation became ready."""
    draw: Callable[[], float] = lambda: 0.5
    """Uniform draws in [0, 1) that spread the stream's backoff (`StreamDial.draw`)."""

    def __post_init__(self) -> None:
        self.client = self.new_client(self.info, False)

    @property
    def endpoint(self) -> Endpoint:
        return self.addresses.endpoint

    @property
    def transport(self) -> str:
        return "udp" if self.stream is None else self.stream.kind

    @property
    def udp_client(self) -> TurnClient:
        """The client whose requests go over UDP (the one in use, or the one beside the stream)."""
        return self.udp if self.udp is not None else self.client

    # ---- inputs ---------------------------------------------------------------------

    def start(self, now: float, at: Optional[float] = None) -> None:
        """Allocate anew over UDP, at `at` (default: now); the stream, if any, is the caller's to close."""
        self.stream = self.framer = self.udp = None
        self.check_until = None
        self.client, self.started = self.new_client(self.info, False), now if at is None else at
        if at is None or at <= now:
            self.client.allocate(now)
        else:
            self.client.allocate_later(at)

    def set_info(self, info: m.TurnServer) -> None:
        """The server announced again: fresh credentials (TURN REST API ones expire) for every client."""
        self.info = info
        for client in (self.client, self.udp):
            if client is not None:
                client.set_credentials(info.username, info.password)

    def heard(self) -> None:
        """The server answered (STUN or ChannelData), on whatever transport: an open check is over."""
        self.check_until = None

    def udp_answered(self) -> bool:
        """A STUN message came over UDP (given to `udp_client`): True when it moved the allocation
        from a stream back to UDP, so the caller closes the stream."""
        if self.udp is None or not self.udp.heard:
            return False
        self.client, self.udp = self.udp, None
        self.stream = self.framer = None
        return True

    def stream_up(self, now: float, tls: bool) -> bool:
        """The raced stream connected: allocate on it; False when nothing waited for it."""
        if self.stream is None or not self.stream.connecting:
            return False
        self.stream.up(now, tls)
        self.framer = StreamFramer()
        self.client.allocate(now)
        return True

    def stream_down(self, now: float, reset: bool = False) -> bool:
        """The stream failed or closed (the server `reset` it): it reconnects after its backoff, or at
        once when the server reset one that had lasted (the relay streams' rule,
        `meshvpn.node.streamdial`), with a fresh client; True when that lost a ready allocation."""
        if self.stream is None:
            return False
        self.stream.down(now, reset)
        return self._lost_stream()

    def network_back(self, now: float, retransmitting: Optional[bool]) -> None:
        """The host's network is usable again, under the stream too, of which the kernel says whether it
        waits for a backed-off retransmission (None: it does not say): the ready allocation's stream
        checks that it carries, a Refresh its ping, and a stream still connecting is raced again
        (the module's rules; `replaced` says what came of it)."""
        if self.stream is None or (self.stream.connected and not self.client.ready):
            return
        if self.stream.network_back(now, retransmitting):
            self.client.refresh(now)

    def answered(self, now: float, sent: Optional[float]) -> None:
        """A response came on the stream to a request that went at `sent` (None: to none of ours)."""
        if self.stream is not None:
            self.stream.resume.answered(now, sent)

    def replaced(self) -> Optional[bool]:
        """None unless the stream's check replaced it (`StreamDial.replacing`, cleared here: the caller
        closes it, and the new race is due at once); else whether that lost a ready allocation."""
        if self.stream is None or not self.stream.replacing:
            return None
        self.stream.replacing = False
        return self._lost_stream()

    def check(self, now: float) -> None:
        """Traffic through this server went unanswered: refresh now; no answer in time is silence."""
        if self.client.ready and self.check_until is None:
            self.check_until = now + CHECK_TIMEOUT
            self.client.refresh(now)

    def tick(self, now: float) -> Optional[str]:
        """Timers: retransmissions, the stream's race, a check's end. Why the server is silent, if it is."""
        self.client.handle_timer(now)
        if self.udp is not None:
            self.udp.handle_timer(now)
        if self.stream is not None:
            self.stream.handle_timer(now)
        if self.check_until is not None and now >= self.check_until:
            self.check_until = None
            return "no answer to a check"
        if self.client.ready and self.client.unanswered:
            return "a request went unanswered"
        if self.stream is None and not self.client.heard and now >= self.started + STREAM_AFTER:
            self.stream = StreamDial(self.info.tls_port, draw=self.draw)
            self.stream.want()
            self.udp, self.client = self.client, self.new_client(self.info, True)
        return None

    def silent(self, now: float) -> None:
        """The server stopped answering at its address: race its addresses again, UDP first."""
        self.addresses.failed()  # the other family first
        if self.ready_at is not None and now >= self.ready_at + SILENT_BACKOFF[1]:
            self.silences = 0
        at = now if self.silences == 0 else now + doubling(*SILENT_BACKOFF, self.silences - 1)
        self.silences += 1
        self.start(now, at)

    def ready(self, now: float) -> None:
        """The allocation is ready (once it has lasted, the next silence is met at once again)."""
        self.ready_at = now

    def _lost_stream(self) -> bool:
        """The stream is gone, and its allocation with it: a fresh client waits for the next one.
        True when the allocation was ready."""
        was_ready = self.client.ready
        self.client, self.framer = self.new_client(self.info, True), None
        return was_ready

    # ---- outputs --------------------------------------------------------------------

    def deadline(self) -> Optional[float]:
        timers = [self.client.get_timer(), self.check_until, self.addresses.timer()]
        if self.udp is not None:
            timers.append(self.udp.get_timer())
        if self.stream is not None:
            timers.append(self.stream.deadline())
        elif not self.client.heard:
            timers.append(self.started + STREAM_AFTER)
        return min((t for t in timers if t is not None), default=None)
