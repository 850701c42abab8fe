"""RFC 4787 NAT boxes for the simulated network.

A `Nat` has a public address in its parent realm and owns a LAN realm. Its behaviour is
the three RFC 4787 knobs plus the port allocation quirks hole punching has to live with:

* mapping (REQ-1): which outbound flows share one public port: all flows from a LAN
  endpoint (endpoint-independent), those to one remote address (address-dependent) or
  to one remote address and port (address-and-port-dependent, the "symmetric" NAT);
* filtering (REQ-8): which inbound datagrams a mapping lets in: from anyone, from
  addresses it has sent to, or from exact endpoints it has sent to;
* port allocation: preserve the LAN port, take the next free port after the last one
  (Check Point FireWall-1 style), pick at random, or add a fixed offset (1414 -> 31414);
* mapping timeout, refreshed only by outbound traffic; hairpinning on or off;
* background traffic: other LAN hosts opening flows that take public ports;
* port forwards (UPnP IGD, NAT-PMP, PCP), with Linux conntrack's answer to a clash: a datagram
  through a forward from a remote the LAN endpoint already has an outbound flow to reaches it
  from another source port, and what it sends there leaves from the forwarded port;
* whether UDP may leave the LAN at all (`udp_out`: some sites let only TCP out);
* packets to and from some addresses held back a while each way (`hold_back`, as the lab's
  userspace NAT's delays: a site whose server relay is far).

Each protocol has its own `MappingTable` (its own port space, as conntrack keeps): UDP's here,
TCP's in the box's TCP side (`meshvpn.sim.tcpnat.TcpNat`, RFC 5382), which `outbound` and
`inbound` hand every TCP segment to.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from meshvpn.sim.clock import TimerHandle
from meshvpn.sim.network import Datagram, Endpoint, Link, Network, Realm

if TYPE_CHECKING:
    from meshvpn.sim.tcp import Segment
    from meshvpn.sim.tcpnat import TcpNat

BACKGROUND_LAN_IP = "background"
"""Source address of synthetic background flows; never a real member of the LAN."""


class Dependence(enum.Enum):
    """How much of the remote endpoint a mapping or filtering decision looks at."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"

    def narrow(self, remote: Endpoint) -> object:
        """The part of `remote` that this behaviour distinguishes flows by."""
        if self is Dependence.ENDPOINT_INDEPENDENT:
            return None
        if self is Dependence.ADDRESS_DEPENDENT:
            return remote[0]
        return remote


class PortAllocation(enum.Enum):
    """How a NAT picks the public port of a new mapping."""

    PRESERVE = "preserve"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    RANGE_OFFSET = "range-offset"


@dataclass(frozen=True)
class NatBehavior:
    """Everything that tells one NAT model from another."""

    mapping: Dependence = Dependence.ENDPOINT_INDEPENDENT
    """Which outbound flows share a public port (RFC 4787 section 4.1)."""
    filtering: Dependence = Dependence.ADDRESS_AND_PORT_DEPENDENT
    """Which inbound datagrams a mapping admits (RFC 4787 section 5)."""
    ports: PortAllocation = PortAllocation.PRESERVE
    """How the public port of a new mapping is chosen."""
    mapping_timeout: float = 30.0
    """Seconds a mapping lives after the last outbound datagram through it."""
    hairpinning: bool = False
    """Whether LAN hosts can reach each other through the NAT's public address."""
    port_base: int = 30000
    """Range-offset: added to the LAN port; sequential: the first port is port_base + 1."""
    port_min: int = 1024
    """Lowest public port the NAT hands out."""
    port_max: int = 65535
    """Highest public port the NAT hands out."""


FULL_CONE = NatBehavior(filtering=Dependence.ENDPOINT_INDEPENDENT)
RESTRICTED_CONE = NatBehavior(filtering=Dependence.ADDRESS_DEPENDENT)
PORT_RESTRICTED_CONE = NatBehavior()
"""What Linux netfilter masquerading does: the friendliest NAT that is still common."""
SYMMETRIC_RANDOM = NatBehavior(mapping=Dependence.ADDRESS_AND_PORT_DEPENDENT,
                               ports=PortAllocation.RANDOM)
