"""`meshvpn netcheck`: what this host's NAT does, in RFC 4787 terms, and how far the relays are.

The tests are RFC 5780's, run against the coordination server's STUN service: its primary
address A1:P1 and the alternate A2:P2 it advertises in OTHER-ADDRESS. A server with only those
two sockets can answer a CHANGE-REQUEST only with "both changed"; where A2:P1 and A1:P2 also
answer (a second server with the addresses crossed), the tests become complete.

* UDP: does any Binding request get an answer at all.
* Mapping (RFC 5780 §4.3): one socket asks A1:P1, A2:P2, A2:P1 and A1:P2. One mapped endpoint
  for all: endpoint-independent. One per address: address-dependent. Otherwise address-and-
  port-dependent; without A2:P1 and A1:P2 the last two cannot be told apart.
* Filtering (§4.4): a fresh socket asks A1:P1 to answer from A2:P2 (test II): an answer means
  endpoint-independent filtering. It then asks A2:P1 to answer from A1:P2: under an endpoint-
  independent mapping, that reply is admitted by address-dependent filtering only.
* Port allocation: fresh sockets ask A1:P1 one after another. Mapped port = local port:
  preservation; a constant difference: a fixed offset; small steps up: sequential; else random.
* Hairpinning: two sockets send to each other's mapped endpoint.
* Relays: TCP connect time to each relay the running daemon knows.
* Port mapping: which of PCP, NAT-PMP and UPnP IGD the gateway speaks (probed, nothing mapped),
  and the running daemon's mapping: protocol, external endpoint, lease left.

* IPv6 (`meshvpn.node.netcheck6`): a global address, the STUN mapping over IPv6, and whether
  the coord and the relays answer over IPv6.

The verdict logic (`verdict`) is pure; `gather` is the asyncio shell that observes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
from dataclasses import asdict, dataclass, field

from meshvpn import tlsenvelope
from meshvpn.node.portmap.shell import probe_gateway
from meshvpn.node.prediction import Allocation, NatProfile
from meshvpn.stun import ChangeRequest, StunResult, is_stun
from meshvpn.stunio import StunClient

Endpoint = tuple[str, int]

QUERY_TIMEOUT = 1.0
"""Seconds one Binding query may take; a filtered reply costs exactly this."""
QUERY_RTO = 0.2
ALLOCATION_SAMPLES = 5
SEQUENTIAL_STEP = 8
"""Largest step between consecutive new mappings still called sequential."""
HAIRPIN_WAIT = 0.5
RELAY_TIMEOUT = 2.0

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
ENDPOINT_DEPENDENT = "address-dependent or address-and-port-dependent"
PRESERVING, OFFSET, SEQUENTIAL, RANDOM = Allocation.PRESERVING, Allocation.OFFSET, Allocation.SEQUENTIAL, Allocation.RANDOM


@dataclass
class Observations:
    """What the probes saw; every field is None when its test could not run."""

    local_ip: str | None = None
    """The address the probing sockets were bound to, as the kernel chose it."""
    mapped: dict[str, Endpoint] = field(default_factory=dict)
    """Mapped endpoint seen by each STUN address ("A1P1", "A2P2", "A2P1", "A1P2") from one socket."""
    change_both: bool | None = None
    """Test II: an answer from A2:P2 to a socket that only sent to A1:P1 arrived."""
    change_to_sent_address: bool | None = None
    """An answer from A1:P2 arrived at a socket that had sent to A1:P1 and A2:P1."""
    samples: list[tuple[int, int]] = field(default_factory=list)
    """(local port, mapped port) of fresh sockets asking A1:P1 one after another."""
    hairpin: bool | None = None
    relays: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per relay, the transports tried and their time (None: it did not get through): ``tcp`` and
    ``tls`` the connect (and TLS handshake) time, ``udp`` the running daemon's hello round trip
    when its link is ready over UDP."""


@dataclass
class Verdict:
    """The report, in RFC 4787 terms."""

    udp: bool
    public: Endpoint | None = None
    nat: bool | None = None
    mapping: str | None = None
    filtering: str | None = None
    allocation: str | None = None
    hairpinning: bool | None = None
    relays: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def traversal(self) -> str:
        """What hole punching has to do from here."""
        if not self.udp:
            return "UDP blocked: relay over TCP only"
        if not self.nat or self.mapping == EIM:
            return "easy: one public endpoint for every peer"
        if self.allocation in (SEQUENTIAL, PRESERVING, OFFSET):
            return "hard: port prediction"
        return "hard: birthday probing from the other side, else relay"


