"""netcheck's verdicts, without I/O: RFC 4787 names for what the STUN tests saw, and the profile a node reports.

`meshvpn.node.netcheck` observes (its docstring lists the tests) and `meshvpn.sim.natprobe` does the
same on the simulated network; both hand their `Observations` to `verdict`, and the daemon and the
sim take `nat_profile` of that. The mapping answer comes from the coord's alternate address when it
has one, else from a relay asked from the same socket (`relay_mapping`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshvpn.node.prediction import Allocation, NatProfile

Endpoint = tuple[str, int]

ALLOCATION_SAMPLES = 5
"""Fresh sockets whose mapped ports tell the allocation."""
SEQUENTIAL_STEP = 8
"""Largest step between consecutive new mappings still called sequential."""

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
    server: Endpoint | None = None
    """The coord's STUN address, A1:P1."""
    relay: tuple[str, Endpoint] | None = None
    """The relay asked as the second server of the mapping test (name, STUN address), if one was."""
    relay_mapped: Endpoint | None = None
    """The mapped endpoint that relay saw, from the socket that asked A1:P1."""
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
    mapping_source: str | None = None
    """Whose answer told the mapping: ``coord alternate address`` or ``relay NAME``."""
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


def relay_mapping(obs: Observations) -> str | None:
    """Mapping behaviour from A1:P1's and the relay's answers to one socket (RFC 5780 §4.3, the
    relay as the alternate IP); None when the relay did not answer or its answer proves nothing."""
    base, seen = obs.mapped.get("A1P1"), obs.relay_mapped
    if base is None or seen is None or obs.relay is None or obs.server is None:
        return None
    other_ip = same_ip(obs.relay[1][0], obs.server[0]) is False
    if seen != base:
        return ENDPOINT_DEPENDENT if other_ip else APDM
    return EIM if other_ip else None


def verdict(obs: Observations) -> Verdict:
    """Turn observations into RFC 4787 verdicts; unknowable ones stay None."""
    public = obs.mapped.get("A1P1")
    if public is None:
        return Verdict(udp=False, relays=obs.relays)
    nat = public[0] != obs.local_ip or any(local != m for local, m in obs.samples)
    kind, source = mapping(obs.mapped), "coord alternate address"
    if kind is None:
        kind, source = relay_mapping(obs), f"relay {obs.relay[0]}" if obs.relay else None
    if obs.change_both:
        filtering = EIM
    elif kind == EIM and obs.change_to_sent_address is not None:
        filtering = ADM if obs.change_to_sent_address else APDM
    elif obs.change_both is False:
        filtering = ENDPOINT_DEPENDENT
    else:
        filtering = None
    return Verdict(True, public, nat, kind, source if kind else None, filtering, allocation(obs.samples),
                   obs.hairpin if nat else None, obs.relays)


def render(v: Verdict) -> str:
    """The human-readable report."""
    if not v.udp:
        lines = ["UDP: blocked (no STUN answer)"]
    else:
        lines = [
            f"UDP: works, public endpoint {v.public[0]}:{v.public[1]}",
            f"NAT: {'yes' if v.nat else 'no (public address)'}",
            f"mapping: {_name(v.mapping, 'mapping')}" + (f" (from the {v.mapping_source})" if v.mapping_source else ""),
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


def nat_profile(v: Verdict) -> NatProfile | None:
    """What the path finder needs from a verdict; None when UDP does not work.

    Without a second STUN server (no coord alternate, no relay answer) the mapping is unknown:
    port preservation (or no NAT) is taken as endpoint-independent, anything else as
    endpoint-dependent.
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


def same_ip(one: str, two: str) -> bool | None:
    """Whether two address texts name one IP (an IPv4-mapped IPv6 one as its IPv4); None if either is no IP."""
    try:
        a, b = ipaddress.ip_address(one), ipaddress.ip_address(two)
    except ValueError:
        return None
    return (getattr(a, "ipv4_mapped", None) or a) == (getattr(b, "ipv4_mapped", None) or b)
