"""NAT behaviours for lab routers, as nftables rule sets in table `ip meshvpn_nat`.

A NAT is anything with `install(router)` and `uninstall(router)` (the `Nat` protocol), so a
userspace NAT running as a process in the router namespace plugs in beside the kernel ones
below. `NatKind` names the kernel behaviours; `set_nat` swaps one for another on a live router
and forgets existing mappings, as a router reboot would.

Mappings are flushed by speaking ctnetlink directly (`flush_conntrack_here`, run in a child
inside the namespace), so the `conntrack` tool is not needed.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Protocol

from meshvpn.lab.netns import LabError, Namespace
from meshvpn.lab.usernat import UserNat
from meshvpn.sim.nat import FULL_CONE, RESTRICTED_CONE, SYMMETRIC_SEQUENTIAL, Dependence, NatBehavior, PortAllocation

TABLE = "meshvpn_nat"
TABLE6 = "meshvpn_fw6"
PORT_RANGE = (30000, 40000)
HAIRPIN_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class RouterLinks:
    """What a NAT needs to know about the router namespace it runs in."""

    ns: Namespace
    """The router's namespace."""
    wan_if: str
    """Interface towards the internet (or towards a carrier-grade NAT)."""
    lan_if: str
    """The LAN bridge the site's hosts hang off."""
    wan_addr: str
    """The router's public (outside) address."""
    lan_net: str
    """The site's inside prefix, e.g. `10.1.0.0/24`."""


class Nat(Protocol):
    """A NAT behaviour that can be put on and taken off a router."""

    name: str

    @property
    def translates(self) -> bool:
        """Whether inside addresses are rewritten; if not, the LAN is routed from outside."""

    def install(self, router: RouterLinks) -> None:
        """Start translating (and filtering) on `router`."""

    def uninstall(self, router: RouterLinks) -> None:
        """Stop translating on `router`, leaving plain routing."""


@dataclass(frozen=True)
class NftNat:
    """A NAT made of kernel nftables rules; mapping state lives in conntrack."""

    name: str
    """Short name used in logs and test ids."""
    behaviour: str
    """Mapping and filtering in RFC 4787 terms, for documentation."""
    translate: tuple[str, ...]
    """Source-NAT rules for traffic leaving the WAN (`{wan}` is the WAN address); none: route."""
    firewall: bool = True
    """Let in from the WAN only what belongs to a connection started inside."""
    block_udp: bool = False
    """Drop UDP from the LAN to the WAN (TCP still works)."""
    tcp_ports: tuple[int, ...] = ()
    """If set, TCP from the LAN to the WAN leaves only to these destination ports."""
    hairpin: bool = False
    """Loop LAN packets sent to the router's own public mappings back in (RFC 4787 REQ-9)."""

    @property
    def translates(self) -> bool:
        """Whether inside addresses are rewritten; if not, the LAN is routed from outside."""
        return bool(self.translate)

    def with_hairpin(self, hairpin: bool = True) -> NftNat:
        """The same NAT with hairpinning switched on (or off)."""
        return dataclasses.replace(self, hairpin=hairpin)

    def ruleset(self, router: RouterLinks) -> str:
        """The nft script that replaces table `ip meshvpn_nat` with this behaviour."""
        wan, lan = f'"{router.wan_if}"', f'"{router.lan_if}"'
        chains = []
        if self.firewall or self.block_udp or self.tcp_ports:
            forward = ["type filter hook forward priority filter; policy accept;"]
            if self.block_udp:
                forward.append(f"iifname {lan} oifname {wan} meta l4proto udp drop")
            if self.tcp_ports:
                ports = ", ".join(str(port) for port in self.tcp_ports)
                forward.append(f"iifname {lan} oifname {wan} tcp dport != {{ {ports} }} drop")
            forward.append("ct state established,related accept")
            if self.firewall:
                forward.append(f"iifname {wan} drop")
            chains.append(("forward", forward))
        if self.firewall:
            chains.append(("input", [
                "type filter hook input priority filter; policy accept;",
                f"iifname {wan} ct state established,related accept",
                f"iifname {wan} icmp type echo-request accept",
                f"iifname {wan} drop",
            ]))
        if self.translates:
            chains.append(("postrouting", [
                "type nat hook postrouting priority srcnat; policy accept;",
                *(f"oifname {wan} {rule.format(wan=router.wan_addr)}" for rule in self.translate),
            ]))
        maps = []
        if self.hairpin and self.translates:
            maps, hairpin_chains = _hairpin(router, wan, lan)
            chains.extend(hairpin_chains)
        return _table("ip", TABLE, chains, maps)

    def install(self, router: RouterLinks) -> None:
        """Atomically replace the router's NAT table with this behaviour."""
        router.ns.run(["nft", "-f", "-"], input=self.ruleset(router))

    def uninstall(self, router: RouterLinks) -> None:
        """Remove the NAT table (a missing table is fine)."""
        router.ns.run(["nft", "-f", "-"], input=f"table ip {TABLE}\ndelete table ip {TABLE}\n")