def allocation(samples: list[tuple[int, int]]) -> str | None:
    """How the NAT picks ports, from (local port, mapped port) of consecutive new mappings."""
    if len(samples) < 2:
        return None
    if all(local == mapped for local, mapped in samples):
        return PRESERVING
    if len({mapped - local for local, mapped in samples}) == 1:
        return OFFSET
    mapped = [m for _, m in samples]
    steps = [b - a for a, b in zip(mapped, mapped[1:])]
    if sum(0 < step <= SEQUENTIAL_STEP for step in steps) * 2 > len(steps):
        return SEQUENTIAL
    return RANDOM


def mapping(mapped: dict[str, Endpoint]) -> str | None:
    """RFC 4787 mapping behaviour from the endpoints the four STUN addresses saw."""
    base, far = mapped.get("A1P1"), mapped.get("A2P2")
    if base is None or far is None:
        return None
    if base == far and all(m == base for m in mapped.values()):
        return EIM
    if "A2P1" in mapped:
        return ADM if mapped["A2P1"] == far else APDM
    if "A1P2" in mapped:
        return ADM if mapped["A1P2"] == base else APDM
    return ENDPOINT_DEPENDENT


def verdict(obs: Observations) -> Verdict:
    """Turn observations into RFC 4787 verdicts; unknowable ones stay None."""
    public = obs.mapped.get("A1P1")
    if public is None:
        return Verdict(udp=False, relays=obs.relays)
    nat = public[0] != obs.local_ip or any(local != m for local, m in obs.samples)
    kind = mapping(obs.mapped)
    if obs.change_both:
        filtering = EIM
    elif kind == EIM and obs.change_to_sent_address is not None:
        filtering = ADM if obs.change_to_sent_address else APDM
    elif obs.change_both is False:
        filtering = ENDPOINT_DEPENDENT
    else:
        filtering = None
    return Verdict(True, public, nat, kind, filtering, allocation(obs.samples),
                   obs.hairpin if nat else None, obs.relays)


def render(v: Verdict) -> str:
    """The human-readable report."""
    if not v.udp:
        lines = ["UDP: blocked (no STUN answer)"]
    else:
        lines = [
            f"UDP: works, public endpoint {v.public[0]}:{v.public[1]}",
            f"NAT: {'yes' if v.nat else 'no (public address)'}",
            f"mapping: {_name(v.mapping, 'mapping')}",
            f"filtering: {_name(v.filtering, 'filtering')}",
            f"port allocation: {v.allocation or 'unknown'}",
            f"hairpinning: {'n/a' if v.hairpinning is None else ('yes' if v.hairpinning else 'no')}",
        ]
    lines.append(f"traversal: {v.traversal}")
    for name, transports in sorted(v.relays.items()):
        lines.append(f"relay {name}: " + ", ".join(
            f"{kind} " + (f"{rtt * 1000:.1f} ms" if rtt is not None else "unreachable")
            for kind, rtt in transports.items()))
    return "\n".join(lines)


def _name(behaviour: str | None, what: str) -> str:
    return f"{behaviour} {what}" if behaviour else "unknown"


# ---- the asyncio shell ----------------------------------------------------------------------


class _Probe(asyncio.DatagramProtocol):
    """One UDP socket: STUN answers go to its client, anything else is kept for the hairpin test."""

    def __init__(self) -> None:
        self.client: StunClient | None = None
        self.other: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.client = StunClient(transport, rto=QUERY_RTO)  # type: ignore[arg-type]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not (is_stun(data) and self.client.datagram_received(data, addr)):
            self.other.append(data)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors from addresses nobody serves are expected: those tests just fail."""

    async def ask(self, server: Endpoint, change: ChangeRequest | None = None) -> StunResult | None:
        try:
            return await asyncio.wait_for(self.client.query(server, change=change), QUERY_TIMEOUT)
        except (asyncio.TimeoutError, OSError, ValueError):
            return None

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        self.transport.close()


async def _socket(bind: str) -> _Probe:
    _, probe = await asyncio.get_running_loop().create_datagram_endpoint(_Probe, local_addr=(bind, 0))
    return probe


@dataclass(frozen=True)
class RelayTarget:
    """A relay as netcheck tries it: its address, its TLS port, and the running daemon's UDP link."""

    endpoint: Endpoint
    tls_port: int | None = None
    udp_rtt: float | None = None
    """The daemon's hello round trip while its link is ready over UDP, seconds."""
    udp_known: bool = False
    """Whether a running daemon said anything about its link (else UDP is not reported)."""


