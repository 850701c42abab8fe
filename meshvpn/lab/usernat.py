"""A userspace NAT for lab routers: every RFC 4787 behaviour the kernel cannot be told to have.

nftables gives us port preservation and fully random ports, both with address-and-port-
dependent filtering. Hard-NAT traversal needs more: sequential port allocation (Check Point
FireWall-1, as in the seed article), endpoint-independent or address-dependent filtering,
address-dependent mapping, short mapping timeouts. This NAT takes its behaviour from
`meshvpn.sim.nat.NatBehavior`, so the simulated and the namespace NATs are configured alike.

Design: one process per router namespace, started by `UserNat.install`.

* It opens a TUN device (`unat0`); policy routing sends it every packet arriving from the LAN
  for elsewhere (`iif lan0`), every LAN packet for the router's public address (hairpinning)
  and every UDP, TCP and ICMP packet arriving on the WAN (`iif wan0`, before the local table,
  which moves from rule priority 0 to 100 so the router's own address does not swallow them).
* Translated packets leave through one raw IPv4 socket (IP_HDRINCL): the kernel routes them
  out of the WAN or LAN interface as if the router had made them, spoofed source included.

`NatTable` is the sans-IO mapping state, `Translator` rewrites packets with it; the shell at
the bottom is ~60 lines of sockets and `ip` commands. UDP, TCP and ICMP echo are translated
(ICMP's identifier takes the role of the port); anything else from the WAN is dropped.
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import itertools
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Callable

from meshvpn.lab.netns import LabError, Namespace
from meshvpn.sim.nat import Dependence, NatBehavior, PortAllocation

if TYPE_CHECKING:
    from meshvpn.lab.nat import RouterLinks

Endpoint = tuple[str, int]

TUN_NAME = "unat0"
ROUTE_TABLE = "100"
LOCAL_RULE_PRIORITY = "100"
"""Where the local table's rule moves, so WAN traffic for the router's address reaches the NAT."""
WAN_PROTOCOLS = ("udp", "tcp", "icmp")
READY = "ready"
SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired mappings."""

UDP, TCP, ICMP = 17, 6, 1
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
_CHECKSUM_OFFSET = {UDP: 6, TCP: 16, ICMP: 2}

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


# ---- mapping state (sans-IO) ----------------------------------------------------------------


@dataclass
class Mapping:
    """One public port held for one inside endpoint (and remote, per the mapping behaviour)."""

    proto: int
    lan: Endpoint
    port: int
    """The public port (ICMP: the public echo identifier)."""
    flow: tuple
    """Lookup key: protocol, inside endpoint and the remote narrowed by the mapping behaviour."""
    expires: float
    permitted: set = field(default_factory=set)
    """Remotes, narrowed by the filtering behaviour, the inside host has sent to."""


class NatTable:
    """Mappings of one NAT: found or made by outbound packets, consulted by inbound ones.

    Only outbound packets refresh a mapping (RFC 4787 REQ-6 allows either; this is the
    stricter, commoner choice). `randrange` picks random ports.
    """

    def __init__(self, behavior: NatBehavior, randrange: Callable[[int, int], int]) -> None:
        self.behavior = behavior
        self._randrange = randrange
        self._by_flow: dict[tuple, Mapping] = {}
        self._by_port: dict[tuple[int, int], Mapping] = {}
        self._last_port = {proto: behavior.port_base for proto in (UDP, TCP, ICMP)}

    def __len__(self) -> int:
        return len(self._by_port)

    def outbound(self, proto: int, lan: Endpoint, remote: Endpoint, now: float) -> Mapping | None:
        """The mapping an inside packet to `remote` leaves through; None when ports ran out."""
        flow = (proto, lan, self.behavior.mapping.narrow(remote))
        mapping = self._live(self._by_flow.get(flow), now)
        if mapping is None:
            port = self._allocate(proto, lan[1], now)
            if port is None:
                return None
            mapping = Mapping(proto, lan, port, flow, 0.0)
            self._by_flow[flow] = mapping
            self._by_port[(proto, port)] = mapping
        mapping.expires = now + self.behavior.mapping_timeout
        mapping.permitted.add(self.behavior.filtering.narrow(remote))
        return mapping

    def inbound(self, proto: int, port: int, remote: Endpoint, now: float) -> Endpoint | None:
        """The inside endpoint a packet from `remote` to public `port` goes to, if admitted."""
        mapping = self._live(self._by_port.get((proto, port)), now)
        if mapping is None or self.behavior.filtering.narrow(remote) not in mapping.permitted:
            return None
        return mapping.lan

    def expire(self, now: float) -> None:
        """Drop every mapping that has timed out."""
        for mapping in [m for m in self._by_port.values() if m.expires <= now]:
            self._remove(mapping)

    def _live(self, mapping: Mapping | None, now: float) -> Mapping | None:
        if mapping is not None and mapping.expires <= now:
            self._remove(mapping)
            return None
        return mapping

    def _remove(self, mapping: Mapping) -> None:
        del self._by_port[(mapping.proto, mapping.port)]
        del self._by_flow[mapping.flow]

    def _allocate(self, proto: int, lan_port: int, now: float) -> int | None:
        """The public port of a new mapping: the preferred one, else the next free after it."""
        b = self.behavior
        span = b.port_max - b.port_min + 1
        if b.ports is PortAllocation.RANDOM:
            preferred = self._randrange(b.port_min, b.port_max + 1)
        elif b.ports is PortAllocation.SEQUENTIAL:
            preferred = self._last_port[proto] + 1
        elif b.ports is PortAllocation.RANGE_OFFSET:
            preferred = b.port_base + lan_port
        else:
            preferred = lan_port
        for step in range(span):
            port = b.port_min + (preferred - b.port_min + step) % span
            if self._live(self._by_port.get((proto, port)), now) is None:
                self._last_port[proto] = port
                return port
        return None


