"""Admin verbs of the coordination server: `meshvpn coord key|nodes|networks ...`.

Admins talk to the running server over its admin unix socket (mode 0600; one JSON request per
line, answered by one JSON object), because a revocation must reach the live connections at
once. `answer` is the server's side; `main` is the command line. When the server is not
running, the read-only verbs read the SQLite database directly and say so; verbs that change
anything refuse, since a change made behind the server's back would not reach its nodes.

Requests: ``{"cmd": "key_create", "network": N, "reusable": B, "ephemeral": B, "expires": S|null,
"address": "HOST:PORT"|null}`` (answered with the token and its join string, `join_fields`),
``{"cmd": "nodes_list"}``, ``{"cmd": "node_approve"|"node_revoke", "node": REF}``,
``{"cmd": "node_tag"|"node_untag", "node": REF, "tag": TAG}``,
``{"cmd": "networks_list"}``, ``{"cmd": "keys_list"}``, ``{"cmd": "relays_allow"|"relays_disallow",
"member": NODE|"tag:TAG", "network": N|null}`` and ``{"cmd": "relays_list"}`` (peer relays,
`meshvpn.coord.peerrelays`). Answers carry ``"error"`` on failure. The
web console (`meshvpn.coord.console`) sends the same requests to the same `answer`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from meshvpn import joinstring
from meshvpn.config import DEFAULT_ADMIN_SOCKET, Address, load_coord_config
from meshvpn.coord.membership import AdminError, Membership, NodeStatus
from meshvpn.coord.store import NodeRecord, Store, open_store
from meshvpn.errors import MeshError
from meshvpn.keys import encode_key
from meshvpn.localsock import DaemonNotRunning, format_ago, request

READ_ONLY = frozenset({"nodes_list", "networks_list"})


# ----- the server's side


def answer(membership: Membership, req: dict, now: float, randbytes: Callable[[int], bytes]) -> dict:
    """Carry out one admin request on the live core; never raises on a bad request."""
    try:
        return _ANSWERS[req["cmd"]](membership, req, now, randbytes)
    except KeyError as exc:
        return {"error": f"bad request: unknown command or missing field {exc}"}
    except (AdminError, TypeError, ValueError) as exc:
        return {"error": str(exc)}


def _key_create(membership: Membership, req: dict, now: float, randbytes: Callable[[int], bytes]) -> dict:
    token, key = membership.create_auth_key(
        req["network"],
        secret=randbytes(32),
        now=now,
        reusable=bool(req.get("reusable")),
        ephemeral=bool(req.get("ephemeral")),
        expires_in=req.get("expires"),
    )
    return {"token": token, "id": key.id, "network": key.network, "reusable": key.reusable,
            "ephemeral": key.ephemeral, "expires": key.expires}


def join_fields(token: str, coord_key: bytes, public_address: Address | None, listening: tuple[str, int] | None,
                requested: str | None) -> dict:
    """`join` (the join string for a new key, or None) and `join_note` (why none) for the key_create
    answer: the address asked for, else public_address, else where the server listens unless that
    is a wildcard no node can dial."""
    address: Address | str | None = requested or public_address
    if address is None and listening is not None and listening[0] not in ("0.0.0.0", "::"):
        address = Address(*listening)
    if address is None:
        return {"join": None, "join_note": "no join string: the server listens on a wildcard address, which no "
                                           "node can dial; set public_address in coord.yaml or pass --address"}
    try:
        return {"join": joinstring.encode(address, coord_key, token), "join_note": None}
    except (MeshError, ValueError) as exc:
        return {"join": None, "join_note": f"no join string: {exc}"}


def _nodes_list(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    return {"nodes": [node_json(status) for status in membership.list_nodes()]}


def _node_approve(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    return {"node": node_json(_status_of(membership, membership.approve(req["node"]).key))}


def _node_revoke(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    return {"node": node_json(_status_of(membership, membership.revoke(req["node"]).key))}


def _node_tag(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    node = membership.tag(req["node"], req["tag"], remove=req["cmd"] == "node_untag")
    return {"node": node_json(_status_of(membership, node.key))}


def _relays_change(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    change = membership.allow_peer_relay if req["cmd"] == "relays_allow" else membership.disallow_peer_relay
    grant = change(req["member"], req.get("network"))
    return {"network": grant.network, "member": grant.member, "nodes": membership.granted_nodes(grant)}


def _relays_list(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    return {"peer_relays": [{"network": g.grant.network, "member": g.grant.member, "source": g.source,
                             "nodes": membership.granted_nodes(g.grant)} for g in membership.peer_relay_grants()]}


def _networks_list(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    return {"networks": networks_json(membership.store, membership.list_nodes())}


def _keys_list(membership: Membership, req: dict, now: float, randbytes: Any) -> dict:
    return {"keys": [
        {"id": key.id, "network": key.network, "created": key.created, "expires": key.expires,
         "reusable": key.reusable, "ephemeral": key.ephemeral, "uses": key.uses,
         "usable": not key.expired(now) and (key.reusable or key.uses == 0)}
        for key in sorted(membership.list_auth_keys(), key=lambda key: key.created)
    ]}


_ANSWERS = {
    "key_create": _key_create,
    "nodes_list": _nodes_list,
    "node_approve": _node_approve,
    "node_revoke": _node_revoke,
    "node_tag": _node_tag,
    "node_untag": _node_tag,
    "networks_list": _networks_list,
    "keys_list": _keys_list,
    "relays_allow": _relays_change,
    "relays_disallow": _relays_change,
    "relays_list": _relays_list,
}


def nodes_changed(membership: Membership, response: dict) -> list[NodeRecord]:
    """The nodes an admin verb's `response` changed (for the other coord instances to apply)."""
    if "node" in response:
        return [membership.find_node(response["node"]["key"])]
    names = set(response.get("nodes", ()))
    return [s.node for s in membership.list_nodes(response.get("network")) if s.node.name in names] if names else []


