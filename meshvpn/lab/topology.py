"""A declarative builder for lab networks: an internet, servers on it, and NATed sites.

Every node is a namespace of a `Lab`. Links are veth pairs from the node into a `Segment`, a
bridge living in the namespace that routes for it: the internet namespace for the public
segments, a site's router for its LAN. A site can sit behind another site's LAN, which is how a
carrier-grade NAT is built. With `ipv6`, every segment is dual-stack: it also holds an IPv6 /64
of the documentation prefix, each node the IPv6 address with its IPv4 host number, and a site's
IPv6 is routed (no translation) through a stateful firewall on its router (`Ipv6Firewall`).
See docs/lab.md for the address plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network
from typing import TypeVar

from meshvpn.lab.nat import Ipv6Firewall, Nat, NatKind, RouterLinks, set_nat
from meshvpn.lab.netns import Lab, LabError, Namespace

INTERNET = "inet"
PUBLIC_NETS = (ip_network("203.0.113.0/24"), ip_network("198.51.100.0/24"))
"""Public segments, each a bridge in the internet namespace, which routes between them."""
PUBLIC_NETS6 = (ip_network("2001:db8::/64"), ip_network("2001:db8:0:1::/64"))
"""The IPv6 prefixes of the public segments, in the order of PUBLIC_NETS."""
SITE_NETS6 = ip_network("2001:db8:1::/48")
"""Source of the sites' IPv6 LAN prefixes (/64 each)."""
PUBLIC_LAN_POOL = ip_network("192.0.2.0/24")
"""Source of public LANs for sites without NAT, carved into /26 blocks."""
SERVER_OFFSET = 10
ROUTER_OFFSET = 100
HOST_OFFSET = 11
MTU = "1500"

T = TypeVar("T")


@dataclass
class Segment:
    """A bridged IPv4 subnet; its namespace owns the bridge and the gateway address."""

    ns: Namespace
    """Namespace holding the bridge (and routing for the segment)."""
    bridge: str
    """Bridge interface name inside `ns`."""
    network: IPv4Network
    """The subnet."""
    used: set[IPv4Address] = field(default_factory=set)
    """Addresses handed out, the gateway included."""
    ports: int = 0
    """Bridge ports made so far, to name the next one."""
    network6: IPv6Network | None = None
    """The segment's IPv6 prefix, on a dual-stack lab."""

    @property
    def gateway(self) -> IPv4Address:
        """The bridge's own address, first in the subnet; the default route of attached nodes."""
        return self.network[1]

    def address6(self, address: IPv4Address | str) -> str | None:
        """The IPv6 address with the IPv4 host number of ``address``, or None on an IPv4-only segment."""
        if self.network6 is None:
            return None
        return str(self.network6[int(ip_address(address)) - int(self.network.network_address)])

    def claim(self, address: IPv4Address) -> IPv4Address:
        """Reserve a chosen address, refusing duplicates and addresses outside the subnet."""
        if address not in self.network or address in (self.network[0], self.network[-1]):
            raise LabError(f"{address} is not a host address of {self.network}")
        if address in self.used:
            raise LabError(f"{address} is already in use")
        self.used.add(address)
        return address

    def allocate(self, offset: int) -> IPv4Address:
        """Reserve the first free address at or after `offset` (scaled down for small subnets)."""
        size = self.network.num_addresses
        start = offset if offset < size // 2 else size // 4
        for index in range(start, self.network.num_addresses - 1):
            if self.network[index] not in self.used:
                return self.claim(self.network[index])
        raise LabError(f"{self.network} is full")


@dataclass
class Node:
    """A namespace in the topology and the addresses it owns (first is the primary one)."""

    name: str
    ns: Namespace
    addrs: list[str]
    addrs6: list[str] = field(default_factory=list)
    """Its IPv6 addresses, on a dual-stack lab (first is the primary one)."""


@dataclass
class Site:
    """A router with a NAT and the LAN behind it."""

    name: str
    router: Node
    """The router; its primary address is the WAN address."""
    links: RouterLinks
    """What the site's NAT is installed on."""
    lan: Segment
    """The inside segment (a bridge in the router namespace)."""
    nat: Nat
    """The NAT currently installed."""
    hosts: list[Node] = field(default_factory=list)
    firewall6: Ipv6Firewall | None = None
    """The IPv6 firewall installed, on a dual-stack lab."""


