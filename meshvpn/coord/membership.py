"""The coordination server's brain, without I/O: who is in which network, who is online, who punches.

Rules:

* A channel is authenticated before the core hears of it: `node_connected` gets the node's
  public key. The first message must be `register`. An unknown key needs a valid pre-auth key;
  a known key needs none. Revoked keys are refused for good.
* In a network that requires approval, a registered but unapproved node waits (``approval_pending``)
  on its open connection until an admin approves it.
* Nodes see only the nodes of their own network. Coming online sends the node `registered` and
  the full `peer_map`, and every online peer a `peer_update`; leaving sends `peer_update`
  (online=false); revocation closes the node and sends `peer_remove` in the same batch.
* `punch_request` from A for B sends `punch` to A and to B in the same batch, each with the
  other's candidate endpoints, so both sides fire at once (the seed's "switching server").
  Each side's NAT report goes along, and a fresh port sample (at most SAMPLE_LIFETIME old; TCP's
  as `tcp_sample`) leads the candidates: behind a sequential NAT it is the port below the next mappings. A peer
  online on another coord instance gets its `punch` through that instance (`coord.elsewhere`).
* A connection that has not registered within `REGISTER_TIMEOUT` is closed, pings or not
  (`meshvpn.coord.connstate` holds the states and what each accepts).
* Endpoints a node reports are checked for sense before any peer sees them
  (`meshvpn.coord.candidates`); punch requests are rate-limited per node.
* A connection silent for 3 × keepalive is closed. Nodes of ephemeral keys are deleted once they
  have been offline that long.
* Every state change is written to the store before any message that reveals it is emitted.

`now` is Unix time (the shell passes ``time.time()``): the same clock stamps records that outlive
restarts and key expiry. Inputs are the methods below; outputs are pulled with `actions()` and
`get_timer()`. A `Close` means the core has already forgotten the connection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Hashable

from meshvpn.control import messages as m
from meshvpn.coord.addressing import AddressPoolExhausted
from meshvpn.coord.authkeys import AuthKeyRejected
from meshvpn.coord import passes
from meshvpn.coord.candidates import SAMPLE_LIFETIME, plain_ip, punch_towards, sane_locals, sane_public, take_reported
from meshvpn.coord.candidates import take_samples
from meshvpn.coord.connstate import ConnEvent, ConnState, Connection, delta_format, peer_info
from meshvpn.coord.elsewhere import Elsewhere, Leases
from meshvpn.coord.lanpush import LanPush
from meshvpn.coord.events import Action, AdminError, Announce, Close, Log, NodeStatus, Send, SendMap
from meshvpn.coord.peermap import peer_update
from meshvpn.coord.nodeadmin import NodeAdmin
from meshvpn.coord.peerrelays import PeerRelays
from meshvpn.coord.settings import MembershipSettings
from meshvpn.coord.roster import Roster
from meshvpn.coord.store import Conflict, NodeRecord, Store
from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import encode_key
from meshvpn.relaytoken import TokenMinter

__all__ = ["Action", "AdminError", "Close", "Log", "Membership", "MembershipSettings", "NodeStatus",
           "SAMPLE_LIFETIME", "Send", "SendMap", "TOKEN_SLACK"]

TOKEN_SLACK = 30.0
"""Relay tokens due within this many seconds are refreshed in the same timer call: with
thousands of nodes online, a wake-up per node's refresh would each cost O(connections)."""