SYMMETRIC_SEQUENTIAL = NatBehavior(mapping=Dependence.ADDRESS_AND_PORT_DEPENDENT,
                                   ports=PortAllocation.SEQUENTIAL)


@dataclass
class NatMapping:
    """One public port held for one LAN endpoint (and remote, per mapping behaviour)."""

    lan: Endpoint
    public: Endpoint
    flow: tuple[Endpoint, object]
    """The LAN endpoint and the remote narrowed by the mapping behaviour: the lookup key."""
    expires: float
    permitted: set[object] = field(default_factory=set)
    """Remotes, narrowed by the filtering behaviour, that the LAN side has sent to."""
    remotes: set[Endpoint] = field(default_factory=set)
    """The exact remotes the LAN side has sent to through this mapping (its conntrack entries)."""


@dataclass
class RemappedFlow:
    """A flow in through a port forward whose remote the NAT shows the LAN under another port.

    Linux conntrack on a clash: the LAN endpoint already had an outbound flow to the remote (after a
    flush its own packet went first, and masquerading gave it a new public port), so the forwarded
    flow's reply tuple is taken, and the NAT's implicit source binding picks another port for the
    remote. The LAN endpoint sees the remote as `seen`; what it sends to `seen` leaves from `public`
    to `remote`. `tests/lab/test_portmap_remap_lab.py` shows the kernel doing it.
    """

    lan: Endpoint
    public: Endpoint
    remote: Endpoint
    seen: Endpoint
    expires: float
    """Refreshed by traffic either way, as a conntrack entry is."""


