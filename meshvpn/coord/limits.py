"""Bounds on what the coord's clients may cost it: connections per address and subnet, write
buffers, descriptors, peer-map bytes and the fan-out's backlog, and the kernel's accept queue.

Why apart from the shell (`meshvpn.coord.server`): these are the deployment's numbers, one place
to read them and for tests to tighten them (`CoordServer(limits=ServerLimits(...))`), while the
shell only enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass

LISTEN_BACKLOG = 4096
"""Pending TCP connections the kernel queues (capped by net.core.somaxconn): after a restart every
node reconnects at once, and a short queue turns that into SYN retransmits seconds apart."""


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client may cost the server; the defaults suit real deployments."""

    handshake_timeout: float = 10.0
    """Seconds a new connection has to complete the channel handshake."""
    max_write_buffer: int = 4 << 20
    """Bytes queued for a client that does not read before it is dropped (above one full frame,
    and above its peer map, whose size is the network's doing, not the client's)."""
    socket_send_buffer: int | None = 256 << 10
    """Kernel send buffer per connection (SO_SNDBUF), so that thousands of idle or slow clients
    cannot each grow one to megabytes; None leaves the kernel's autotuning on."""
    max_connections_per_host: int = 1024
    """Connections from one IPv4 address or IPv6 /64: many nodes may share a NAT, a flood is capped."""
    max_connections_per_subnet: int = 4096
    """Connections from one IPv4 /24 or IPv6 /48."""
    max_unregistered_per_host: int = 64
    """Connections not yet registered (handshaking, or authenticated by a key the coord does not
    know yet) from one IPv4 address or IPv6 /64: a throwaway key holds a descriptor only so long."""
    max_unregistered_per_subnet: int = 256
    """The same per IPv4 /24 or IPv6 /48."""
    reserved_descriptors: int = 64
    """Descriptors kept free of connections (database, listeners, admin and metrics sockets): the
    server refuses connections beyond its RLIMIT_NOFILE minus these rather than fail to accept."""
    peer_map_budget: int = 64 << 20
    """Peer-map bytes written but not yet drained beyond which registrations' maps wait
    (`mapbudget`): at 10,000 nodes a map is about 3 MB, and after a restart every node wants one."""
    fanout_backlog: int = 128 << 20
    """Bytes queued for slowly reading nodes beyond which fan-out rounds wait (`backlog`)."""
    status_interval: float = 10.0
    """Seconds between systemd STATUS= updates."""
