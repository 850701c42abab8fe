"""The daemon's log lines for the node's events: one line per thing that happened, with journal fields.

Events the daemon acts on (``AddressAssigned``, ``PingReply``, ``SampleWanted``, ``OpenMappings``)
are handled in :mod:`meshvpn.node.daemon`; everything else is said here.
"""

from __future__ import annotations

import logging

from meshvpn.node import events as ev
from meshvpn.node.startup import explain_refusal
from meshvpn.turn import AllocationLost, AllocationReady, ChannelBound
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node")
tcp_log = logging.getLogger("meshvpn.node.tcp")
relay_log = logging.getLogger("meshvpn.node.relay")
turn_log = logging.getLogger("meshvpn.node.turn")


def log_event(event: ev.Event) -> None:
    """One log line for `event`, if it is one that is logged."""
    match event:
        case ev.PeerPathChanged(name, old, new, reason):
            log.info("path to %s: %s -> %s (%s)", name, path_text(old), path_text(new), reason,
                     extra={"PEER": name, "PATH": path_text(new), "REASON": reason})
        case ev.PeerUp(name):
            log.info("handshake with %s complete", name, extra={"PEER": name})
        case ev.PeerDown(name, reason):
            log.info("peer %s down: %s", name, reason, extra={"PEER": name, "REASON": reason})
        case ev.CoordRejected(code, message):
            log.error("%s", explain_refusal(code, message))
        case ev.TcpPathChanged(name, None, reason):
            tcp_log.info("TCP path to %s down: %s", name, reason)
        case ev.TcpPathChanged(name, endpoint):
            tcp_log.info("TCP path to %s up at %s:%d", name, *endpoint)
        case ev.RelaySkipped(name):
            relay_log.warning("relay %s is announced by a name with no address yet; skipped for now", name)
        case ev.RelayHomeChanged(name, transport):
            relay_log.info("home relay: %s", "-" if name is None else f"{name} over {transport}",
                           extra={"RELAY": name or "-"})
        case ev.TurnChanged(server, AllocationReady(relayed)):
            turn_log.info("turn %s: allocated %s:%d", server, *relayed, extra={"RELAY": server})
        case ev.TurnChanged(server, AllocationLost(reason=reason)):
            turn_log.warning("turn %s: no allocation: %s", server, reason, extra={"RELAY": server})
        case ev.TurnChanged(server, ChannelBound(peer=peer, channel=channel)):
            turn_log.debug("turn %s: channel %#06x to %s:%d", server, channel, *peer, extra={"RELAY": server})


def endpoints_line(public, mapped, local, nat, ipv6=(), mapped_tcp=None) -> str:
    """Where the daemon can be reached, as it reports it to the coord."""
    behaviour = "-" if nat is None else \
        f"{'independent' if nat.endpoint_independent else 'dependent'} mapping, {nat.allocation} ports"
    return f"endpoints: public {public or '-'}, mapped {mapped or '-'}, mapped tcp {mapped_tcp or '-'}, " \
           f"local {', '.join(map(str, local)) or '-'}, ipv6 {', '.join(map(str, ipv6)) or '-'}, nat {behaviour}"


def path_text(path) -> str:
    """A path as the log and ``meshvpn status`` say it: its kind, and its endpoint if it has one."""
    if path is None:
        return "-"
    if path.endpoint is None:
        return path.kind.value
    return f"{path.kind.value} {Endpoint(*path.endpoint[:2])}"