async def gather(stun: Endpoint, relays: dict[str, RelayTarget], bind: str = "0.0.0.0") -> Observations:
    """Run every test against the STUN server at `stun` and the `relays`; never raises for the network."""
    obs = Observations(local_ip=_route_source(stun[0]))
    relay_task = asyncio.ensure_future(_relay_rtts(relays))
    first = await _socket(bind)
    try:
        answer = await first.ask(stun)
        if answer is not None:
            obs.mapped["A1P1"] = answer.mapped
            if answer.other_address is not None:
                await _mapping_and_filtering(obs, first, stun, answer.other_address, bind)
            await _samples(obs, stun, bind)
            obs.hairpin = await _hairpin(stun, bind)
    finally:
        first.close()
    obs.relays = await relay_task
    return obs


async def gather_profile(stun: Endpoint, bind: str = "0.0.0.0") -> Observations:
    """The cheap subset the daemon runs at start and on endpoint refresh: mapping and allocation."""
    obs = Observations(local_ip=_route_source(stun[0]))
    first = await _socket(bind)
    try:
        answer = await first.ask(stun)
        if answer is None:
            return obs
        obs.mapped["A1P1"] = answer.mapped
        if answer.other_address is not None:
            far = await first.ask(answer.other_address)
            if far is not None:
                obs.mapped["A2P2"] = far.mapped
    finally:
        first.close()
    await _samples(obs, stun, bind)
    return obs


def nat_profile(v: Verdict) -> NatProfile | None:
    """What the path finder needs from a verdict; None when UDP does not work.

    Without a second STUN address the mapping is unknown: port preservation (or no NAT)
    is taken as endpoint-independent, anything else as endpoint-dependent.
    """
    if not v.udp:
        return None
    known = {PRESERVING, OFFSET, SEQUENTIAL, RANDOM}
    allocation = Allocation(v.allocation) if v.allocation in known else Allocation.UNKNOWN
    if not v.nat:
        return NatProfile()
    if v.mapping is None:
        return NatProfile(allocation is PRESERVING, allocation)
    return NatProfile(v.mapping == EIM, allocation)


async def _mapping_and_filtering(obs: Observations, probe: _Probe, a1p1: Endpoint, a2p2: Endpoint, bind: str) -> None:
    crossed = {"A2P2": a2p2, "A2P1": (a2p2[0], a1p1[1]), "A1P2": (a1p1[0], a2p2[1])}
    fresh = await _socket(bind)
    try:
        async def mapping_test() -> None:
            for name, server in crossed.items():
                answer = await probe.ask(server)
                if answer is not None:
                    obs.mapped[name] = answer.mapped

        async def filtering_test() -> None:
            if await fresh.ask(a1p1) is None:
                return
            obs.change_both = await fresh.ask(a1p1, ChangeRequest(ip=True, port=True)) is not None
            if not obs.change_both:
                reply = await fresh.ask(crossed["A2P1"], ChangeRequest(ip=True, port=True))
                obs.change_to_sent_address = None if reply is None and "A2P1" not in obs.mapped else reply is not None

        await mapping_test()
        await filtering_test()
    finally:
        fresh.close()


async def _samples(obs: Observations, stun: Endpoint, bind: str) -> None:
    for _ in range(ALLOCATION_SAMPLES):
        probe = await _socket(bind)
        try:
            answer = await probe.ask(stun)
            if answer is not None:
                obs.samples.append((probe.port, answer.mapped[1]))
        finally:
            probe.close()


async def _hairpin(stun: Endpoint, bind: str) -> bool | None:
    one, two = await _socket(bind), await _socket(bind)
    try:
        answers = await asyncio.gather(one.ask(stun), two.ask(stun))
        if None in answers:
            return None
        token = os.urandom(8)
        for _ in range(3):
            one.transport.sendto(token, answers[1].mapped)
            two.transport.sendto(token, answers[0].mapped)
            await asyncio.sleep(HAIRPIN_WAIT / 3)
        return token in one.other or token in two.other
    finally:
        one.close()
        two.close()