class MappingTable:
    """The mappings of one protocol of the NAT at public address `ip`."""

    def __init__(self, network: Network, ip: str, behavior: NatBehavior) -> None:
        self.network, self.ip, self.behavior = network, ip, behavior
        self._by_flow: dict[tuple[Endpoint, object], NatMapping] = {}
        self._by_port: dict[int, NatMapping] = {}
        self._forwards: dict[int, Endpoint] = {}
        self._remapped_in: dict[tuple[int, Endpoint], RemappedFlow] = {}
        self._remapped_out: dict[tuple[Endpoint, Endpoint], RemappedFlow] = {}
        self._last_port = behavior.port_base

    @property
    def now(self) -> float:
        return self.network.scheduler.now

    def active(self) -> list[NatMapping]:
        """The mappings that have not expired, oldest port first."""
        return [m for _, m in sorted(self._by_port.items()) if m.expires > self.now]

    def flush(self) -> None:
        """Forget every mapping, as a NAT reboot or a conntrack flush does."""
        self._by_flow.clear()
        self._by_port.clear()
        self._remapped_in.clear()
        self._remapped_out.clear()

    def expire_towards(self, address: str) -> int:
        """The mappings that sent to `address` expire now, as conntrack entries no packet refreshed
        in time do; how many."""
        dead = [mapping for mapping in self.active() if any(remote[0] == address for remote in mapping.remotes)]
        for mapping in dead:
            self._remove(mapping)
        return len(dead)

    def rebind(self) -> None:
        """Forget every mapping and let other hosts take their public ports."""
        ports = list(self._by_port)
        self.flush()
        expires = self.now + self.behavior.mapping_timeout
        for port in ports:
            lan = (BACKGROUND_LAN_IP, port)
            mapping = NatMapping(lan, (self.ip, port), (lan, None), expires)
            self._by_flow[mapping.flow] = mapping
            self._by_port[port] = mapping

    def forward(self, public_port: int, lan: Endpoint) -> None:
        """Anyone may reach `lan` at `public_port`, and its replies leave from that port."""
        self._forwards[public_port] = lan

    def outbound(self, lan: Endpoint, remote: Endpoint, lifetime: Optional[float] = None) -> Optional[NatMapping]:
        """Find or make the mapping of a flow from `lan` to `remote` and keep it `lifetime` seconds
        more (the behaviour's timeout by default); None when every port is taken."""
        behavior = self.behavior
        flow = (lan, behavior.mapping.narrow(remote))
        mapping = self._live(self._by_flow.get(flow))
        if mapping is None:
            port = self._allocate_port(lan[1])
            if port is None:
                return None
            mapping = NatMapping(lan, (self.ip, port), flow, 0.0)
            self._by_flow[flow] = mapping
            self._by_port[port] = mapping
        lifetime = behavior.mapping_timeout if lifetime is None else lifetime
        mapping.expires = max(mapping.expires, self.now + lifetime)
        mapping.permitted.add(behavior.filtering.narrow(remote))
        mapping.remotes.add(remote)
        return mapping

    def remapped_out(self, lan: Endpoint, dst: Endpoint) -> Optional[RemappedFlow]:
        """The remapped forwarded flow a packet from `lan` to `dst` answers, refreshed, if it is one."""
        remapped = self._live_remapped(self._remapped_out.get((lan, dst)))
        if remapped is not None:
            remapped.expires = self.now + self.behavior.mapping_timeout
        return remapped

    def inbound(self, public_port: int, remote: Endpoint) -> tuple[Optional[Endpoint], Endpoint, str]:
        """Where a packet from `remote` to `public_port` goes inside and the source it shows there,
        or None and why it is dropped."""
        lan = self._forwards.get(public_port)
        if lan is not None:
            return lan, self._forwarded_inbound(public_port, remote, lan), ""
        mapping = self._live(self._by_port.get(public_port))
        if mapping is None:
            return None, remote, "no mapping"
        if self.behavior.filtering.narrow(remote) not in mapping.permitted:
            return None, remote, "filtered"
        return mapping.lan, remote, ""

    def _forwarded_inbound(self, public_port: int, remote: Endpoint, lan: Endpoint) -> Endpoint:
        """A packet to a forwarded port joins the flow it belongs to, or one that clashes with an
        outbound flow to the same remote is shown from another port (`RemappedFlow`); its source there."""
        remapped = self._live_remapped(self._remapped_in.get((public_port, remote)))
        flow = (lan, self.behavior.mapping.narrow(remote))
        outbound = self._live(self._by_flow.get(flow))
        if remapped is None and outbound is not None and outbound.public != (self.ip, public_port) \
                and self._tuple_taken(lan, remote):
            remapped = self._remap(lan, public_port, remote)
        if remapped is not None:
            remapped.expires = self.now + self.behavior.mapping_timeout
            return remapped.seen
        if outbound is None:
            self._by_flow[flow] = NatMapping(lan, (self.ip, public_port), flow, self.now)
        self._by_flow[flow].expires = self.now + self.behavior.mapping_timeout
        self._by_flow[flow].permitted.add(self.behavior.filtering.narrow(remote))
        return remote

    def _remap(self, lan: Endpoint, public_port: int, remote: Endpoint) -> RemappedFlow:
        """Give the remote of a clashing forwarded flow a port the LAN endpoint has no flow to
        (the kernel's implicit source binding: a port of 1024-65535 from a random start)."""
        ip = remote[0]
        port = self.network.rng.randrange(1024, 65536)
        while self._tuple_taken(lan, (ip, port)):
            port = 1024 + (port - 1023) % 64512
        remapped = RemappedFlow(lan, (self.ip, public_port), remote, (ip, port), 0.0)
        self._remapped_in[(public_port, remote)] = remapped
        self._remapped_out[(lan, remapped.seen)] = remapped
        return remapped

    def _tuple_taken(self, lan: Endpoint, remote: Endpoint) -> bool:
        """Whether `lan` has a live flow with exactly `remote`, out through a mapping or remapped."""
        if self._live_remapped(self._remapped_out.get((lan, remote))) is not None:
            return True
        mapping = self._live(self._by_flow.get((lan, self.behavior.mapping.narrow(remote))))
        return mapping is not None and remote in mapping.remotes

    def _live_remapped(self, remapped: RemappedFlow | None) -> RemappedFlow | None:
        """`remapped` if it has not expired; an expired one is removed."""
        if remapped is not None and remapped.expires <= self.now:
            del self._remapped_in[(remapped.public[1], remapped.remote)]
            del self._remapped_out[(remapped.lan, remapped.seen)]
            return None
        return remapped

    def _live(self, mapping: NatMapping | None) -> NatMapping | None:
        """`mapping` if it has not expired; an expired one is removed."""
        if mapping is not None and mapping.expires <= self.now:
            self._remove(mapping)
            return None
        return mapping

    def _remove(self, mapping: NatMapping) -> None:
        if self._by_port.get(mapping.public[1]) is mapping:
            del self._by_port[mapping.public[1]]
        del self._by_flow[mapping.flow]

    def _allocate_port(self, lan_port: int) -> int | None:
        """Pick the public port for a new mapping, or None if every port is taken."""
        behavior = self.behavior
        low, high = behavior.port_min, behavior.port_max
        span = high - low + 1
        if behavior.ports is PortAllocation.RANDOM:
            for _ in range(64):
                port = self.network.rng.randrange(low, high + 1)
                if self._is_free(port):
                    return port
            preferred = port
        elif behavior.ports is PortAllocation.SEQUENTIAL:
            preferred = self._last_port + 1
        elif behavior.ports is PortAllocation.RANGE_OFFSET:
            preferred = behavior.port_base + lan_port
        else:
            preferred = lan_port
        for step in range(span):
            port = low + (preferred - low + step) % span
            if self._is_free(port):
                self._last_port = port
                return port
        return None

    def _is_free(self, port: int) -> bool:
        return port not in self._forwards and self._live(self._by_port.get(port)) is None