def _table(family: str, name: str, chains: list[tuple[str, list[str]]], maps: list[str] | None = None) -> str:
    """The nft script that atomically replaces table `family name` with these chains (and maps)."""
    body = list(maps or ()) + [
        f"  chain {chain} {{\n" + "".join(f"    {rule}\n" for rule in rules) + "  }"
        for chain, rules in chains
    ]
    inner = "\n".join(body)
    return f"table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{inner}\n}}\n"


@dataclass(frozen=True)
class Ipv6Firewall:
    """A site's IPv6: routed without translation (every host has a global address) behind a
    stateful firewall that lets out anything and in only replies, as home routers do; or, when
    `broken`, dropping every IPv6 packet while addresses and routes stay (IPv6 broken upstream).
    With `walled_off`, nothing goes to or comes from that prefix (the other sites' LANs) either:
    the site reaches the servers over IPv6, never another site directly. With `block_udp`, no UDP
    crosses it either way (a network that lets only TCP out, over IPv6 too)."""

    broken: bool = False
    walled_off: str | None = None
    block_udp: bool = False

    def ruleset(self, router: RouterLinks) -> str:
        """The nft script that replaces table `ip6 meshvpn_fw6` with this behaviour."""
        wan = f'"{router.wan_if}"'
        forward = ["type filter hook forward priority filter; policy accept;"]
        if self.walled_off is not None:
            forward += [f"oifname {wan} ip6 daddr {self.walled_off} drop", f"iifname {wan} ip6 saddr {self.walled_off} drop"]
        if self.block_udp:
            forward += ["meta l4proto udp drop"]
        forward += ["drop"] if self.broken else ["ct state established,related accept", f"iifname {wan} drop"]
        return _table("ip6", TABLE6, [("forward", forward)])

    def install(self, router: RouterLinks) -> None:
        """Atomically replace the router's IPv6 firewall with this one."""
        router.ns.run(["nft", "-f", "-"], input=self.ruleset(router))