async def _relay_rtts(relays: dict[str, RelayTarget]) -> dict[str, dict[str, float | None]]:
    """Which of UDP (as the daemon's link saw it), TCP and TLS reach each relay, and how fast."""
    async def connect_time(endpoint: Endpoint, tls: bool = False) -> float | None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            context = tlsenvelope.client_context() if tls else None
            _, writer = await asyncio.wait_for(asyncio.open_connection(*endpoint, ssl=context), RELAY_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            return None
        elapsed = loop.time() - start
        writer.close()
        return elapsed

    async def transports(target: RelayTarget) -> dict[str, float | None]:
        out: dict[str, float | None] = {"udp": target.udp_rtt} if target.udp_known else {}
        out["tcp"] = await connect_time(target.endpoint)
        if target.tls_port:
            out["tls"] = await connect_time((target.endpoint[0], target.tls_port), tls=True)
        return out

    found = await asyncio.gather(*(transports(target) for target in relays.values()))
    return dict(zip(relays, found))


def _route_source(host: str) -> str | None:
    """The local address the kernel would send to `host` from (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, 9))
        except OSError:
            return None
        return sock.getsockname()[0]


def _daemon_status(control_socket: str) -> dict:
    """What a running daemon's `status` says ({} if none runs)."""
    from meshvpn import localsock

    try:
        for reply in localsock.request(control_socket, {"cmd": "status"}):
            if isinstance(reply.get("self"), dict):
                return reply
    except (localsock.DaemonNotRunning, OSError, TypeError, ValueError):
        pass
    return {}


def _daemon_relays(status: dict) -> dict[str, RelayTarget]:
    """The relays a running daemon learned from the coordination server, with its links' state."""
    try:
        return {str(r["name"]): _relay_target(r) for r in (status.get("self") or {}).get("relays") or []}
    except (KeyError, TypeError, ValueError):
        return {}


def _relay_target(link: dict) -> RelayTarget:
    on_udp = link.get("ready") and link.get("transport") == "udp" and link.get("rtt_ms") is not None
    return RelayTarget(_endpoint(str(link["address"])), link.get("tls_port"),
                       link["rtt_ms"] / 1000 if on_udp else None, udp_known=True)


def render_port_mapping(report: dict) -> list[str]:
    """The port-mapping lines: what the gateway speaks, and the running daemon's mapping."""
    available = report.get("available") or []
    why = report.get("error") or "no answer"
    lines = [f"port mapping: {', '.join(available)}" if available else f"port mapping: none ({why})"]
    daemon = report.get("daemon")
    if daemon:
        lines.append(_mapping_in_use("port mapping in use", daemon))
    if daemon and daemon.get("tcp"):
        lines.append(_mapping_in_use("tcp port mapping in use", daemon["tcp"]))
    return lines


def _mapping_in_use(what: str, mapping: dict) -> str:
    """One of the daemon's mappings (its UDP port's, its TCP punch port's) as netcheck says it."""
    if not mapping.get("external"):
        return f"{what}: none ({mapping.get('error') or mapping.get('state')})"
    left = f", {mapping['expires_in']:.0f} s left" if mapping.get("expires_in") is not None else ""
    return f"{what}: {mapping['external']} via {mapping['protocol']}{left}"


def _endpoint(text: str) -> Endpoint:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def main(args) -> int:
    """`meshvpn netcheck [--json]`: probe the coordination server's STUN service and print a report."""
    from meshvpn.node.netcheck6 import check_ipv6, render_ipv6  # it needs the daemon's modules, which need this one

    config = args.settings
    host = socket.getaddrinfo(config.coord.address.host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    daemon = _daemon_status(str(config.control_socket))
    obs = asyncio.run(gather((host, config.coord.stun_port), _daemon_relays(daemon)))
    result = verdict(obs)
    portmap = {**asyncio.run(probe_gateway(config.portmap)), "daemon": daemon.get("self", {}).get("port_mapping")}
    ipv6 = asyncio.run(check_ipv6(config, {name: t.endpoint for name, t in _daemon_relays(daemon).items()}))
    if args.json:
        print(json.dumps({**asdict(result), "traversal": result.traversal, "port_mapping": portmap,
                          "ipv6": asdict(ipv6), "observations": asdict(obs)}, indent=2))
    else:
        print("\n".join([render(result), *render_port_mapping(portmap), render_ipv6(ipv6)]))
    return 0 if result.udp else 1


__all__ = ["Observations", "Verdict", "allocation", "gather", "gather_profile", "main", "mapping", "nat_profile", "render",
           "verdict"]
