"""What the membership core does when another coord instance on the same store changed something.

Several `meshvpn coord` instances may share one PostgreSQL database (`meshvpn.coord.instances`
carries their announcements over LISTEN/NOTIFY). Records are shared through the store; what an
instance learns from another is the rest: which nodes are online there, with what peer info, and
that an admin verb there changed a record. `Elsewhere` is the part of `Membership` that applies
it; sans-IO like the rest of the core.

Punches cross instances too: a node here asking to punch a peer online elsewhere gets its
`punch` from the peer info that instance published, and a `PunchElsewhere` asks the peer's
instance (`punched_elsewhere` there) to send the peer the mirror `punch`, built here, where the
requester's port sample is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Collection

from meshvpn.control import messages as m
from meshvpn.coord.candidates import punch_towards, punch_towards_info
from meshvpn.coord.connstate import ConnState
from meshvpn.coord.events import Announce, Close, Log, PunchElsewhere
from meshvpn.coord.peermap import peer_update
from meshvpn.coord.store import Conflict, NodeRecord

ADMISSION_ATTEMPTS = 16
"""Tries to admit a node whose name or address another coord instance took at the same moment."""


@dataclass(frozen=True)
class ChangeElsewhere:
    """What another coord instance said of one node (`meshvpn.coord.instances`)."""

    network: str
    subject: bytes
    message: m.Message | None = None
    """Its `peer_update` or `peer_remove` as that instance's nodes got it; None for an admin verb."""
    payload: bytes | None = None
    """`message` encoded."""
    origin: str | None = None
    """The instance, when known."""


class Leases:
    """Which instance each node online elsewhere is on, so that its nodes go offline here when
    that instance is gone."""

    def __init__(self) -> None:
        self.origin: dict[bytes, str] = {}

    def gone(self, alive: Collection[str]) -> list[bytes]:
        """The nodes of instances not in `alive`, forgotten here."""
        keys = [key for key, instance in self.origin.items() if instance not in alive]
        for key in keys:
            del self.origin[key]
        return keys


