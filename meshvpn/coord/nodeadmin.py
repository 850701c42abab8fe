"""The admin's verbs on keys and nodes (create and list keys, list, find, approve and revoke
nodes), and a node leaving of its own accord (`leave`), which ends as a revocation does.

Why apart from `Membership`: these are the changes an administrator (or the node itself, for
good) makes to who belongs, while `Membership` runs the connections of those who do; the verbs
come from the admin socket and the web console (`meshvpn.coord.admin`). Sans-IO, mixed into
`Membership` like `LanPush`, whose state (`store`, `_roster`, `_conn_of_key`, ...) it uses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshvpn.control import messages as m
from meshvpn.coord.authkeys import AuthKey, create_auth_key
from meshvpn.coord.connstate import ConnState, Connection
from meshvpn.coord.events import AdminError, Announce, Close, NodeStatus
from meshvpn.coord.peerrelays import relay_names_by_network
from meshvpn.coord.store import NodeRecord


class NodeAdmin:
    """Mixed into `Membership`, whose state (`store`, `_roster`, `_conn_of_key`, ...) it uses."""

    store: Any
    _networks: dict
    _roster: Any
    _conn_of_key: dict[bytes, Connection]
    _elsewhere: dict
    _ephemeral_deadlines: dict[bytes, float]
    _actions: list
    _go_online: Any
    _send: Any
    _refuse: Any
    _forget: Any
    _log: Any

    def create_auth_key(
        self,
        network: str,
        *,
        secret: bytes,
        now: float,
        reusable: bool = False,
        ephemeral: bool = False,
        expires_in: float | None = None,
    ) -> tuple[str, AuthKey]:
        """A new pre-auth key for `network`; the token is shown once, only its hash is stored."""
        if network not in self._networks:
            raise AdminError(f"no network named {network!r}")
        token, key = create_auth_key(
            network, secret, now, reusable=reusable, ephemeral=ephemeral, expires_in=expires_in
        )
        self.store.put_auth_key(key)
        return token, key

    def list_auth_keys(self, network: str | None = None) -> list[AuthKey]:
        return self.store.auth_keys(network)

    def list_nodes(self, network: str | None = None) -> list[NodeStatus]:
        statuses, nodes = [], list(self._roster.nodes(network))
        relays = relay_names_by_network(self, {node.network for node in nodes})
        for node in nodes:
            conn = self._conn_of_key.get(node.key)
            statuses.append(
                NodeStatus(
                    node=node,
                    online=(conn is not None and conn.state is ConnState.ONLINE) or node.key in self._elsewhere,
                    pending_approval=conn is not None and conn.state is ConnState.PENDING,
                    observed_host=None if conn is None else conn.observed_host,
                    home_relay=None if conn is None else conn.home_relay,
                    paths={} if conn is None else dict(conn.paths),
                    peer_relay=node.name in relays[node.network],
                )
            )
        return statuses

    def find_node(self, ref: str) -> NodeRecord:
        """The one node `ref` names (key, overlay address or name); looked for again after re-reading
        the store, which another coord instance may have written, before giving up."""
        try:
            return self._roster.find(ref)
        except AdminError:
            self._roster.reload_all()
            return self._roster.find(ref)

    def approve(self, ref: str) -> NodeRecord:
        """Let a node into an approval-required network; a waiting connection comes online at once."""
        node = self.find_node(ref)
        if node.revoked:
            raise AdminError(f"node {node.name} is revoked")
        if not node.approved:
            node = replace(node, approved=True)
            self._roster.put(node)
            self._log("info", "node approved", node)
            conn = self._conn_of_key.get(node.key)
            if conn is not None and conn.state is ConnState.PENDING:
                self._go_online(conn, node)
        return node

    def revoke(self, ref: str) -> NodeRecord:
        """Shut a node out for good: close it, tell its peers to forget it, refuse it from now on."""
        node = self.find_node(ref)
        if node.revoked:
            return node
        node = replace(node, revoked=True)
        self._roster.put(node)
        self._log("warning", "node revoked", node)
        conn = self._conn_of_key.get(node.key)
        if conn is not None:
            self._send(conn, m.Error("revoked", "this node was revoked by an administrator"))
        self._expel(node, "revoked")
        return node

    def _leave(self, conn: Connection, now: float) -> None:
        """The node asks to be forgotten (`meshvpn leave`): delete it, its peers forget it; close."""
        node = self._roster.get(conn.key)
        if node is None or node.revoked:
            self._refuse(conn, now, "revoked" if node else "bad_request", "revoked" if node else "unknown node")
            return
        self._roster.delete(node.key)
        self._log("info", "node left", node)
        self._expel(node, "left")

    def _expel(self, node: NodeRecord, reason: str) -> None:
        """`node` is out (revoked, or left): close its connection, its peers forget it."""
        self._ephemeral_deadlines.pop(node.key, None)
        conn = self._conn_of_key.get(node.key)
        if conn is not None:
            self._forget(conn)
            self._actions.append(Close(conn.conn_id, reason))
        self._actions.append(Announce(node.network, node.key, m.PeerRemove(node.key)))