# ---- packet rewriting (sans-IO) -------------------------------------------------------------


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def adjust_checksum(checksum: int, old: bytes, new: bytes) -> int:
    """A ones'-complement checksum after `old` became `new` (RFC 1624, eqn. 3)."""
    total = ~checksum & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~((old[i] << 8) | old[i + 1]) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    return ~_fold(total) & 0xFFFF


@dataclass
class Translator:
    """Rewrites the IPv4 packets the TUN device hands over; drops what the NAT must not pass."""

    table: NatTable
    wan_addr: str
    lan_net: str
    drops: dict = field(default_factory=dict)
    """Dropped packets by reason."""

    def __post_init__(self) -> None:
        self._wan = socket.inet_aton(self.wan_addr)
        self._lan = IPv4Network(self.lan_net)

    def translate(self, packet: bytearray, now: float) -> bytearray | None:
        """The rewritten packet to send on (destination in its header), or None to drop it."""
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return self._drop("not IPv4")
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:
            return self._drop("fragment")
        if proto not in _CHECKSUM_OFFSET or len(packet) < ihl + (4 if proto == UDP else 8):
            return self._drop("protocol")
        src_ip, dst_ip = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        sport, dport = self._ports(packet, ihl, proto)
        if sport is None:
            return self._drop("ICMP other than echo")
        public_src = None
        remote = (src_ip, sport)
        if IPv4Address(src_ip) in self._lan:
            mapping = self.table.outbound(proto, remote, (dst_ip, dport), now)
            if mapping is None:
                return self._drop("ports exhausted")
            public_src = (self.wan_addr, mapping.port)
            if packet[16:20] != self._wan:
                return self._rewrite(packet, ihl, proto, public_src, None)
            if not self.table.behavior.hairpinning:
                return self._drop("no hairpinning")
            remote = public_src
        inside = self.table.inbound(proto, dport, remote, now)
        if inside is None:
            return self._drop("filtered or no mapping")
        return self._rewrite(packet, ihl, proto, public_src, inside)

    def _ports(self, packet: bytearray, ihl: int, proto: int) -> tuple[int | None, int]:
        """(source port, destination port); for ICMP echo the identifier stands for the inside port."""
        if proto != ICMP:
            return struct.unpack_from("!HH", packet, ihl)
        kind, ident = packet[ihl], struct.unpack_from("!H", packet, ihl + 4)[0]
        if kind == ICMP_ECHO_REQUEST:
            return ident, 0
        if kind == ICMP_ECHO_REPLY:
            return 0, ident
        return None, 0

    def _rewrite(self, packet: bytearray, ihl: int, proto: int, src: Endpoint | None, dst: Endpoint | None) -> bytearray:
        """Put `src` and/or `dst` into the packet, fixing the IP and transport checksums.

        ICMP echo has one identifier: a request's stands for its source port, a reply's for
        its destination port, and only that side is ever rewritten.
        """
        sum_at = ihl + _CHECKSUM_OFFSET[proto]
        l4_sum = struct.unpack_from("!H", packet, sum_at)[0]
        ip_sum = struct.unpack_from("!H", packet, 10)[0]
        for addr_at, port_at, endpoint in ((12, ihl, src), (16, ihl + 2, dst)):
            if endpoint is None:
                continue
            if proto == ICMP:
                port_at = ihl + 4
            old_addr, new_addr = bytes(packet[addr_at:addr_at + 4]), socket.inet_aton(endpoint[0])
            old_port, new_port = bytes(packet[port_at:port_at + 2]), struct.pack("!H", endpoint[1])
            ip_sum = adjust_checksum(ip_sum, old_addr, new_addr)
            if proto != ICMP:
                l4_sum = adjust_checksum(l4_sum, old_addr, new_addr)
            l4_sum = adjust_checksum(l4_sum, old_port, new_port)
            packet[addr_at:addr_at + 4] = new_addr
            packet[port_at:port_at + 2] = new_port
        struct.pack_into("!H", packet, 10, ip_sum)
        if proto != UDP or struct.unpack_from("!H", packet, sum_at)[0]:
            struct.pack_into("!H", packet, sum_at, l4_sum or (0xFFFF if proto == UDP else 0))
        return packet

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return None