def _status_of(membership: Membership, key: bytes) -> NodeStatus:
    return next(s for s in membership.list_nodes() if s.node.key == key)


def node_json(status: NodeStatus) -> dict:
    """A node as the admin verbs show it."""
    node = status.node
    return {
        "name": node.name,
        "network": node.network,
        "address": node.address,
        "key": encode_key(node.key),
        "state": _state(status),
        "hostname": node.hostname,
        "os": node.os,
        "version": node.version,
        "approved": node.approved,
        "revoked": node.revoked,
        "ephemeral": node.ephemeral,
        "online": status.online,
        "observed_host": status.observed_host,
        "home_relay": status.home_relay,
        "paths": dict(sorted(status.paths.items())),
        "public_endpoint": None if node.public_endpoint is None else str(node.public_endpoint),
        "local_endpoints": [str(ep) for ep in node.local_endpoints],
        "created": node.created,
        "last_seen": node.last_seen,
        "auth_key": node.auth_key_id,
        "tags": list(node.tags),
        "peer_relay": status.peer_relay,
    }


def _state(status: NodeStatus) -> str:
    if status.node.revoked:
        return "revoked"
    if status.online:
        return "online"
    if status.pending_approval:
        return "pending"
    return "offline" if status.node.approved else "unapproved"


def networks_json(store: Store, statuses: list[NodeStatus]) -> list[dict]:
    """Every network with how many nodes it has and how many are online."""
    return [
        {
            "name": network.name,
            "cidr": network.cidr,
            "approval_required": network.approval_required,
            "nodes": sum(s.node.network == network.name for s in statuses),
            "online": sum(s.online and s.node.network == network.name for s in statuses),
        }
        for network in store.networks()
    ]


# ----- the command line


def main(args) -> int:
    """`meshvpn coord key create|nodes list|approve|revoke|tag|untag|networks list`; returns the exit code."""
    req = _request_from(args)
    socket_path, database = _locations(args)
    try:
        responses = list(request(str(socket_path), req))
    except DaemonNotRunning as exc:
        if req["cmd"] not in READ_ONLY:
            print(f"meshvpn coord: the coordination server must be running for this ({exc})", file=sys.stderr)
            return 1
        response = _read_database(database, req, exc)
        if response is None:
            return 1
    except (OSError, ValueError) as exc:
        print(f"meshvpn coord: admin socket {socket_path}: {exc}", file=sys.stderr)
        return 1
    else:
        response = responses[-1] if responses else {"error": "empty answer from the server"}
    if "error" in response:
        print(f"meshvpn coord: {response['error']}", file=sys.stderr)
        return 1
    response.pop("done", None)
    if getattr(args, "json", False):
        print(json.dumps(response, indent=2))
    else:
        print(_FORMATTERS[req["cmd"]](response))
        if getattr(args, "qr", False) and response.get("join"):
            print(joinstring.qr_text(response["join"]))
    return 0


