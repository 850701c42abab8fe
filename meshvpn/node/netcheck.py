"""`meshvpn netcheck`: what this host's NAT does, in RFC 4787 terms, and how far the relays are.

The tests are RFC 5780's, run against the coordination server's STUN service: its primary
address A1:P1 and the alternate A2:P2 it advertises in OTHER-ADDRESS. A server with only those
two sockets can answer a CHANGE-REQUEST only with "both changed"; where A2:P1 and A1:P2 also
answer (a second server with the addresses crossed), the tests become complete.

* UDP: does any Binding request get an answer at all.
* Mapping (RFC 5780 §4.3): one socket asks A1:P1, A2:P2, A2:P1 and A1:P2. One mapped endpoint
  for all: endpoint-independent. One per address: address-dependent. Otherwise address-and-
  port-dependent; without A2:P1 and A1:P2 the last two cannot be told apart. A coord without an
  alternate address (the usual deployment) leaves the test to a relay, which answers Binding
  requests on its UDP port: the same socket asks it after A1:P1, and the relay stands for the
  alternate IP. The same mapped endpoint from both: endpoint-independent; another one:
  endpoint-dependent (address-and-port-dependent when the relay shares the coord's IP, while the
  same endpoint there proves nothing). The verdict names the source of its mapping answer.
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

The verdict logic (`meshvpn.node.natverdict`) is pure; `gather` is the asyncio shell that observes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import asdict

from meshvpn.node.natverdict import (
    ADM, ALLOCATION_SAMPLES, APDM, EIM, ENDPOINT_DEPENDENT, OFFSET, PRESERVING, RANDOM, SEQUENTIAL, Observations,
    Verdict, allocation, mapping, nat_profile, relay_mapping, render, verdict,
)
from meshvpn.node.netcheck_relays import RelayTarget, mapping_relay, relay_rtts
from meshvpn.node.netcheck_relays import daemon_relays as _daemon_relays
from meshvpn.node.portmap.shell import probe_gateway
from meshvpn.stun import ChangeRequest, StunResult, is_stun
from meshvpn.stunio import StunClient

Endpoint = tuple[str, int]

QUERY_TIMEOUT = 1.0
"""Seconds one Binding query may take; a filtered reply costs exactly this."""
QUERY_RTO = 0.2
HAIRPIN_WAIT = 0.5

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


async def gather(stun: Endpoint, relays: dict[str, RelayTarget], bind: str = "0.0.0.0") -> Observations:
    """Run every test against the STUN server at `stun` and the `relays`; never raises for the network."""
    obs = Observations(local_ip=_route_source(stun[0]), server=stun)
    relay_task = asyncio.ensure_future(relay_rtts(relays))
    first = await _socket(bind)
    try:
        answer = await first.ask(stun)
        if answer is not None:
            obs.mapped["A1P1"] = answer.mapped
            if answer.other_address is not None:
                await _mapping_and_filtering(obs, first, stun, answer.other_address, bind)
            await _ask_relay(obs, first, mapping_relay(relays, stun))
            await _samples(obs, stun, bind)
            obs.hairpin = await _hairpin(stun, bind)
    finally:
        first.close()
    obs.relays = await relay_task
    return obs


async def gather_profile(stun: Endpoint, bind: str = "0.0.0.0", relay: tuple[str, Endpoint] | None = None) -> Observations:
    """The cheap subset the daemon runs at start and on endpoint refresh: mapping and allocation.

    The mapping test's second server is the coord's alternate address, else `relay` (name, address)."""
    obs = Observations(local_ip=_route_source(stun[0]), server=stun)
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
        await _ask_relay(obs, first, relay)
    finally:
        first.close()
    await _samples(obs, stun, bind)
    return obs


async def _ask_relay(obs: Observations, probe: _Probe, relay: tuple[str, Endpoint] | None) -> None:
    """The relay's view of `probe`'s mapping, when the coord's alternate address did not tell it."""
    if relay is None or "A2P2" in obs.mapped:
        return
    obs.relay = relay
    answer = await probe.ask(relay[1])
    obs.relay_mapped = None if answer is None else answer.mapped


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


def main(args) -> int:
    """`meshvpn netcheck [--json]`: probe the coordination server's STUN service and print a report."""
    from meshvpn.node.netcheck6 import check_ipv6, render_ipv6  # it needs the daemon's modules, which need this one

    config = args.settings
    host = socket.getaddrinfo(config.coord.address.host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    daemon = _daemon_status(str(config.control_socket))
    obs = asyncio.run(gather((host, config.coord.stun_port), _daemon_relays(daemon)))
    result = verdict(obs)
    portmap = {**asyncio.run(probe_gateway(config.portmap)), "daemon": daemon.get("self", {}).get("port_mapping")}
    ipv6 = asyncio.run(check_ipv6(config, {name: t.all for name, t in _daemon_relays(daemon).items()}))
    if args.json:
        print(json.dumps({**asdict(result), "traversal": result.traversal, "port_mapping": portmap,
                          "ipv6": asdict(ipv6), "observations": asdict(obs)}, indent=2))
    else:
        print("\n".join([render(result), *render_port_mapping(portmap), render_ipv6(ipv6)]))
    return 0 if result.udp else 1


__all__ = ["ADM", "ALLOCATION_SAMPLES", "APDM", "EIM", "ENDPOINT_DEPENDENT", "OFFSET", "PRESERVING", "RANDOM", "SEQUENTIAL",
           "Observations", "Verdict", "allocation", "gather", "gather_profile", "main", "mapping", "mapping_relay",
           "nat_profile", "relay_mapping", "render", "verdict"]