# ---- the NAT kind and its process -----------------------------------------------------------


@dataclass(frozen=True)
class UserNat:
    """A `Nat` run by a userspace process in the router namespace (see the module docstring)."""

    name: str
    """Short name used in logs and test ids."""
    behavior: NatBehavior
    """Mapping, filtering, port allocation, timeout and hairpinning."""
    seed: int | None = None
    """Seed of the random port allocator; None draws one from the OS."""
    delays: tuple[tuple[str, float], ...] = ()
    """Remote addresses whose packets, both ways, the NAT holds back this many seconds: a far
    server where the kernel has no netem (`with_delay`)."""

    @property
    def translates(self) -> bool:
        """Always: a userspace NAT exists to translate."""
        return True

    def with_hairpin(self, hairpin: bool = True) -> UserNat:
        """The same NAT with hairpinning switched on (or off)."""
        return dataclasses.replace(self, behavior=dataclasses.replace(self.behavior, hairpinning=hairpin))

    def with_behavior(self, **changes: object) -> UserNat:
        """The same NAT with some `NatBehavior` fields changed (e.g. `mapping_timeout=5`)."""
        return dataclasses.replace(self, behavior=dataclasses.replace(self.behavior, **changes))

    def with_delay(self, address: str, seconds: float) -> UserNat:
        """The same NAT, holding back packets to and from `address` by `seconds` each way."""
        return dataclasses.replace(self, delays=(*self.delays, (address, seconds)))

    def spec(self, router: RouterLinks) -> str:
        """The JSON argument of the NAT process."""
        b = self.behavior
        return json.dumps({
            "wan_addr": router.wan_addr, "lan_net": router.lan_net, "seed": self.seed,
            "mapping": b.mapping.value, "filtering": b.filtering.value, "ports": b.ports.value,
            "mapping_timeout": b.mapping_timeout, "hairpinning": b.hairpinning,
            "port_base": b.port_base, "port_min": b.port_min, "port_max": b.port_max,
            "delays": dict(self.delays),
        })

    def install(self, router: RouterLinks) -> None:
        """Start the NAT process, then steer LAN and WAN traffic through its TUN device."""
        running = _PROCESSES.get(router.ns.name)
        if running is not None and running.poll() is None:
            raise LabError(f"a userspace NAT already runs in {router.ns.short}")
        proc = router.ns.popen([sys.executable, "-c", _ENTRY, self.spec(router)], stdout=subprocess.PIPE, text=True)
        _PROCESSES[router.ns.name] = proc
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if line != READY:
            self.uninstall(router)
            raise LabError(f"userspace NAT in {router.ns.short} did not start: {line!r}")
        for key in ("all", "default", router.wan_if, router.lan_if):
            router.ns.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
        router.ns.ip("route", "replace", "default", "dev", TUN_NAME, "table", ROUTE_TABLE)
        for rule in _rules(router):
            router.ns.ip("rule", "add", *rule)
        router.ns.ip("rule", "add", "pref", LOCAL_RULE_PRIORITY, "lookup", "local")
        router.ns.ip("rule", "del", "pref", "0", "lookup", "local")

    def uninstall(self, router: RouterLinks) -> None:
        """Restore plain routing and stop the NAT process (its TUN device goes with it)."""
        rules = router.ns.ip("rule", "show")
        if f"{LOCAL_RULE_PRIORITY}:\tfrom all lookup local" in rules:
            router.ns.ip("rule", "add", "pref", "0", "lookup", "local")
            router.ns.ip("rule", "del", "pref", LOCAL_RULE_PRIORITY, "lookup", "local")
        for rule in _rules(router):
            _run_quietly(router, "rule", "del", *rule)
        proc = _PROCESSES.pop(router.ns.name, None)
        if proc is not None:
            router.ns.stop(proc)