def _request_from(args) -> dict:
    verb = f"{args.admin} {args.action}"
    if verb == "key create":
        return {"cmd": "key_create", "network": args.network, "reusable": args.reusable,
                "ephemeral": args.ephemeral, "expires": args.expires,
                "address": None if args.address is None else str(args.address)}
    if verb in ("nodes approve", "nodes revoke"):
        return {"cmd": f"node_{args.action}", "node": args.node}
    if verb in ("nodes tag", "nodes untag"):
        return {"cmd": f"node_{args.action}", "node": args.node, "tag": args.tag}
    if verb in ("relays allow", "relays disallow"):
        return {"cmd": f"relays_{args.action}", "member": args.member, "network": args.network}
    return {"cmd": f"{args.admin}_list"}


def _locations(args) -> tuple[Path, Path | None]:
    """The admin socket and database: from the server's config file when there is one;
    an explicit --socket wins."""
    config_path = Path(getattr(args, "config", "") or "")
    if not config_path.is_file():
        return Path(args.socket), None
    settings = load_coord_config(config_path)
    socket_path = settings.admin_socket if Path(args.socket) == DEFAULT_ADMIN_SOCKET else Path(args.socket)
    return socket_path, settings.database


def _read_database(database: Path | str | None, req: dict, why: DaemonNotRunning) -> dict | None:
    if database is None or (isinstance(database, Path) and not database.is_file()):
        print(f"meshvpn coord: {why}, and there is no database to read (-c coord.yaml names it)", file=sys.stderr)
        return None
    store = open_store(database)
    print(f"meshvpn coord: server not running; read from {store.where}", file=sys.stderr)
    try:
        statuses = [NodeStatus(node, False, False, None, None) for node in store.nodes()]
        if req["cmd"] == "nodes_list":
            return {"nodes": [node_json(status) for status in statuses]}
        return {"networks": networks_json(store, statuses)}
    finally:
        store.close()


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [tuple("-" if value in (None, "") else str(value) for value in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _format_nodes(response: dict) -> str:
    nodes = response["nodes"]
    if not nodes:
        return "(no nodes)"
    now = time.time()
    rows = [
        (n["name"], n["network"], n["address"], n["state"], _paths_text(n.get("paths", {})), n["observed_host"],
         n["os"], format_ago(None if n["last_seen"] is None else now - n["last_seen"]), n["key"])
        for n in nodes
    ]
    return _table(("NAME", "NETWORK", "ADDRESS", "STATE", "PATHS", "SEEN FROM", "OS", "LAST SEEN", "KEY"), rows)


def _paths_text(paths: dict) -> str:
    """`peer:kind` for each peer the node reported a path to (`-` for one it cannot reach)."""
    return ",".join(f"{peer}:{kind or '-'}" for peer, kind in paths.items())


def _format_node(response: dict) -> str:
    node = response["node"]
    tags = f", tags {' '.join(node['tags'])}" if node.get("tags") else ""
    return f"{node['name']} ({node['network']}, {node['address']}): {node['state']}{tags}"


def _format_grant(response: dict) -> str:
    nodes = ", ".join(response["nodes"]) or "no node yet"
    return f"{response['member']} in {response['network']} ({nodes})"


def _format_relays(response: dict) -> str:
    rows = [(g["network"], g["member"], g["source"], ",".join(g["nodes"])) for g in response["peer_relays"]]
    return _table(("NETWORK", "ALLOWED", "BY", "NODES"), rows) if rows else "(no peer relays)"


def _format_networks(response: dict) -> str:
    rows = [(n["name"], n["cidr"], "yes" if n["approval_required"] else "no", n["nodes"], n["online"])
            for n in response["networks"]]
    return _table(("NETWORK", "CIDR", "APPROVAL", "NODES", "ONLINE"), rows) if rows else "(no networks)"


def _format_key(response: dict) -> str:
    kind = ", ".join(
        [("reusable" if response["reusable"] else "one-off")]
        + (["ephemeral"] if response["ephemeral"] else [])
        + [("no expiry" if response["expires"] is None
            else "expires " + time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(response["expires"])))]
    )
    head = f"auth key {response['id']} for network {response['network']} ({kind}); shown once"
    if response.get("join") is None:
        return f"{head}:\n{response['token']}\n({response['join_note']})"
    return f"{head}, as a join string; each machine joins with `meshvpn join --key` and this line:\n{response['join']}"


_FORMATTERS = {
    "key_create": _format_key,
    "nodes_list": _format_nodes,
    "node_approve": _format_node,
    "node_revoke": _format_node,
    "node_tag": _format_node,
    "node_untag": _format_node,
    "networks_list": _format_networks,
    "relays_allow": lambda response: "may relay: " + _format_grant(response),
    "relays_disallow": lambda response: "no longer relays: " + _format_grant(response),
    "relays_list": _format_relays,
}
