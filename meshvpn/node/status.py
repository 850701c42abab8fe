"""The node and its peers as ``meshvpn status --json`` prints them (sans-IO: plain dicts from the peer table)."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from meshvpn.keys import encode_key
from meshvpn.node.events import AddressAssigned
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.peers import Peer, PeerTable
from meshvpn.node.transports import socket_name
from meshvpn.wire import Endpoint


def node_status(registration: Optional[AddressAssigned], public_key: bytes, peers: PeerTable, now: float) -> dict:
    """This node (as the coord registered it) and every peer."""
    reg = registration
    return {
        "self": {
            "name": reg.name if reg else "-",
            "overlay": reg.address if reg else None,
            "network": reg.network if reg else None,
            "key": encode_key(public_key),
        },
        "peers": [peer_status(peer, now) for peer in peers],
    }


def peer_status(peer: Peer, now: float) -> dict:
    """One peer: identity, path, round-trip time, counters and the age of its last handshake."""
    route = peer.route
    c = peer.counters
    return {
        "name": peer.name,
        "key": peer.key_text,
        "overlay": peer.address,
        "online": peer.info.online,
        "path": route.path.kind.value if route else "-",
        "endpoint": str(Endpoint(route.endpoint[0], route.endpoint[1])) if route else None,
        "socket": socket_name(route.transport) if route else None,
        "rtt_ms": None if peer.paths.stats.rtt is None else round(peer.paths.stats.rtt * 1000, 2),
        "rx_bytes": c.rx_bytes,
        "tx_bytes": c.tx_bytes,
        "rx_packets": c.rx_packets,
        "tx_packets": c.tx_packets,
        "drops": dict(c.drops),
        "last_handshake": None if peer.last_handshake is None else round(now - peer.last_handshake, 3),
        "path_changes": [record.as_dict(now) for record in peer.path_log.records],
    }


def status_line(paths: list[Optional[PathKind]], coord_connected: bool) -> str:
    """The systemd STATUS= summary: peers, how many peer to peer (LAN, UDP or TCP), how many relayed."""
    kinds = Counter(paths)
    direct = kinds[PathKind.DIRECT] + kinds[PathKind.LAN] + kinds[PathKind.TCP]
    line = f"{len(paths)} peers: {direct} direct, {kinds[PathKind.RELAY]} relay"
    return line if coord_connected else line + "; offline: coord unreachable"