class Elsewhere:
    """Mixed into `Membership`, whose state (`_roster`, `_conn_of_key`, `_elsewhere`, ...) it uses."""

    _roster: Any
    _conn_of_key: dict
    _elsewhere: dict[bytes, m.PeerInfo]
    _ephemeral_deadlines: dict[bytes, float]
    _actions: list
    _networks: dict
    _leases: Leases
    _online: dict
    _peer_relays_stale: set[str]
    punches_dropped: int

    def expire_elsewhere(self, alive: Collection[str]) -> None:
        """Nodes online on an instance not in `alive` (the instances with a session on the
        database, `meshvpn.coord.instances`) are offline here, and this instance's nodes hear it.
        A heartbeat's silence judged that before, and a loaded instance whose heartbeats were
        held up, or whose notifications this one read late, lost its nodes from every view here
        until each of them changed again."""
        gone = self._leases.gone(alive)
        if gone:
            self._actions.append(Log("warning", "nodes of another instance count as offline: its database "
                                                "session is gone", {"nodes": len(gone)}))
        for key in gone:
            node = self._roster.get(key)
            if self._elsewhere.pop(key, None) is None or node is None:
                continue
            self._roster.changed(key)
            message, payload = peer_update(self._roster.entry(node, self._peer_info))
            self._actions.append(Announce(node.network, key, message, payload, relayed=True))

    def online_here(self) -> list[tuple[str, bytes, bytes]]:
        """(network, key, encoded `peer_update`) of every node online on this instance: what an
        instance that just started (and so heard none of it) asks for."""
        here = []
        for network, conns in self._online.items():
            for key in conns:
                node = self._roster.get(key)
                if node is not None:
                    here.append((network, key, peer_update(self._roster.entry(node, self._peer_info))[1]))
        return here

    def changed_elsewhere(self, network: str, subject: bytes, message: m.Message | None,
                          payload: bytes | None = None, origin: str | None = None) -> None:
        """Another coord instance sharing the store (`origin`, when known) changed `subject`'s
        record and, with `message` (its `peer_update` or `peer_remove`, encoded as `payload`),
        told its own nodes; do here what follows for the nodes connected to this instance."""
        self.changes_elsewhere([ChangeElsewhere(network, subject, message, payload, origin)])

    def changes_elsewhere(self, changes: list[ChangeElsewhere]) -> None:
        """`changed_elsewhere` for each of `changes`, in order, their records read in one go:
        when thousands of nodes join another instance, a read per change kept this one waiting
        on the database."""
        nodes = self._roster.reload([change.subject for change in changes])
        for change in changes:
            self._apply_elsewhere(change, nodes[change.subject])

    def _apply_elsewhere(self, change: ChangeElsewhere, node: NodeRecord | None) -> None:
        network, subject, message = change.network, change.subject, change.message
        if message is None:
            self._peer_relays_stale.add(network)  # an admin verb there: grants or tags may have changed
        conn = self._conn_of_key.get(subject)
        self._leases.origin.pop(subject, None)
        if node is None or node.revoked:
            self._elsewhere.pop(subject, None)
            self._ephemeral_deadlines.pop(subject, None)
            if conn is not None:
                self._send(conn, m.Error("revoked", "this node was revoked by an administrator"))
                self._forget(conn)
                self._actions.append(Close(conn.conn_id, "revoked"))
            self._actions.append(Announce(network, subject, m.PeerRemove(subject), relayed=True))
        elif conn is not None and conn.state is ConnState.PENDING and node.approved:
            self._go_online(conn, node)
        elif conn is not None and conn.state is ConnState.ONLINE:
            if message is not None:  # the node is here now: this instance's view of it wins
                self._announce(node)
        elif isinstance(message, m.PeerUpdate):
            if message.peer.online:
                self._elsewhere[subject] = message.peer
                self._ephemeral_deadlines.pop(subject, None)  # its instance deletes it once offline there
                if change.origin is not None:
                    self._leases.origin[subject] = change.origin
            else:
                self._elsewhere.pop(subject, None)
            self._roster.changed(subject)
            self._actions.append(Announce(network, subject, message, change.payload, relayed=True))

    def punched_elsewhere(self, network: str, peer: bytes, punch: m.Punch) -> None:
        """A node online on another instance asked to punch `peer` of `network`; that instance
        built `punch`, towards the requester. Every instance hears it; the one with `peer` online
        sends it if the requester is a member of its network online elsewhere, else drops and
        counts it: a stale or forged request must not make a node probe a stranger."""
        conn = self._online.get(network, {}).get(peer)
        if conn is None:
            return
        requester = self._roster.get(punch.peer_key)
        if (requester is None or requester.network != network or requester.revoked
                or punch.peer_key not in self._elsewhere):
            self.punches_dropped += 1
            return
        self._send(conn, punch)

    def _punch_elsewhere(self, conn: Any, peer_key: bytes, now: float) -> bool:
        """Answer `conn`'s punch request for `peer_key` if that peer is online on another instance
        in the node's network: the requester's `punch` now, the peer's through its instance."""
        peer, node = self._elsewhere.get(peer_key), self._roster.get(peer_key)
        me = self._roster.get(conn.key)
        if peer is None or node is None or node.network != conn.network or me is None:
            return False
        self._send(conn, punch_towards_info(peer))
        self._actions.append(PunchElsewhere(conn.network, peer_key, punch_towards(me, conn, now)))
        return True

    def _save_registration(self, conn: Any, msg: m.Register, node: NodeRecord | None, now: float) -> NodeRecord:
        """Store the registration, admitting a new node; a name or address another coord instance
        sharing the store took a moment ago is held and the next one tried."""
        for attempt in range(ADMISSION_ATTEMPTS):
            try:
                with self._roster.transaction():
                    if node is None:
                        node = self._roster.admit(conn.key, msg, self._networks, now)
                    network = self._networks[node.network]
                    node = replace(
                        node, hostname=msg.hostname, version=msg.version, os=msg.os,
                        **self._sane(conn, msg.public_endpoint, msg.local_endpoints),
                        last_seen=now, approved=node.approved or not network.approval_required,
                    )
                    self._roster.put(node)
                return node
            except Conflict as exc:
                if attempt == ADMISSION_ATTEMPTS - 1 or node is None or self._roster.get(conn.key) is not None:
                    raise
                if exc.column == "name":
                    self._roster.hold(node.network, name=node.name)
                else:
                    self._roster.hold(node.network, address=node.address)
                node = None
        raise AssertionError("unreachable")
