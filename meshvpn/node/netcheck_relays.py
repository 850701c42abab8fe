"""netcheck's relays: which transports reach each one, and which one is the mapping test's second server.

A coord usually has one address, so RFC 5780's mapping test has no alternate IP to ask; every
relay answers STUN Binding requests on its UDP port (`meshvpn.relay.stunanswer`), so the node asks
one of its relays instead (`mapping_relay`): its home relay when the daemon has one, preferably at
another IP than the coord's, of the STUN socket's family.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Iterable, Sequence

from meshvpn import tlsenvelope
from meshvpn.node.eyeballs import interleave
from meshvpn.node.natverdict import same_ip
from meshvpn.node.streamrace import first_connection

Endpoint = tuple[str, int]

RELAY_TIMEOUT = 2.0
"""Seconds a TCP connect (and TLS handshake) to a relay may take."""


@dataclass(frozen=True)
class RelayTarget:
    """A relay as netcheck tries it: its address, its TLS port, and the running daemon's UDP link."""

    endpoint: Endpoint
    tls_port: int | None = None
    udp_rtt: float | None = None
    """The daemon's hello round trip while its link is ready over UDP, seconds."""
    udp_known: bool = False
    """Whether a running daemon said anything about its link (else UDP is not reported)."""
    home: bool = False
    """The running daemon's home relay: the mapping test asks it first."""
    addresses: tuple[Endpoint, ...] = ()
    """Every address the daemon's link knows for the relay (a name's IPv6 and IPv4 ones): the TCP
    and TLS checks race them as the link does; empty: `endpoint` alone."""

    @property
    def all(self) -> tuple[Endpoint, ...]:
        return self.addresses or (self.endpoint,)


def mapping_relay(relays: dict[str, RelayTarget], stun: Endpoint) -> tuple[str, Endpoint] | None:
    """The relay a mapping test asks besides the coord's STUN at `stun`: of its family, home first,
    then one at another IP than the coord's; None without any."""
    return pick_relay(((name, t.endpoint, t.home) for name, t in relays.items()), stun)


def pick_relay(relays: Iterable[tuple[str, Endpoint, bool]], stun: Endpoint) -> tuple[str, Endpoint] | None:
    """`mapping_relay` over (name, endpoint, is home) triples, as the daemon's relay set gives them."""
    family = _version(stun[0])
    usable = [(name, endpoint, home) for name, endpoint, home in relays if _version(endpoint[0]) == family]
    usable.sort(key=lambda r: (not r[2], same_ip(r[1][0], stun[0]) is not False, r[0]))
    return (usable[0][0], tuple(usable[0][1])) if usable else None


def _version(host: str) -> int | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return 4 if getattr(address, "ipv4_mapped", None) else address.version


async def relay_rtts(relays: dict[str, RelayTarget]) -> dict[str, dict[str, float | None]]:
    """Which of UDP (as the daemon's link saw it), TCP and TLS reach each relay, and how fast; TCP
    and TLS race the relay's addresses, as its link's stream does (`connect_time`)."""
    async def transports(target: RelayTarget) -> dict[str, float | None]:
        out: dict[str, float | None] = {"udp": target.udp_rtt} if target.udp_known else {}
        out["tcp"] = await connect_time(target.all)
        if target.tls_port:
            out["tls"] = await connect_time([(host, target.tls_port) for host, _ in target.all], tls=True)
        return out

    found = await asyncio.gather(*(transports(target) for target in relays.values()))
    return dict(zip(relays, found))


async def connect_time(endpoints: Sequence[Endpoint], tls: bool = False) -> float | None:
    """Seconds until the first of `endpoints` takes a TCP connection (and its TLS handshake), their
    families alternating, IPv6 first, a stagger apart (`meshvpn.node.streamrace`); None if none did."""
    loop = asyncio.get_running_loop()
    context = tlsenvelope.client_context() if tls else None

    async def connect(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(*endpoint, ssl=context), RELAY_TIMEOUT)

    start = loop.time()
    try:
        (_, writer), _ = await first_connection(interleave(endpoints), connect, lambda won: won[1].close())
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        return None
    elapsed = loop.time() - start
    writer.close()
    return elapsed


def daemon_relays(status: dict) -> dict[str, RelayTarget]:
    """The relays a running daemon learned from the coordination server, with its links' state."""
    try:
        return {str(r["name"]): _relay_target(r) for r in (status.get("self") or {}).get("relays") or []}
    except (KeyError, TypeError, ValueError):
        return {}


def _relay_target(link: dict) -> RelayTarget:
    on_udp = link.get("ready") and link.get("transport") == "udp" and link.get("rtt_ms") is not None
    return RelayTarget(_endpoint(str(link["address"])), link.get("tls_port"),
                       link["rtt_ms"] / 1000 if on_udp else None, udp_known=True, home=bool(link.get("home")),
                       addresses=tuple(_endpoint(str(a)) for a in link.get("addresses") or ()))


def _endpoint(text: str) -> Endpoint:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)