class Nat:
    """A NAT box: public address `ip` in `realm`, and a LAN realm of its own (`lan`)."""

    def __init__(self, network: Network, ip: str, behavior: NatBehavior = PORT_RESTRICTED_CONE,
                 realm: Realm | None = None, link: Link | None = None) -> None:
        self.network = network
        self.ip = ip
        self.behavior = behavior
        self.realm = realm if realm is not None else network.internet
        self.link = link if link is not None else Link()
        self.lan = Realm(network, f"lan of {ip}", gateway=self)
        self.udp = MappingTable(network, ip, behavior)
        """The UDP mappings."""
        self.tcp: Optional[TcpNat] = None
        """The box's TCP side (`meshvpn.sim.tcpnat.TcpNat`), once one is attached: TCP is dropped until then."""
        self.udp_out = True
        """Whether UDP from the LAN may leave (a site that blocks UDP sets it False)."""
        self.held_back: dict[str, float] = {}
        """Remote address -> seconds its UDP packets are held back, each way (`hold_back`)."""
        self._background_rate = 0.0
        self._background_timer: TimerHandle | None = None
        self._background_flows = 0
        self.realm.attach(self)

    def active_mappings(self) -> list[NatMapping]:
        """The UDP mappings that have not expired, oldest port first."""
        return self.udp.active()

    def flush(self) -> None:
        """Forget every mapping, as a NAT reboot or a conntrack flush does."""
        self.udp.flush()
        if self.tcp is not None:
            self.tcp.table.flush()

    def rebind(self) -> None:
        """Forget every mapping and let other hosts take their public ports, so every LAN
        endpoint's next flow gets a new one (a conntrack flush on a busy NAT)."""
        self.udp.rebind()
        if self.tcp is not None:
            self.tcp.table.rebind()

    def outbound(self, dgram: Datagram) -> None:
        """Translate a datagram leaving the LAN and send it towards the parent realm."""
        if dgram.proto != "udp":
            self._tcp(dgram, inbound=False)
            return
        if not self.udp_out and dgram.dst[0] != self.ip:
            self.network.drops["udp blocked"] += 1
            return
        remapped = self.udp.remapped_out(dgram.src, dgram.dst)
        if remapped is not None:
            self._uplink(Datagram(remapped.public, remapped.remote, dgram.data))
            return
        mapping = self.udp.outbound(dgram.src, dgram.dst)
        if mapping is None:
            self.network.drops["nat ports exhausted"] += 1
            return
        self.send_translated(Datagram(mapping.public, dgram.dst, dgram.data))

    def send_translated(self, packet: Datagram) -> None:
        """Send a packet that has its public source towards the parent realm, or hairpin it."""
        if packet.dst[0] == self.ip:
            if self.behavior.hairpinning:
                self.inbound(packet)
            else:
                self.network.drops["no hairpinning"] += 1
            return
        self._uplink(packet)

    def _uplink(self, packet: Datagram) -> None:
        delay = self.held_back.get(packet.dst[0], 0.0) if packet.proto == "udp" else 0.0
        if delay:
            self.network.scheduler.call_later(delay, self.network.transmit, self.link, self.link.up,
                                              self.realm.route, packet)
        else:
            self.network.transmit(self.link, self.link.up, self.realm.route, packet)

    def receive(self, dgram: Datagram) -> None:
        """A datagram from the parent realm reached the public address."""
        delay = self.held_back.get(dgram.src[0], 0.0) if dgram.proto == "udp" else 0.0
        if delay:
            self.network.scheduler.call_later(delay, self.inbound, dgram)
        else:
            self.inbound(dgram)

    def hold_back(self, address: str, seconds: float) -> None:
        """Hold UDP to and from `address` back `seconds` each way (a far server, as the lab's
        `UserNat.with_delay`)."""
        self.held_back[address] = seconds

    def forward(self, public_port: int, lan: Endpoint) -> None:
        """A port forward, as UPnP IGD, NAT-PMP and PCP ask for: anyone may send to `public_port`,
        and replies leave from it (conntrack keeps the inbound flow, as a kernel NAT does)."""
        self.udp.forward(public_port, lan)

    def inbound(self, dgram: Datagram) -> None:
        """Translate a datagram to a public port back to its LAN endpoint, if admitted."""
        if dgram.proto != "udp":
            self._tcp(dgram, inbound=True)
            return
        lan, seen, why = self.udp.inbound(dgram.dst[1], dgram.src)
        if lan is None:
            self.network.drops[why] += 1
            return
        self.lan.route(Datagram(seen, lan, dgram.data))

    def _tcp(self, segment: Segment, inbound: bool) -> None:
        if self.tcp is None:
            self.network.drops["no tcp"] += 1
        elif inbound:
            self.tcp.inbound(segment)
        else:
            self.tcp.outbound(segment)

    def set_background_traffic(self, flows_per_second: float) -> None:
        """Let other LAN hosts open new flows at this average rate (0 stops them).

        Arrivals are a Poisson process; each flow takes a public port for one mapping
        timeout, which is what defeats port prediction on busy sequential NATs.
        """
        if self._background_timer is not None:
            self._background_timer.cancel()
            self._background_timer = None
        self._background_rate = flows_per_second
        if flows_per_second > 0:
            self._schedule_background_flow()

    def _schedule_background_flow(self) -> None:
        gap = -math.log(1.0 - self.network.rng.random()) / self._background_rate
        self._background_timer = self.network.scheduler.call_later(gap, self._background_flow)

    def _background_flow(self) -> None:
        self._background_flows += 1
        n = self._background_flows
        lan = (BACKGROUND_LAN_IP, 1024 + n % 60000)
        remote = ("198.51.100.250", 1024 + self.network.rng.randrange(0, 60000))
        if self.udp.outbound(lan, remote) is None:
            self.network.drops["nat ports exhausted"] += 1
        self._schedule_background_flow()