class Membership(Elsewhere, LanPush, PeerRelays, NodeAdmin):
    """Sans-IO coordination core; see the module docstring for its rules."""

    def __init__(
        self, store: Store, settings: MembershipSettings, now: float, relay_tokens: TokenMinter | None = None
    ) -> None:
        self.store = store
        self._minter = relay_tokens
        """Mints each online node's relay tokens; without it nodes get none (and relays refuse them)."""
        self.settings = settings
        self._networks = {network.name: network for network in settings.networks}
        self._conns: dict[Hashable, Connection] = {}
        self._conn_of_key: dict[bytes, Connection] = {}
        self._online: dict[str, dict[bytes, Connection]] = {}
        self._ephemeral_deadlines: dict[bytes, float] = {}
        self._elsewhere: dict[bytes, m.PeerInfo] = {}  # online on other instances (`elsewhere`)
        self._leases = Leases()
        self._peer_relays, self._peer_relays_stale, self._grants = {}, set(), {}
        self._actions: list[Action] = []
        self.received: Counter = Counter()
        """Control messages received, by type (read by the metrics endpoint)."""
        self.refused: Counter = Counter()
        """Connections refused, by error code (read by the metrics endpoint)."""
        self.limited: Counter = Counter()
        """Requests dropped by a rate limit, by message type."""
        self.endpoints_dropped = 0
        """Reported endpoints not passed on: they failed the sense check (`coord.candidates`)."""
        self.punches_dropped = 0
        """Punches another coord instance asked for a node online here that were not sent: the
        requester did not check out (`punched_elsewhere`)."""
        with store.transaction():
            for network in settings.networks:
                store.put_network(network)
        self._roster = Roster(store)
        """Every stored node, read from the store once; all node writes go through it."""
        for node in self._roster.nodes():
            if node.ephemeral and not node.revoked:
                self._ephemeral_deadlines[node.key] = now + settings.silence_limit

    # ----- outputs

    def actions(self, announcements: bool = False) -> list[Action]:
        """Everything to do since the last call, in order; with `announcements`, each `Announce`
        and `SendMap` whole, else as one `Send` per node online in its network now, and the map
        as its `Send`s."""
        self.settle_peer_relays()
        actions, self._actions = self._actions, []
        if announcements:
            return actions
        return [send for action in actions for send in self._sends(action)]

    def peer_map(self, conn_id: Hashable) -> list[bytes]:
        """The encoded `peer_map` frames of the node online on `conn_id` as its network is now
        (none if it is not online): what `SendMap` asks for."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is not ConnState.ONLINE:
            return []
        return self._roster.map_frames(conn.network, conn.key, self._peer_info, self.settings.peer_map_part_bytes)

    def _sends(self, action: Action) -> list[Action]:
        if isinstance(action, SendMap):
            return [Send(action.conn_id, m.decode(frame), frame) for frame in self.peer_map(action.conn_id)]
        if not isinstance(action, Announce):
            return [action]
        return [Send(conn.conn_id, action.message, action.payload)
                for key, conn in self._online.get(action.network, {}).items() if key != action.subject]

    def audience(self, network: str) -> list[tuple[Hashable, bytes, bool]]:
        """Every node online in `network`: its connection, its key and the delta format it takes."""
        return [(conn.conn_id, key, conn.deltas) for key, conn in self._online.get(network, {}).items()]

    def listener(self, conn_id: Hashable) -> tuple[str, bytes, bool] | None:
        """The network, key and delta format of the online node on `conn_id`, else None."""
        conn = self._conns.get(conn_id)
        online = conn is not None and conn.state is ConnState.ONLINE and conn.network is not None
        return (conn.network, conn.key, conn.deltas) if online else None

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None."""
        limit = self.settings.silence_limit
        deadlines = [c.deadline(limit) for c in self._conns.values()]
        deadlines.extend(self._ephemeral_deadlines.values())
        deadlines.extend(c.tokens_due for c in self._conns.values() if c.tokens_due is not None)
        return min(deadlines, default=None)

    def registered(self, conn_id: Hashable) -> bool:
        """Whether `conn_id` has registered (it may still await approval)."""
        conn = self._conns.get(conn_id)
        return conn is not None and conn.state is not ConnState.NEW

    def online_in(self, network: str) -> int:
        return len(self._online.get(network, ()))

    def online_count(self) -> int:
        """How many nodes are online now (for the service status line)."""
        return sum(len(nodes) for nodes in self._online.values())

    def reconfigure(self, relays: tuple[m.RelayInfo, ...], keepalive: float) -> None:
        """Apply the settings a reload may change; nodes learn new relays when they next register."""
        self.settings = replace(self.settings, relays=relays, keepalive=keepalive)

    # ----- connection inputs

    def node_connected(self, conn_id: Hashable, node_key: bytes, observed_host: str, now: float,
                       observed_port: int | None = None) -> None:
        """A channel authenticated `node_key`; `observed_host` and `observed_port` are its source
        as the server saw it."""
        previous = self._conn_of_key.get(node_key)
        if previous is not None:
            self._drop(previous, now, close_reason="replaced by a newer connection")
        conn = Connection.opened_at(conn_id, node_key, plain_ip(observed_host), now, observed_port)
        self._conns[conn_id] = conn
        self._conn_of_key[node_key] = conn

    def node_disconnected(self, conn_id: Hashable, now: float) -> None:
        """The channel went away; harmless for a connection the core already closed."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._drop(conn, now, close_reason=None)

    def receive(self, conn_id: Hashable, payload: bytes, now: float) -> None:
        """One decrypted control frame from `conn_id`."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn.last_heard = now
        try:
            message = m.decode(payload)
        except RemoteProtocolError as exc:
            self._refuse(conn, now, "bad_request", str(exc))
            return
        self.received[message.TYPE] += 1
        if not conn.accepts(message):
            self._send(conn, m.Error("bad_request", f"{message.TYPE} not accepted while {conn.state.value}"))
            return
        if isinstance(message, m.Register):
            if message.tcp_punch and conn.observed_port:
                conn.public_tcp = m.Endpoint(conn.observed_host, conn.observed_port)
            self._register(conn, message, now)
        elif isinstance(message, m.Leave):
            self._leave(conn, now)
        elif isinstance(message, m.Ping):
            self._send(conn, m.Pong())
        elif isinstance(message, m.Endpoints):
            changed = take_reported(conn, message)
            self._update_node(conn, changed, **self._sane(conn, message.public, message.local))
        elif isinstance(message, m.RelayHome):
            self._relay_home(conn, message)
        elif isinstance(message, m.TurnRelayed):
            changed = message.endpoints != conn.turn_relayed
            conn.turn_relayed = message.endpoints
            self._update_node(conn, changed)
        elif isinstance(message, m.Paths):
            self._paths(conn, message.paths)
        elif isinstance(message, m.Groups):
            self._groups(conn, message)
        elif isinstance(message, m.PunchRequest):
            if not conn.punches.take(now):
                self.limited["punch_request"] += 1
                return
            take_samples(conn, message, now)
            self._punch(conn, message.peer_key, now)

    def handle_timer(self, now: float) -> None:
        """Close silent and unregistered connections, forget ephemeral nodes offline too long, refresh relay tokens."""
        for conn in self._conns.values():
            if conn.tokens_due is not None and conn.tokens_due <= now + TOKEN_SLACK:
                tokens, turn = passes.issue(self._minter, self.relays_for(conn), self.settings.turn, conn, now)
                self._send(conn, m.RelayTokens(tokens, turn=turn))
        limit = self.settings.silence_limit
        for conn in [c for c in self._conns.values() if c.deadline(limit) <= now]:
            reason = f"silent for {now - conn.last_heard:.0f}s"
            if conn.state is ConnState.NEW and conn.last_heard + limit > now:
                reason = f"no register within {now - conn.opened:.0f}s"
            self._drop(conn, now, close_reason=reason)
        for key in [k for k, t in self._ephemeral_deadlines.items() if t <= now]:
            node = self._roster.get(key)
            del self._ephemeral_deadlines[key]
            if node is not None:
                self._roster.delete(key)
                self._log("info", "ephemeral node removed", node)
                self._actions.append(Announce(node.network, key, m.PeerRemove(key)))

    # ----- registration

    def _register(self, conn: Connection, msg: m.Register, now: float) -> None:
        node = self._roster.get(conn.key)
        if node is not None and node.revoked:
            self._refuse(conn, now, "revoked", "this node was revoked by an administrator")
            return
        if node is not None and node.network not in self._networks:
            self._refuse(conn, now, "bad_request", f"network {node.network} no longer exists")
            return
        joined = node is None
        try:
            node = self._save_registration(conn, msg, node, now)
        except Conflict as exc:
            self._refuse(conn, now, "bad_request", f"busy, try again: {exc}")
            return
        except AuthKeyRejected as exc:
            self._refuse(conn, now, exc.code, str(exc))
            return
        except AddressPoolExhausted as exc:
            self._refuse(conn, now, "network_full", str(exc))
            return
        if joined:
            self._log("info", "node joined", node, auth_key=node.auth_key_id)
        conn.network = node.network
        take_reported(conn, msg)
        conn.deltas, conn.lan_party = delta_format(msg), bool(msg.lan_party)
        conn.peer_relays = bool(msg.peer_relays)
        self._ephemeral_deadlines.pop(node.key, None)
        if node.approved:
            self._go_online(conn, node)
        else:
            conn.advance(ConnEvent.AWAITS_APPROVAL)
            self._log("info", "node awaits approval", node)
            self._send(conn, m.Error("approval_pending", f"an administrator must approve {node.name}"))

    def _go_online(self, conn: Connection, node: NodeRecord) -> None:
        network = self._networks[node.network]
        conn.advance(ConnEvent.REGISTERED if conn.state is ConnState.NEW else ConnEvent.APPROVED)
        self._online.setdefault(node.network, {})[node.key] = conn
        self._roster.changed(node.key)
        members = self._roster.nodes(node.network)
        self.peer_relays_before_online(node.network)
        self._send(conn, passes.registered(self._minter, self.settings, network, node, members, conn, self))
        self._actions.append(SendMap(conn.conn_id))
        self._announce(node, exclude=node.key)
        self._log("info", "node online", node, observed_host=conn.observed_host)

    # ----- online-node requests

    def _update_node(self, conn: Connection, announce: bool = False, **changes: Any) -> None:
        node = self._roster.get(conn.key)
        assert node is not None
        updated = replace(node, **changes)
        if updated != node:
            self._roster.put(updated)
        if updated != node or announce:
            self._roster.changed(conn.key)
            self._announce(updated, exclude=conn.key)

    def _relay_home(self, conn: Connection, message: m.RelayHome) -> None:
        offered = {offer.name for offer in self.relays_for(conn)}
        if message.relay not in offered:
            self._send(conn, m.Error("bad_request", f"unknown relay {message.relay!r}"))
            return
        rtts = tuple(rtt for rtt in message.rtts or () if rtt.relay in offered)
        if (conn.home_relay, conn.relay_rtts) != (message.relay, rtts):
            conn.home_relay, conn.relay_rtts = message.relay, rtts
            node = self._roster.get(conn.key)
            assert node is not None
            self._roster.changed(conn.key)
            self._announce(node, exclude=conn.key)

    def _paths(self, conn: Connection, paths: tuple[m.PeerPath, ...]) -> None:
        """Keep what the node says of its paths, for the admin's view; names of strangers are ignored."""
        members = {n.name for n in self._roster.nodes(conn.network) if n.key != conn.key}
        for path in paths:
            if path.peer in members:
                conn.paths[path.peer] = path.kind

    def _punch(self, conn: Connection, peer_key: bytes, now: float) -> None:
        assert conn.network is not None
        peer_conn = self._online.get(conn.network, {}).get(peer_key)
        if peer_conn is None and peer_key != conn.key and self._punch_elsewhere(conn, peer_key, now):
            return
        if peer_conn is None or peer_key == conn.key:
            self._send(conn, m.Error("peer_unavailable", "that peer is not online in your network"))
            return
        me, peer = self._roster.get(conn.key), self._roster.get(peer_key)
        assert me is not None and peer is not None
        self._send(conn, punch_towards(peer, peer_conn, now))
        self._send(peer_conn, punch_towards(me, conn, now))

    # ----- helpers

    def _sane(self, conn: Connection, public: m.Endpoint | None, local: tuple[m.Endpoint, ...]) -> dict[str, Any]:
        """The reported endpoints that make sense (`coord.candidates`), as record fields; count the rest."""
        sane = {"public_endpoint": sane_public(public), "local_endpoints": sane_locals(local, conn.observed_host)}
        self.endpoints_dropped += (public is not None and sane["public_endpoint"] is None) + len(local) - len(
            sane["local_endpoints"])
        return sane

    def _peer_info(self, node: NodeRecord) -> m.PeerInfo:
        conn = self._online.get(node.network, {}).get(node.key)
        if conn is None and node.key in self._elsewhere:
            return self._elsewhere[node.key]
        return self._with_relay_flag(peer_info(node, conn), node.network)

    def _announce(self, node: NodeRecord, exclude: bytes | None = None) -> None:
        """Tell the other online nodes of `node`'s network its peer info as it is now."""
        message, payload = peer_update(self._roster.entry(node, self._peer_info))
        self._actions.append(Announce(node.network, node.key, message, payload))

    def _send(self, conn: Connection, message: m.Message) -> None:
        self._actions.append(Send(conn.conn_id, message))

    def _refuse(self, conn: Connection, now: float, code: str, reason: str) -> None:
        self.refused[code] += 1
        self._send(conn, m.Error(code, reason[: m.MAX_ERROR_TEXT]))
        fields = {"key": encode_key(conn.key), "observed_host": conn.observed_host, "code": code}
        self._actions.append(Log("warning", f"connection refused: {reason}", fields))
        self._drop(conn, now, close_reason=code)

    def _forget(self, conn: Connection) -> bool:
        """Remove every trace of `conn`; whether it was online."""
        del self._conns[conn.conn_id]
        if self._conn_of_key.get(conn.key) is conn:
            del self._conn_of_key[conn.key]
        if conn.state is ConnState.ONLINE:
            assert conn.network is not None
            del self._online[conn.network][conn.key]
            self._roster.changed(conn.key)
            return True
        return False

    def _drop(self, conn: Connection, now: float, close_reason: str | None) -> None:
        """The connection ends: peers learn the node went offline; Close if the server ends it."""
        was_online = self._forget(conn)
        if close_reason is not None:
            self._actions.append(Close(conn.conn_id, close_reason))
        node = self._roster.get(conn.key)
        if node is None or conn.state is ConnState.NEW:
            return
        node = replace(node, last_seen=now)
        self._roster.put(node)
        if node.ephemeral:
            self._ephemeral_deadlines[node.key] = now + self.settings.silence_limit
        if was_online:
            self._announce(node)
            self._log("info", "node offline", node, reason=close_reason or "disconnected")

    def _log(self, level: str, text: str, node: NodeRecord, **extra: Any) -> None:
        fields = {"node": node.name, "network": node.network, "key": encode_key(node.key), **extra}
        self._actions.append(Log(level, text, fields))

