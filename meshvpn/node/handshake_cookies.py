"""A node's cookie under a flood of initiations (issue 13, finding 3), in the manner of WireGuard.

mac1 keeps out whoever does not know a node's public key, but that key is no secret (it travels
in clear in probes and relay envelopes), so anyone can make a node compute a Diffie-Hellman per
initiation. Rules:

* An initiation costs a Diffie-Hellman only while the node's allowance holds one (`DH_RATE` a
  second, bursts of `DH_BURST`); beyond it the node is under load and takes an initiation only
  with a mac2 made with the node's cookie for the initiation's source (``meshvpn.cookie``).
  Without one the answer is a HANDSHAKE_COOKIE (64 bytes, under the initiation's 132), which
  only whoever receives datagrams at that source can read; nothing else is spent.
* Under load, initiations proven so are still bounded per source (`PROVEN_RATE`, `PROVEN_BURST`)
  and in all (`DH_RATE`): a flooder at a real address gets its cookie too.
* The source is the UDP endpoint, or for an initiation a relay carried, the key the relay says
  it came from (the relay registered that key with a token). Initiations on a punched TCP path
  need no cookie: its channel already authenticated the peer.
* The initiator keeps the responder's latest cookie per peer (`CookieJar`), stamps every
  initiation with it while it is young, and sends the live initiation again at once, stamped,
  when a cookie answers it (once per initiation; the retry timer does the rest). A cookie is
  taken only if it answers the live initiation: bound to its index and its mac1.

Sans-IO: the shells' clocks and randomness come in as ``now`` and ``random_bytes``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from meshvpn import wire
from meshvpn.cookie import CookieChecker, Source
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.ratelimit import SourceLimiter, TokenBucket
from meshvpn.wire import Endpoint

DH_RATE = 100.0
"""Initiations a second a node spends Diffie-Hellmans on before it is under load and asks for cookies."""
DH_BURST = 200.0
"""Initiations at once before the node is under load: every peer of a large mesh after a restart."""
PROVEN_RATE = 20.0
"""Initiations a second taken from one source under load, with its cookie (WireGuard's figure)."""
PROVEN_BURST = 5.0
"""Initiations at once taken from one source under load, with its cookie."""


class Refused(NamedTuple):
    """Why an initiation gets no Diffie-Hellman, and the cookie reply to send back, if any."""

    reason: str
    reply: Optional[bytes]


def cookie_source(src: Endpoint, relayed_from: Optional[bytes]) -> Optional[Source]:
    """Whom a cookie for a message from `src` proves; None where the transport already proves it."""
    if relayed_from is not None:
        return relayed_from
    if type(src) is TcpEndpoint:
        return None
    return Endpoint(*src)


class InitiationGate:
    """The responder's side: which initiations get a Diffie-Hellman, and cookies for the rest."""

    def __init__(self, own_public: bytes, random_bytes: Callable[[int], bytes], now: float = 0.0) -> None:
        self._mac1_key = wire.mac1_key(own_public)
        self._cookies = CookieChecker(own_public, random_bytes, now)
        self._allowance = TokenBucket(DH_RATE, DH_BURST, now)
        self._proven = SourceLimiter(PROVEN_RATE, PROVEN_BURST, DH_RATE, DH_BURST, now)

    def admit(self, data: bytes, source: Optional[Source], now: float) -> Optional[Refused]:
        """None if `data` may cost a Diffie-Hellman; raises `WireError` for a bad layout or mac1."""
        wire.HandshakeInitiation.decode(data, self._mac1_key)
        if source is None or self._allowance.take(now):
            return None
        if len(data) != wire.INITIATION_WITH_MAC2_LEN or not self._cookies.valid(data, source, now):
            mac1 = data[wire.INITIATION_LEN - wire.MAC1_LEN : wire.INITIATION_LEN]
            return Refused("initiation under load: cookie sent",
                           self._cookies.handshake_reply(data[4:8], mac1, source, now))
        if not self._proven.allow(source, now):
            return Refused("initiation under load: rate limited", None)
        return None


class HandshakeCookies:
    """The node core's side of the rules above (a base class of the core, which provides every
    attribute used here: ``handshakes``, ``peers``, ``routes``, ``drops``, ``_send_via``)."""

    def _admitted(self, data: bytes, src: Endpoint, now: float, relayed_from: Optional[bytes]) -> bool:
        """Whether an initiation may cost a Diffie-Hellman; if not, count why and send the cookie."""
        refused = self.handshakes.gate.admit(data, cookie_source(src, relayed_from), now)
        if refused is None:
            return True
        self.drops[refused.reason] += 1
        if refused.reply is not None:
            self._send_via(self.routes.reply(src, relayed_from), refused.reply)
        return False

    def _on_cookie(self, data: bytes, now: float) -> None:
        """A HANDSHAKE_COOKIE: kept if it answers a live initiation of ours, which then goes again."""
        peer = self.peers.by_index.get(int.from_bytes(data[4:8], "little"))
        taken, again = (False, None) if peer is None else self.handshakes.take_cookie(peer.key, data, now)
        if not taken:
            self.drops["rejected cookie"] += 1
        elif again is not None and peer.route is not None:
            self._send_via(peer.route, again)