def _hairpin(router: RouterLinks, wan: str, lan: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Maps and chains that send LAN traffic for a public mapping back to its inside owner.

    Conntrack alone cannot do this: a packet from another inside host does not match the
    owner's connection. So each outgoing translated packet records `public port -> inside
    address.port` in a dynamic map, and LAN packets to the WAN address are DNATed through it,
    then source-NATed to the WAN address so the reply returns through the router.
    """
    maps, record, redirect = [], [], []
    for proto in ("udp", "tcp"):
        maps.append(
            f"  map hairpin_{proto} {{ typeof {proto} dport : ip saddr . {proto} sport; "
            f"flags dynamic,timeout; timeout {HAIRPIN_TIMEOUT_SECONDS}s; }}"
        )
        record.append(
            f"oifname {wan} ct status snat update @hairpin_{proto} "
            f"{{ {proto} sport : ct original ip saddr . ct original proto-src }}"
        )
        redirect.append(
            f"iifname {lan} ip daddr {router.wan_addr} dnat ip to {proto} dport map @hairpin_{proto}"
        )
    chains = [
        ("hairpin_record", ["type filter hook postrouting priority srcnat + 10; policy accept;", *record]),
        ("hairpin_in", ["type nat hook prerouting priority dstnat; policy accept;", *redirect]),
        ("hairpin_out", [
            "type nat hook postrouting priority srcnat - 10; policy accept;",
            f"ip saddr {router.lan_net} ip daddr {router.lan_net} ct status dnat snat to {router.wan_addr}",
        ]),
    ]
    return maps, chains


class NatKind:
    """The kernel NAT behaviours a lab site can have."""

    PORT_PRESERVING = NftNat(
        name="port-preserving",
        behaviour="endpoint-independent mapping with port preservation; "
        "address-and-port-dependent filtering",
        translate=("masquerade",),
    )
    RANDOM_PORTS = NftNat(
        name="random-ports",
        behaviour="address-and-port-dependent mapping (a new random port per destination); "
        "address-and-port-dependent filtering",
        translate=("masquerade fully-random",),
    )
    PORT_RANGE = NftNat(
        name="port-range",
        behaviour=f"source ports moved into {PORT_RANGE[0]}-{PORT_RANGE[1]}; "
        "address-and-port-dependent filtering",
        translate=(
            "meta l4proto {{ tcp, udp }} snat to {wan}:" + f"{PORT_RANGE[0]}-{PORT_RANGE[1]}",
            "snat to {wan}",
        ),
    )
    UDP_BLOCKED = NftNat(
        name="udp-blocked",
        behaviour="port-preserving NAT that drops all outgoing UDP; TCP only",
        translate=("masquerade",),
        block_udp=True,
    )
    PORT_443_ONLY = NftNat(
        name="port-443-only",
        behaviour="port-preserving NAT that lets out only TCP to port 443, as hotel and office networks do",
        translate=("masquerade",),
        block_udp=True,
        tcp_ports=(443,),
    )
    NO_NAT = NftNat(
        name="no-nat",
        behaviour="no translation and no filtering: hosts have public addresses",
        translate=(),
        firewall=False,
    )
    SEQUENTIAL = UserNat("sequential", SYMMETRIC_SEQUENTIAL)
    """Userspace: a new port per destination, each the next free one (address-and-port-dependent)."""
    ADDRESS_DEPENDENT = UserNat("address-dependent", NatBehavior(
        mapping=Dependence.ADDRESS_DEPENDENT, filtering=Dependence.ADDRESS_DEPENDENT,
        ports=PortAllocation.SEQUENTIAL))
    """Userspace: one sequential port per destination address, filtering by address."""
    FULL_CONE = UserNat("full-cone", FULL_CONE)
    """Userspace: endpoint-independent mapping and filtering, port preserving."""
    RESTRICTED_CONE = UserNat("restricted-cone", RESTRICTED_CONE)
    """Userspace: endpoint-independent mapping, address-dependent filtering, port preserving."""


def set_nat(router: RouterLinks, old: Nat, new: Nat) -> None:
    """Swap a live router's NAT from `old` to `new` and forget every existing mapping."""
    old.uninstall(router)
    new.install(router)
    flush_conntrack(router.ns)


def flush_conntrack(ns: Namespace) -> None:
    """Delete every IPv4 connection tracking entry in `ns` (what `conntrack -F` does)."""
    ns.run([sys.executable, "-c", "from meshvpn.lab.nat import flush_conntrack_here as f; f()"])


NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST_ACK = 0x1 | 0x4
NLMSG_ERROR = 2


def flush_conntrack_here() -> None:
    """Flush the conntrack table of the calling process's namespace.

    Sends ctnetlink's DELETE with no tuple, which flushes the table, and check the ack."""
    payload = struct.pack("!BBH", socket.AF_INET, 0, 0)
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    header = struct.pack("=IHHII", 16 + len(payload), msg_type, NLM_F_REQUEST_ACK, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.send(header + payload)
        reply = sock.recv(4096)
    _, reply_type, _, _, _ = struct.unpack_from("=IHHII", reply)
    error = struct.unpack_from("=i", reply, 16)[0] if reply_type == NLMSG_ERROR else 0
    if error:
        raise LabError(f"conntrack flush failed: errno {-error}")