def _lookup(table: dict[str, T], kind: str, name: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise LabError(f"no {kind} {name!r}") from None


class Topology:
    """Builds servers and sites on one lab's internet namespace; everything is torn down by the lab."""

    def __init__(self, lab: Lab, ipv6: bool = False) -> None:
        self.lab = lab
        self.ipv6 = ipv6
        """Every segment, server and site is dual-stack."""
        self.internet = self._namespace(INTERNET, forwarding=True)
        self.nodes: dict[str, Node] = {}
        self.sites: dict[str, Site] = {}
        self._public: dict[IPv4Network, Segment] = {}
        self._segment(self.internet, PUBLIC_NETS[0])

    def add_server(self, name: str, addrs: list[str] | None = None) -> Node:
        """A host with public address(es), e.g. coord at 203.0.113.10 and 203.0.113.11."""
        ns = self._namespace(name)
        if addrs is None:
            addrs = [str(self._public[PUBLIC_NETS[0]].allocate(SERVER_OFFSET))]
        else:
            for addr in addrs:
                self._public_segment(addr).claim(ip_address(addr))
        by_segment: dict[IPv4Network, list[str]] = {}
        for addr in addrs:
            by_segment.setdefault(self._public_segment(addr).network, []).append(addr)
        addrs6: list[str] = []
        for index, (network, seg_addrs) in enumerate(by_segment.items()):
            self._attach(ns, f"eth{index}", self._public[network], seg_addrs, default_route=index == 0)
            addrs6 += self._addrs6(self._public[network], seg_addrs)
        return self._add_node(Node(name, ns, list(addrs), addrs6))

    def add_site(
        self,
        name: str,
        nat: Nat = NatKind.PORT_PRESERVING,
        hosts: int = 1,
        lan: str | None = None,
        behind: str | None = None,
        wan: str | None = None,
        ipv6: bool = True,
    ) -> Site:
        """A router (WAN on the internet, or on site `behind`'s LAN) with `hosts` hosts on its LAN.

        `lan` defaults to 10.N.0.0/24 for a NAT, or a public /26 of 192.0.2.0/24 without one.
        `wan` defaults to the next free address from .100 of the upstream segment.
        On a dual-stack topology, `ipv6=False` leaves the LAN IPv4 only (the router still has both).
        """
        router = self._namespace(name, forwarding=True)
        if behind is None:
            upstream = self._public_segment(wan) if wan else self._public[PUBLIC_NETS[0]]
        else:
            upstream = self.site(behind).lan
        wan_addr = upstream.claim(ip_address(wan)) if wan else upstream.allocate(ROUTER_OFFSET)
        self._attach(router, "wan0", upstream, [str(wan_addr)], default_route=True)
        lan_net = ip_network(lan) if lan else self._free_lan(nat.translates)
        lan_segment = self._segment(router, lan_net, bridge="lan0", ipv6=ipv6)
        links = RouterLinks(router, "wan0", "lan0", str(wan_addr), str(lan_net))
        nat.install(links)
        if not nat.translates:
            upstream.ns.ip("route", "add", str(lan_net), "via", str(wan_addr))
        wan6 = upstream.address6(wan_addr)
        site = Site(name, self._add_node(Node(name, router, [str(wan_addr)], [wan6] if wan6 else [])), links,
                    lan_segment, nat)
        if wan6 is not None and lan_segment.network6 is not None:
            upstream.ns.ip("-6", "route", "add", str(lan_segment.network6), "via", wan6)
            site.firewall6 = Ipv6Firewall()
            site.firewall6.install(links)
        self.sites[name] = site
        for _ in range(hosts):
            self.add_host(name)
        return site

    def add_host(self, site: str, name: str | None = None) -> Node:
        """A host on `site`'s LAN (named site + number by default), default route via the router."""
        owner = self.site(site)
        name = name or f"{site}{len(owner.hosts) + 1}"
        ns = self._namespace(name)
        addr = str(owner.lan.allocate(HOST_OFFSET))
        self._attach(ns, "eth0", owner.lan, [addr], default_route=True)
        node = self._add_node(Node(name, ns, [addr], self._addrs6(owner.lan, [addr])))
        owner.hosts.append(node)
        return node

    def move_host(self, name: str, site: str) -> str:
        """Move host `name` to `site`'s LAN as a laptop changes networks: its link goes away (and
        with it its address and routes), a new one comes up on the other LAN, behind the other
        NAT, with a new address and default route. Returns the new address."""
        node = self.node(name)
        old = next(owner for owner in self.sites.values() if node in owner.hosts)
        new = self.site(site)
        node.ns.ip("link", "del", "eth0")
        old.lan.used.discard(ip_address(node.addrs[0]))
        old.hosts.remove(node)
        addr = str(new.lan.allocate(HOST_OFFSET))
        self._attach(node.ns, "eth0", new.lan, [addr], default_route=True)
        node.addrs, node.addrs6 = [addr], self._addrs6(new.lan, [addr])
        new.hosts.append(node)
        return addr

    def set_nat(self, site: str, nat: Nat) -> None:
        """Swap a site's NAT live; existing mappings are forgotten."""
        owner = self.site(site)
        if owner.nat.translates != nat.translates:
            raise LabError("cannot swap between translating and non-translating NATs live")
        set_nat(owner.links, owner.nat, nat)
        owner.nat = nat

    def cut_tcp(self, site: str, other: str) -> None:
        """Drop TCP between `site` and `other`'s public address at `site`'s router, both ways, so the
        two sites' hosts can meet only through a relay (no TCP punching or port prediction)."""
        far = self.site(other).links.wan_addr
        self.site(site).links.ns.run(["nft", "-f", "-"], input=(
            "table ip meshvpn_cut_tcp {\n"
            "  chain forward {\n    type filter hook forward priority -5; policy accept;\n"
            f"    ip daddr {far} meta l4proto tcp drop\n    ip saddr {far} meta l4proto tcp drop\n  }}\n}}\n"))

    def set_ipv6_broken(self, site: str, broken: bool) -> None:
        """Drop (or pass again) every IPv6 packet through `site`'s router; addresses and routes stay,
        so hosts still send over IPv6, as on a network whose IPv6 is broken upstream."""
        owner = self.site(site)
        if owner.firewall6 is None:
            raise LabError(f"site {site!r} has no IPv6")
        owner.firewall6 = Ipv6Firewall(broken=broken)
        owner.firewall6.install(owner.links)

    def wall_off_ipv6(self, site: str) -> None:
        """Let `site` reach the servers over IPv6 but no other site: its IPv6 firewall drops
        everything to and from the sites' prefix (a direct IPv6 path between sites is firewalled)."""
        owner = self.site(site)
        if owner.firewall6 is None:
            raise LabError(f"site {site!r} has no IPv6")
        owner.firewall6 = Ipv6Firewall(walled_off=str(SITE_NETS6))
        owner.firewall6.install(owner.links)

    def block_udp6(self, site: str) -> None:
        """Drop every UDP packet through `site`'s IPv6 firewall, both ways (TCP goes on as before)."""
        owner = self.site(site)
        if owner.firewall6 is None:
            raise LabError(f"site {site!r} has no IPv6")
        owner.firewall6 = replace(owner.firewall6, block_udp=True)
        owner.firewall6.install(owner.links)

    def renumber6(self, name: str) -> str:
        """Give host `name` a new IPv6 address in its LAN's prefix and then remove its old one, as a
        host does when its prefix's addresses change (a privacy address, a new interface ID).
        Returns the new address."""
        node = self.node(name)
        owner = next(site for site in self.sites.values() if node in site.hosts)
        if owner.lan.network6 is None or not node.addrs6:
            raise LabError(f"{name!r} has no IPv6 address")
        old = node.addrs6[0]
        new = str(owner.lan.network6[int(ip_address(old)) - int(owner.lan.network6.network_address) + 0x100])
        node.ns.ip("-6", "addr", "add", f"{new}/64", "dev", "eth0", "nodad")
        node.ns.ip("-6", "addr", "del", f"{old}/64", "dev", "eth0")
        node.addrs6[0] = new
        return new

    def addr6(self, name: str) -> str:
        """Primary IPv6 address of a node, on a dual-stack lab."""
        node = self.node(name)
        if not node.addrs6:
            raise LabError(f"{name!r} has no IPv6 address")
        return node.addrs6[0]

    def node(self, name: str) -> Node:
        """Any server, router (by site name) or host."""
        return _lookup(self.nodes, "node", name)

    def host(self, name: str) -> Namespace:
        """The namespace of node `name`, to run commands in."""
        return self.node(name).ns

    def site(self, name: str) -> Site:
        """The site called `name`."""
        return _lookup(self.sites, "site", name)

    def addr(self, name: str) -> str:
        """Primary address of a node: a server's first, a router's WAN, a host's LAN address."""
        return self.node(name).addrs[0]

    def _add_node(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    def _public_segment(self, addr: str) -> Segment:
        address = ip_address(addr)
        for network in PUBLIC_NETS:
            if address in network:
                if network not in self._public:
                    self._segment(self.internet, network)
                return self._public[network]
        raise LabError(f"{addr} is not in a public segment {[str(n) for n in PUBLIC_NETS]}")

    def _namespace(self, name: str, forwarding: bool = False) -> Namespace:
        """A lab namespace; on a dual-stack lab without duplicate address detection (so link-local
        addresses, which neighbour discovery needs, are usable at once) and forwarding IPv6 too."""
        ns = self.lab.namespace(name, forwarding=forwarding)
        if self.ipv6:
            for scope in ("all", "default"):
                ns.sysctl(f"net.ipv6.conf.{scope}.accept_dad", "0")
            if forwarding:
                ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        return ns

    def _segment(self, ns: Namespace, network: IPv4Network, bridge: str | None = None, ipv6: bool = True) -> Segment:
        segment = Segment(ns, bridge or f"br{len(self._public)}", network)
        if self.ipv6 and ipv6:
            segment.network6 = PUBLIC_NETS6[PUBLIC_NETS.index(network)] if ns is self.internet else self._free_lan6()
        ns.ip("link", "add", segment.bridge, "mtu", MTU, "type", "bridge")
        ns.ip("addr", "add", f"{segment.claim(segment.gateway)}/{network.prefixlen}", "dev", segment.bridge)
        if segment.network6 is not None:
            ns.ip("addr", "add", f"{segment.address6(segment.gateway)}/64", "dev", segment.bridge, "nodad")
        ns.ip("link", "set", segment.bridge, "up")
        if ns is self.internet:
            self._public[network] = segment
        return segment

    @staticmethod
    def _addrs6(segment: Segment, addrs: list[str]) -> list[str]:
        return [segment.address6(addr) for addr in addrs] if segment.network6 is not None else []

    def _attach(self, ns: Namespace, ifname: str, segment: Segment, addrs: list[str], default_route: bool) -> None:
        """Link `ns` to `segment` with a veth pair created inside `ns` (never in the root namespace)."""
        segment.ports += 1
        port = f"{segment.bridge}p{segment.ports}"
        ns.ip("link", "add", ifname, "mtu", MTU, "type", "veth",
              "peer", "name", port, "mtu", MTU, "netns", segment.ns.name)
        segment.ns.ip("link", "set", port, "master", segment.bridge, "up")
        for addr in addrs:
            ns.ip("addr", "add", f"{addr}/{segment.network.prefixlen}", "dev", ifname)
        for addr6 in self._addrs6(segment, addrs):  # no duplicate address detection: usable at once
            ns.ip("addr", "add", f"{addr6}/64", "dev", ifname, "nodad")
        ns.ip("link", "set", ifname, "up")
        if default_route:
            ns.ip("route", "add", "default", "via", str(segment.gateway))
            if segment.network6 is not None:
                ns.ip("-6", "route", "add", "default", "via", segment.address6(segment.gateway))

    def _free_lan6(self) -> IPv6Network:
        taken = {site.lan.network6 for site in self.sites.values()}
        return next(net for net in SITE_NETS6.subnets(new_prefix=64) if net not in taken)

    def _free_lan(self, private: bool) -> IPv4Network:
        taken = [site.lan.network for site in self.sites.values()]
        pool = (
            (ip_network(f"10.{n}.0.0/24") for n in range(1, 256))
            if private
            else PUBLIC_LAN_POOL.subnets(new_prefix=26)
        )
        for candidate in pool:
            if not any(candidate.overlaps(used) for used in taken):
                return candidate
        raise LabError("no free LAN prefix left")
