"""Real network namespaces with nftables NATs, for integration tests, the demo and benchmarks."""

from meshvpn.lab.nat import PORT_RANGE, Nat, NatKind, NftNat, RouterLinks, flush_conntrack, set_nat
from meshvpn.lab.netns import Lab, LabError, Namespace, cleanup_stale, lab_namespaces, python_command
from meshvpn.lab.topology import Node, Segment, Site, Topology

__all__ = [
    "PORT_RANGE",
    "Lab",
    "LabError",
    "Namespace",
    "Nat",
    "NatKind",
    "NftNat",
    "Node",
    "RouterLinks",
    "Segment",
    "Site",
    "Topology",
    "cleanup_stale",
    "flush_conntrack",
    "lab_namespaces",
    "python_command",
    "set_nat",
]
