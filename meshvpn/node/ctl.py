"""The client verbs that talk to the daemon's local control socket, and how they print answers.

``meshvpn status``, ``meshvpn peers`` and ``meshvpn ping`` must work without
root-owned state files: they ask the running daemon over its control socket
(`meshvpn.localsock`: mode 0600, newline-delimited JSON, streamed answers).

Requests: ``{"cmd": "status"}``, ``{"cmd": "peers"}`` and
``{"cmd": "ping", "peer": NAME|IP|KEY, "count": N}``.
"""

from __future__ import annotations

import json
import sys

from meshvpn.localsock import DaemonNotRunning, format_ago, request


def format_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _status_line(overlay: str | None, name: str, path: str, rest: str) -> str:
    """Overlay, name and path in fixed columns, so the self line and the peer lines align."""
    return f"{overlay or '-':<16} {name:<20} {path:<6} {rest}"


def format_status(status: dict) -> str:
    """One line for this node, then one line per peer, like ``tailscale status``."""
    me = status["self"]
    data_path = f"   data path {me['data_path']}" if me.get("data_path") else ""
    kernel_drops = sum(entry["drops"] for entry in me.get("sockets", ()))
    data_path += f"   kernel drops {kernel_drops}" if kernel_drops else ""
    mapping = me.get("port_mapping") or {}
    data_path += f"   mapped {mapping['external']} ({mapping['protocol']})" if mapping.get("external") else ""
    tcp = mapping.get("tcp") or {}
    data_path += f"   mapped tcp {tcp['external']} ({tcp['protocol']})" if tcp.get("external") else ""
    coord = " ".join(filter(None, (me.get("coord", "-"), me.get("coord_address"))))
    relaying = me.get("relaying")
    data_path += f"   peer relay for {relaying['nodes']} nodes" if relaying else ""
    lines = [_status_line(me.get("overlay"), me["name"], "self", f"coord {coord}{data_path}")]
    if _lan_in_use(me.get("lan")):
        lines.append(_status_line("", "", "lan", format_lan(me["lan"])))
    for peer in status["peers"]:
        groups = f" groups {','.join(peer['groups'])}" if peer.get("groups") else ""
        lines.append(_status_line(
            peer.get("overlay"), peer["name"], peer["path"],
            f"{peer.get('endpoint') or '-':<22} handshake {format_ago(peer.get('last_handshake')):<8} "
            f"rx {format_bytes(peer['rx_bytes'])} tx {format_bytes(peer['tx_bytes'])}{groups}{_via(peer)}"
            f"{_last_change(peer)}",
        ))
        if peer.get("relay_sums"):
            lines.append(_status_line("", "", "relays", format_relay_sums(peer["relay_sums"], peer["relay"])))
    return "\n".join(lines)


def _via(peer: dict) -> str:
    """Which relay carries a relayed peer and why: `` via far: lowest sum`` or `` via host (peer
    relay): peer's home``."""
    if not peer.get("relay"):
        return ""
    why = f": {peer['relay_reason']}" if peer.get("relay_reason") else ""
    return f" via {peer['relay']}" + (" (peer relay)" if peer.get("peer_relay") else "") + why


def format_relay_sums(sums: dict, chosen: str) -> str:
    """The relays both ends report, ours + theirs = sum each, the one in use marked:
    ``*east 1+41=42 ms   west 120+1=121 ms``."""
    return "   ".join(f"{'*' if name == chosen else ''}{name} {rtt['ours']}+{rtt['theirs']}={rtt['sum']} ms"
                       for name, rtt in sums.items())


def _last_change(peer: dict) -> str:
    """The peer's latest path change and how long ago: ``relay→direct (punched 1.9 s) 12s ago``."""
    changes = peer.get("path_changes") or []
    return f"   {changes[-1]['text']} {format_ago(changes[-1]['ago'])}" if changes else ""


def _lan_in_use(lan: dict | None) -> bool:
    """Whether the node joined a group or carried or dropped a broadcast or multicast packet."""
    return bool(lan) and bool(lan["groups"] or lan["dropped"] or any(lan["sent"].values())
                              or any(lan["received"].values()))


def format_lan(lan: dict) -> str:
    """Broadcast and multicast in one line: groups joined, sent (copies), received, drops by reason."""
    sent, received = lan["sent"], lan["received"]
    dropped = ", ".join(f"{reason} {count}" for reason, count in lan["dropped"].items()) or "none"
    return (f"groups {','.join(lan['groups']) or '-'}  broadcast sent {sent['broadcast']} received "
            f"{received['broadcast']}  multicast sent {sent['multicast']} received {received['multicast']}  "
            f"copies {sent['copies']}  dropped {dropped}")


def format_peers(peers: list) -> str:
    """The peer map as the coord sent it: overlay address, name, key, endpoints."""
    lines = []
    for peer in peers:
        endpoints = ",".join(peer.get("endpoints") or []) or "-"
        relays = "  (peer relay)" if peer.get("peer_relay") else ""
        lines.append(f"{peer.get('overlay') or '-':<16} {peer['name']:<20} {peer['key']}  {endpoints}{relays}")
    return "\n".join(lines) if lines else "(no peers)"


def format_ping(reply: dict) -> str:
    """One line per ping reply, timeout or path change."""
    kind = reply.get("type")
    if kind == "pong":
        return (
            f"pong from {reply['name']} ({reply['overlay']}) via {reply['path']} "
            f"{reply['endpoint']} in {reply['rtt_ms']:.1f} ms"
        )
    if kind == "path":
        return f"path to {reply['name']} changed: {reply['old']} -> {reply['new']}"
    if kind == "timeout":
        return f"timeout waiting for {reply['name']} (seq {reply['seq']})"
    return json.dumps(reply)


def client_main(args) -> int:
    """Entry point of ``meshvpn status``, ``peers`` and ``ping``; returns the exit code."""
    verb = args.command
    path = str(args.socket)
    try:
        if verb == "ping":
            return _ping(path, args)
        responses = list(request(path, {"cmd": verb}))
    except DaemonNotRunning as exc:
        print(f"meshvpn {verb}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"meshvpn {verb}: control socket error: {exc}", file=sys.stderr)
        return 1
    answer = responses[-1] if responses else {"error": "empty answer from the daemon"}
    if "error" in answer:
        print(f"meshvpn {verb}: {answer['error']}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        answer = {key: value for key, value in answer.items() if key != "done"}
        print(json.dumps(answer, indent=2))
    elif verb == "status":
        print(format_status(answer))
    else:
        print(format_peers(answer["peers"]))
    return 0


def _ping(path: str, args) -> int:
    req = {"cmd": "ping", "peer": args.peer, "count": getattr(args, "count", None) or 4}
    replies = 0
    for response in request(path, req):
        if "error" in response:
            print(f"meshvpn ping: {response['error']}", file=sys.stderr)
            return 1
        if response.get("done"):
            break
        replies += response.get("type") == "pong"
        print(format_ping(response), flush=True)
    return 0 if replies else 1