_ENTRY = "import json, sys; from meshvpn.lab.usernat import serve; serve(json.loads(sys.argv[1]))"
"""The NAT process's program (not `-m`, which would import this module twice)."""

_PROCESSES: dict[str, subprocess.Popen] = {}
"""The NAT process of each router namespace, by namespace name (a lab's teardown may have ended it)."""


def _rules(router: RouterLinks) -> list[tuple[str, ...]]:
    """Policy rules that send traffic to be translated into the TUN device's table."""
    to_nat = ("lookup", ROUTE_TABLE)
    wan = [("pref", str(10 + i), "iif", router.wan_if, "ipproto", proto, *to_nat) for i, proto in enumerate(WAN_PROTOCOLS)]
    return wan + [
        ("pref", "20", "iif", router.lan_if, "to", router.wan_addr, *to_nat),
        ("pref", "200", "iif", router.lan_if, *to_nat),
    ]


def _run_quietly(router: RouterLinks, *args: str) -> None:
    router.ns.run(["ip", *args], check=False)


def behavior_from_spec(spec: dict) -> NatBehavior:
    """The `NatBehavior` a process spec describes (the inverse of `UserNat.spec`)."""
    return NatBehavior(
        mapping=Dependence(spec["mapping"]), filtering=Dependence(spec["filtering"]),
        ports=PortAllocation(spec["ports"]), mapping_timeout=spec["mapping_timeout"],
        hairpinning=spec["hairpinning"], port_base=spec["port_base"],
        port_min=spec["port_min"], port_max=spec["port_max"],
    )


def open_tun(name: str) -> int:
    """A non-persistent TUN device without packet info: it disappears with this process."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return fd


def serve(spec: dict) -> None:
    """Translate packets from the TUN device until killed."""
    rng = random.Random(spec["seed"])
    translator = Translator(NatTable(behavior_from_spec(spec), rng.randrange), spec["wan_addr"], spec["lan_net"])
    tun = open_tun(TUN_NAME)
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    delays: dict[str, float] = spec.get("delays") or {}
    held: list[tuple[float, int, bytearray]] = []
    """Packets held back (`UserNat.delays`), by when they leave (then in arrival order)."""
    order = itertools.count()
    print(READY, flush=True)
    next_sweep = time.monotonic() + SWEEP_INTERVAL
    while True:
        wait = SWEEP_INTERVAL if not held else min(SWEEP_INTERVAL, max(0.0, held[0][0] - time.monotonic()))
        readable, _, _ = select.select([tun], [], [], wait)
        now = time.monotonic()
        if readable:
            packet = translator.translate(bytearray(os.read(tun, 65535)), now)
            delay = 0.0 if packet is None else delays.get(socket.inet_ntoa(packet[16:20]),
                                                          delays.get(socket.inet_ntoa(packet[12:16]), 0.0))
            if delay:
                heapq.heappush(held, (now + delay, next(order), packet))
            elif packet is not None:
                _send(out, packet, translator)
        while held and held[0][0] <= now:
            _send(out, heapq.heappop(held)[2], translator)
        if now >= next_sweep:
            translator.table.expire(now)
            next_sweep = now + SWEEP_INTERVAL


def _send(out: socket.socket, packet: bytearray, translator: Translator) -> None:
    try:
        out.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
    except OSError:
        translator.drops["send failed"] = translator.drops.get("send failed", 0) + 1


BACKGROUND_SCRIPT = r"""
import random, socket, sys, time
target, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"background", (target, random.randrange(20000, 60000)))
    time.sleep(random.expovariate(rate))
"""


def background_traffic(ns: Namespace, target: str, flows_per_second: float, seconds: float = 600.0) -> subprocess.Popen:
    """Start a process in `ns` that opens new UDP flows to `target` at a Poisson rate.

    Each flow takes a public port on a sequential NAT, which is what port prediction must
    survive. The process ends by itself after `seconds` (and with the lab).
    """
    return ns.popen([sys.executable, "-c", BACKGROUND_SCRIPT, target, str(flows_per_second), str(seconds)])
