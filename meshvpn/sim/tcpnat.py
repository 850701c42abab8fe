"""The TCP side of a simulated NAT box (RFC 5382), and what a site's firewall lets out.

A `TcpNat` attached to a `meshvpn.sim.nat.Nat` translates the box's TCP segments with a
`MappingTable` of its own, mapping and filtering by the box's `NatBehavior` exactly as its UDP
side does. That is what the lab's NATs do: conntrack keeps TCP and UDP apart but masquerades both
alike, and the userspace NAT runs one table per protocol with one behaviour. So an
endpoint-independent box keeps a LAN endpoint's public port for every remote (REQ-1), an
address-and-port-dependent one gives each remote its own, and filtering admits an inbound segment,
SYN included, only from remotes the LAN endpoint has sent to: a SYN out opens the way for the
peer's crossing SYN, which is all a simultaneous open needs.

* An inbound segment with no mapping, or filtered, is dropped silently, as the lab's nftables
  firewalls (``iifname wan drop``) do and RFC 5382 REQ-4 asks for at least 6 s; `Unsolicited.RESET`
  answers an unsolicited SYN with RST instead, as some boxes do.
* A mapping that has only seen a SYN out lives `transitory_timeout`; one that carried anything
  else `established_timeout` (REQ-5: at least 4 min and 2 h 4 min); only outbound segments refresh it.
* `tcp_ports`: TCP from the LAN may leave only to these destination ports (hotel and office
  networks that let out nothing but 443). UDP is blocked on the box itself (`Nat.udp_out`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Optional

from meshvpn.sim.nat import MappingTable, Nat
from meshvpn.sim.tcp import Flags, Segment


class Unsolicited(enum.Enum):
    """What a box does with an inbound SYN it has no admitting mapping for."""

    DROP = "drop"
    RESET = "reset"


@dataclass(frozen=True)
class TcpBehavior:
    """How a box treats TCP beyond the mapping and filtering it shares with UDP."""

    tcp_ports: Optional[frozenset[int]] = None
    """Destination ports TCP from the LAN may go to; None: any."""
    unsolicited: Unsolicited = Unsolicited.DROP
    """An inbound SYN that no mapping admits: dropped (the lab's nftables) or answered with RST."""
    transitory_timeout: float = 240.0
    """Seconds a mapping that has only sent SYNs lives."""
    established_timeout: float = 7440.0
    """Seconds a mapping that carried a connection lives after its last outbound segment."""


OPEN = TcpBehavior()
PORT_443_ONLY = TcpBehavior(tcp_ports=frozenset({443}))


class TcpNat:
    """The TCP translation of one `Nat`; attaching it makes the box pass TCP."""

    def __init__(self, nat: Nat, behavior: TcpBehavior = OPEN) -> None:
        self.nat, self.behavior, self.network = nat, behavior, nat.network
        self.table = MappingTable(nat.network, nat.ip, nat.behavior)
        """The TCP mappings (the box's `flush` and `rebind` reach them too)."""
        nat.tcp = self

    def forward(self, public_port: int, lan: tuple[str, int]) -> None:
        """A TCP port forward (UPnP IGD, NAT-PMP, PCP): anyone may connect to `public_port`."""
        self.table.forward(public_port, lan)

    def outbound(self, seg: Segment) -> None:
        """Translate a segment leaving the LAN, if the firewall lets it out."""
        ports = self.behavior.tcp_ports
        if ports is not None and seg.dst[1] not in ports and seg.dst[0] != self.nat.ip:
            self.network.drops["tcp port blocked"] += 1
            return
        remapped = self.table.remapped_out(seg.src, seg.dst)
        if remapped is not None:
            self.nat.send_translated(replace(seg, src=remapped.public, dst=remapped.remote))
            return
        behavior = self.behavior
        lifetime = behavior.transitory_timeout if seg.flags == Flags.SYN else behavior.established_timeout
        mapping = self.table.outbound(seg.src, seg.dst, lifetime)
        if mapping is None:
            self.network.drops["nat ports exhausted"] += 1
            return
        self.nat.send_translated(replace(seg, src=mapping.public))

    def inbound(self, seg: Segment) -> None:
        """Translate a segment to a public port back to its LAN endpoint, if admitted."""
        lan, seen, why = self.table.inbound(seg.dst[1], seg.src)
        if lan is not None:
            self.nat.lan.route(replace(seg, src=seen, dst=lan))
            return
        self.network.drops[f"tcp {why}"] += 1
        if seg.flags == Flags.SYN and self.behavior.unsolicited is Unsolicited.RESET:
            reset = Segment(seg.dst, seg.src, Flags.RST | Flags.ACK, 0, seg.seq + 1)
            self.nat.send_translated(reset)
