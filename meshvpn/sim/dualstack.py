"""A dual-stack host in the simulator: an IPv4 host (often behind a `Nat`) and an IPv6 host on
the internet, with one socket over both, as a node's socket with IPV6_V6ONLY off.

The kernel picks the family by the destination; so does `DualStackSocket.sendto`. Each family
has its own link, so a test breaks IPv6 alone (`ipv6.link.connected = False`: the routes stay,
the packets go nowhere) while IPv4 carries on.

A home router's IPv6 side translates nothing and lets in only what answers the LAN's own traffic
(`firewalled_host6`): a `Nat` that keeps address and port, port-restricted, in front of a host
with the same global address.
"""

from __future__ import annotations

from meshvpn.sim.nat import PORT_RESTRICTED_CONE, Nat
from meshvpn.sim.network import Endpoint, Host, Link, Network, ReceiveCallback, UdpSocket


def firewalled_host6(net: Network, address: str, uplink: Link, link: Link | None = None) -> Host:
    """A host with the global IPv6 `address` behind a stateful firewall on `uplink` (`link`: the
    host's own, which a dual-stack host shares with its IPv4 side: one cable, two families)."""
    firewall = Nat(net, address, PORT_RESTRICTED_CONE, link=uplink)
    return Host(net, address, firewall.lan, link)


class DualStackSocket:
    """One port on both of a `DualStackHost`'s addresses."""

    def __init__(self, v4: UdpSocket, v6: UdpSocket) -> None:
        self.v4 = v4
        self.v6 = v6

    @property
    def address(self) -> Endpoint:
        """The IPv4 (ip, port), as a single-family socket's address."""
        return self.v4.address

    @property
    def address6(self) -> Endpoint:
        """The IPv6 (ip, port)."""
        return self.v6.address

    @property
    def on_receive(self) -> ReceiveCallback:
        return self.v4.on_receive

    @on_receive.setter
    def on_receive(self, callback: ReceiveCallback) -> None:
        self.v4.on_receive = self.v6.on_receive = callback

    def sendto(self, data: bytes, dst: Endpoint) -> None:
        """Send from the address of `dst`'s family."""
        (self.v6 if ":" in dst[0] else self.v4).sendto(data, dst)

    def close(self) -> None:
        self.v4.close()
        self.v6.close()


class DualStackHost:
    """An IPv4 host and an IPv6 host that are one machine: `bind` opens a port on both."""

    def __init__(self, v4: Host, v6: Host) -> None:
        self.v4 = v4
        self.v6 = v6

    def bind(self, port: int, on_receive: ReceiveCallback) -> DualStackSocket:
        """Open `port` on both addresses (0: a free port on the IPv4 one, the same on the IPv6 one)."""
        v4 = self.v4.bind(port, on_receive)
        return DualStackSocket(v4, self.v6.bind(v4.port, on_receive))
