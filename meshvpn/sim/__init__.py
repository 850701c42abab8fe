"""Deterministic in-memory network for tests: a fake clock, hosts, links and RFC 4787 NATs (TCP: `tcp`, `tcpnat`, `tcpstun`)."""

from meshvpn.sim.clock import Clock, Scheduler, TimerHandle
from meshvpn.sim.nat import (
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    RESTRICTED_CONE,
    SYMMETRIC_RANDOM,
    SYMMETRIC_SEQUENTIAL,
    Dependence,
    Nat,
    NatBehavior,
    NatMapping,
    PortAllocation,
)
from meshvpn.sim.network import (
    Datagram,
    Endpoint,
    Host,
    Link,
    LinkDirection,
    Network,
    Realm,
    UdpSocket,
)

__all__ = [
    "FULL_CONE", "PORT_RESTRICTED_CONE", "RESTRICTED_CONE", "SYMMETRIC_RANDOM",
    "SYMMETRIC_SEQUENTIAL", "Clock", "Datagram", "Dependence", "Endpoint", "Host", "Link",
    "LinkDirection", "Nat", "NatBehavior", "NatMapping", "Network", "PortAllocation", "Realm",
    "Scheduler", "TimerHandle", "UdpSocket",
]
