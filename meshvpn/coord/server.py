"""The coordination server's asyncio shell: sockets, timers and signals around `Membership`.

Every decision is made by the sans-IO `membership` core; this module only moves bytes. Each TCP
connection runs a `ServerChannel` (Noise IK, sealed frames); decrypted frames go to
`Membership.receive`, and the actions the core returns become frames out, closes and log lines.
One timer follows `Membership.get_timer()`. Peer announcements go through `fanout`, which
coalesces them per network over a short window; the shell sends one slice of destinations per
loop iteration, so handshakes and keepalives are served in between. STUN, the admin socket
(`admin`) and the optional web console (`console`, the same admin requests over HTTP) share the
loop.

Nothing a client sends can stop the server: a channel error, garbage, an oversized frame, a
handshake that never completes, silence, or a client that never reads closes that one connection
with a log line naming its address and, once known, its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from meshvpn import keys, noise, service, tlsenvelope
from meshvpn.config import CoordConfig, load_coord_config
from meshvpn.control import messages
from meshvpn.coord import admin
from meshvpn.coord.console import start_console
from meshvpn.coord.fanout import Fanout, FanoutSettings
from meshvpn.coord.backlog import BACKLOG_WAIT, WriteBacklog
from meshvpn.coord.elsewhere import ChangeElsewhere
from meshvpn.coord.events import PunchElsewhere
from meshvpn.coord.instances import CHECK, InstanceLink
from meshvpn.coord.limits import LISTEN_BACKLOG, ServerLimits
from meshvpn.coord.connection import Connection
from meshvpn.coord.mapbudget import MapBudget
from meshvpn.coord.sealer import Sealer
from meshvpn.coord.membership import Announce, Close, Log, Membership, MembershipSettings, Send, SendMap
from meshvpn.coord.store import Network, SqliteStore, open_store
from meshvpn.dualstack import listen_hosts
from meshvpn.errors import ConfigError, MeshError, RemoteProtocolError
from meshvpn.coord.lanpush import with_new_access
from meshvpn.coord.turncreds import TurnSecret
from meshvpn.metrics import MetricsEndpoint, coord_families, start_metrics
from meshvpn.localsock import ControlServer
from meshvpn.prefixcap import PrefixCaps, PrefixLimits
from meshvpn.relaytoken import TokenMinter
from meshvpn.reload import Reloader
from meshvpn.stunio import StunServer, start_stun_server

log = logging.getLogger("meshvpn.coord.server")

_SHARED_VERBS = frozenset({"node_approve", "node_revoke", "node_tag", "node_untag", "relays_allow", "relays_disallow"})
"""Admin verbs whose effect other instances must apply to the nodes connected to them."""

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def membership_settings(config: CoordConfig) -> MembershipSettings:
    """What the core needs from the coord config."""
    networks = tuple(Network(n.name, str(n.cidr), n.approval_required) for n in config.networks)
    return MembershipSettings(networks, relay_infos(config), turn_secrets(config), keepalive=config.keepalive,
                              access={n.name: n.access for n in config.networks},
                              peer_relays={n.name: n.peer_relays for n in config.networks})


def turn_secrets(config: CoordConfig) -> tuple[TurnSecret, ...]:
    """The config's TURN servers with their shared secrets, read from `secret_file` when it is set."""
    out = []
    for index, entry in enumerate(config.turn):
        where = f"turn[{index}]"
        secret = entry.secret
        if entry.secret_file is not None:
            try:
                secret = next(iter(keys.read_secret_file(entry.secret_file, "TURN secret file").splitlines()), "")
            except ConfigError as exc:
                raise ConfigError(f"{where}.secret_file: {exc}") from None
            secret = secret.strip()
        if not secret:
            raise ConfigError(f"{where}: no shared secret: set secret or secret_file")
        out.append(TurnSecret(entry.name, entry.address.host, entry.address.port, secret.encode(), entry.tls_port or None))
    return tuple(out)


def relay_infos(config: CoordConfig) -> tuple[messages.RelayInfo, ...]:
    return tuple(messages.RelayInfo(r.name, r.address.host, r.address.port, r.public_key, r.tls_port or None)
                 for r in config.relays)


class CoordServer:
    """A running coordination server: control listener, STUN, admin socket, the core and its timer."""

    def __init__(
        self,
        settings: CoordConfig,
        *,
        limits: ServerLimits = ServerLimits(),
        clock: Callable[[], float] = time.time,
        fanout: FanoutSettings = FanoutSettings(),
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.clock = clock
        self.identity = noise.StaticIdentity.from_private(keys.read_private_key(settings.private_key_file))
        self.store = open_store(settings.database)
        self.membership = Membership(
            self.store, membership_settings(settings), clock(),
            relay_tokens=TokenMinter(self.identity.private, os.urandom),
        )
        self.fanout = Fanout(fanout)
        self.sealer = Sealer()
        self.maps = MapBudget(limits.peer_map_budget)
        self.backlog = WriteBacklog(limits.fanout_backlog)
        self.instances: InstanceLink | None = None
        """With a PostgreSQL database: the other coord instances sharing it (`instances`)."""
        if isinstance(settings.database, str):
            self.instances = InstanceLink(settings.database, self._changed_elsewhere, self._synced,
                                          self._punched_elsewhere)
        self._drain_handle: asyncio.Handle | None = None
        self._elsewhere_due: list[ChangeElsewhere] = []
        """Changes other instances published, waiting for `_apply_elsewhere`."""
        self._batch: contextlib.AbstractContextManager | None = None
        """The store transaction holding this loop iteration's inputs (`batch`), while open."""
        self._flush_due = False
        self.stopping = False
        self.reloader = Reloader(settings)
        self.reloader.on_change("keepalive", self._reconfigure)
        self.reloader.on_change("relays", self._reconfigure)
        self.metrics: MetricsEndpoint | None = None
        self.address: tuple[str, int] | None = None
        """Where the control listener is bound (the real port when the config says 0)."""
        self.stun: StunServer | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._tls_listener: asyncio.AbstractServer | None = None
        self._admin: ControlServer | None = None
        self.console = None
        """The web console (`meshvpn.coord.console.web.Console`) when `console.enabled`."""
        self._connections: set[Connection] = set()
        self._caps = PrefixCaps(PrefixLimits(limits.max_connections_per_host, limits.max_connections_per_subnet))
        self._unregistered = PrefixCaps(
            PrefixLimits(limits.max_unregistered_per_host, limits.max_unregistered_per_subnet))
        self._max_connections = max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - limits.reserved_descriptors)
        self._timer: asyncio.TimerHandle | None = None
        self._lease_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Open every listener; raise MeshError naming the one that failed."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        try:
            if self.instances is not None:  # before any node: a join here must reach every instance
                await self.instances.start()
                self._check_leases()
            self._listener = await loop.create_server(
                lambda: Connection(self), listen_hosts(settings.listen.host), settings.listen.port,
                reuse_address=True, backlog=LISTEN_BACKLOG,
            )
            self.address = self._listener.sockets[0].getsockname()[:2]
            self._tls_listener = await tlsenvelope.listen(settings.tls, lambda: Connection(self), backlog=LISTEN_BACKLOG)
            alt = settings.stun_alt_listen
            self.stun = await start_stun_server(
                settings.stun_listen.host, settings.stun_listen.port, None if alt is None else tuple(alt), tcp=True
            )
            self._admin = ControlServer(str(settings.admin_socket), self._serve_admin)
            await self._admin.start()
            if settings.console.enabled:
                self.console = await start_console(settings.console, self.admin_answer)
        except OSError as exc:
            await self.close()
            raise MeshError(f"coord cannot listen: {exc}") from None
        except MeshError:
            await self.close()
            raise
        self.run_actions()
        self.metrics = await start_metrics(settings.metrics.listen, "coord",
                                           lambda: coord_families(self.membership, self._connections, self.fanout.times,
                                                                  self.backlog))
        log.info("coordination server %s listening on %s:%d, STUN on %s:%d, admin socket %s",
                 keys.encode_key(self.identity.public), *self.address, *self.stun.address, settings.admin_socket)

    async def close(self) -> None:
        """Stop listening, close every connection and the store."""
        self.stopping = True
        if self.metrics is not None:
            await self.metrics.close()
        for handle in (self._timer, self._drain_handle, self._lease_timer):
            if handle is not None:
                handle.cancel()
        listeners = [listener for listener in (self._listener, self._tls_listener) if listener is not None]
        for listener in listeners:
            listener.close()
        for conn in list(self._connections):
            conn.transport.abort()
        if self.stun is not None:
            self.stun.close()
        if self._admin is not None:
            await self._admin.close()
        if self.console is not None:
            await self.console.close()
        for listener in listeners:
            await listener.wait_closed()
        if self.instances is not None:
            await self.instances.close()
        self._commit()
        self.store.close()
        self.sealer.close()

    def reload(self, settings: CoordConfig) -> None:
        """Apply what a SIGHUP may change (log level, relays, keepalive, access rules); name what needs a restart."""
        self.reloader.settings, access = with_new_access(self.reloader.settings, settings)
        if access is not None:
            self.membership.set_access(access)
        self.reloader.apply(settings)
        self.settings = self.reloader.settings
        self.run_actions()

    def _reconfigure(self, settings: CoordConfig) -> None:
        self.membership.reconfigure(relay_infos(settings), settings.keepalive)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.run_actions()

    def status(self) -> str:
        """The one-line service status."""
        return f"{self.membership.online_count()} nodes online"

    # ----- connections

    def admit(self, conn: Connection) -> str | None:
        """Count a new connection against every cap; or say which cap refuses it."""
        if len(self._connections) >= self._max_connections:
            return f"{len(self._connections)} connections, the descriptor limit allows no more"
        full = self._caps.admit(conn.host)
        if full is not None:
            return f"more than {self.limits.max_connections_per_host} connections from {conn.host} ({full})"
        full = self._unregistered.admit(conn.host)
        if full is not None:
            self._caps.release(conn.host)
            return f"too many unregistered connections from {full}"
        conn.unregistered = True
        self._connections.add(conn)
        return None

    def registered(self, conn: Connection) -> None:
        """`conn` registered: it no longer counts against the caps of unregistered connections."""
        conn.unregistered = False
        self._unregistered.release(conn.host)

    def release(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
            self._caps.release(conn.host)
            if conn.unregistered:
                self.registered(conn)
        self.maps.forget(conn)
        self._start_maps()

    # ----- the core's actions and timer

    def batch(self) -> None:
        """Inputs follow until the loop's next turn, whose `run_actions` (scheduled here) carries
        out their consequences. With SQLite their writes share one transaction, committed (one
        fsync, some 5 ms, instead of one per registration) before any consequence is sent;
        PostgreSQL instances keep a transaction per write, as another instance may wait on it."""
        if self._flush_due or self.stopping:
            return
        self._flush_due = True
        if isinstance(self.store, SqliteStore):
            self._batch = self.store.transaction()
            self._batch.__enter__()
        asyncio.get_running_loop().call_soon(self.run_actions)

    def _commit(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.__exit__(None, None, None)

    def run_actions(self) -> None:
        """Commit the inputs' writes, carry out everything the core asked for (peer
        announcements go to the fan-out, peer maps wait for room), then make sure its timer and
        the fan-out's are armed."""
        self._flush_due = False
        self._commit()
        now = self.clock()
        while actions := self.membership.actions(announcements=True):
            for action in actions:
                if isinstance(action, Announce):
                    payload = action.payload or messages.encode(action.message)
                    self.fanout.add(action.network, action.subject, action.message, payload, now,
                                    self.membership.online_in(action.network))
                    if self.instances is not None and not action.relayed:
                        self.instances.publish(action.network, action.subject, payload)
                elif isinstance(action, Send):
                    pong = isinstance(action.message, messages.Pong)
                    if not pong and not isinstance(action.message, messages.Registered):
                        self._send_held(action.conn_id)
                    action.conn_id.send_payload(action.payload or messages.encode(action.message), stateless=pong)
                elif isinstance(action, SendMap):
                    action.conn_id.held = action.conn_id.held or []
                    self.maps.wait(action.conn_id)
                elif isinstance(action, Close):
                    action.conn_id.close_by_core(action.reason)
                elif isinstance(action, PunchElsewhere) and self.instances is not None:
                    self.instances.punch(action.network, action.peer, messages.encode(action.punch))
                elif isinstance(action, Log):
                    _log_core(action)
        self._start_maps()
        self._arm_timer()
        self._arm_drain()
        if self.instances is not None:
            self.instances.flush()

    def _start_maps(self) -> None:
        """Send the waiting peer maps there is room for, each built from the network as it is now:
        the fan-out's open window then sends the node only what is newer, and what the core sent
        it meanwhile follows the map."""
        while not self.stopping and (conn := self.maps.next()) is not None:
            listener = self.membership.listener(conn)
            if listener is not None and not conn.transport.is_closing():
                self.fanout.fresh(conn, listener[0])
                frames = self.membership.peer_map(conn)
                for frame in frames:
                    conn.send_payload(frame, peer_map=True)
                self.maps.sent(conn, sum(map(len, frames)))
                conn.mapped = True
            conn.release_held()
            if not conn.paused:
                self.maps.drained(conn)

    def drained(self, conn: Connection) -> None:
        """`conn`'s write buffer went below its low-water mark: its map bytes no longer count."""
        self.maps.drained(conn)
        self._start_maps()

    def _send_held(self, conn: Connection) -> None:
        """Send what the fan-out holds for `conn` before anything else goes to it, keeping order (a
        `punch` never names a peer the node has not heard of); a node whose map has not gone out
        needs none of it: the map will be newer."""
        listener = self.membership.listener(conn)
        if listener is not None and conn.mapped:
            for frame in self.fanout.take(conn, *listener):
                conn.send_payload(frame)

    def _audience(self, network: str) -> list:
        """The nodes online in `network` that the fan-out serves: those whose map went out."""
        return [entry for entry in self.membership.audience(network) if entry[0].mapped]

    def _arm_drain(self) -> None:
        if self._drain_handle is not None or self.stopping:
            return
        due = self.fanout.get_timer()
        if due is not None:
            loop = asyncio.get_running_loop()
            delay = due - self.clock()
            self._drain_handle = loop.call_soon(self._drain) if delay <= 0 else loop.call_later(delay, self._drain)

    def _drain(self) -> None:
        """Send one slice of due announcements; the rest wait for the next loop iteration, so each
        iteration serves the I/O that is ready besides one slice."""
        self._drain_handle = None
        if self.backlog.full(self.clock()):  # slow readers: their next window grows meanwhile
            self._drain_handle = asyncio.get_running_loop().call_later(BACKLOG_WAIT, self._drain)
            return
        self.sealer.send(self.fanout.drain(self.clock(), self._audience))
        self.run_actions()

    def _arm_timer(self) -> None:
        # The core's deadlines only move later, and new ones are never earlier than those it
        # already reported, so an armed timer stays right; asking again only when none is armed
        # keeps get_timer (linear in connections) off the per-message path.
        if self._timer is not None or self.stopping:
            return
        deadline = self.membership.get_timer()
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.membership.handle_timer(self.clock())
        self.run_actions()

    # ----- admin socket

    def admin_answer(self, request: dict) -> dict:
        """One admin request on the live core, its consequences sent at once: the admin socket
        and the web console both come here."""
        response = admin.answer(self.membership, request, self.clock(), os.urandom)
        self.run_actions()
        if request.get("cmd") == "key_create" and "token" in response:
            response.update(admin.join_fields(response["token"], self.identity.public, self.settings.public_address,
                                              self.address, request.get("address")))
        if self.instances is not None and request.get("cmd") in _SHARED_VERBS:
            for node in admin.nodes_changed(self.membership, response):
                self.instances.publish(node.network, node.key, None)
            self.instances.flush()
        return response

    async def _serve_admin(self, request: dict) -> AsyncIterator[dict]:
        yield {**self.admin_answer(request), "done": True}

    def _synced(self, instance: str) -> None:
        """Another instance started: tell it who is online here."""
        self.instances.answer(instance, self.membership.online_here())

    def _check_leases(self) -> None:
        """Every few seconds: nodes of instances whose database sessions are gone go offline here."""
        self._lease_timer = asyncio.get_running_loop().call_later(CHECK, self._check_leases)
        alive = self.instances.alive()
        if alive is not None:
            self.membership.expire_elsewhere(alive)
        self.run_actions()

    def _changed_elsewhere(self, network: str, key: bytes, frame: bytes | None, instance: str) -> None:
        """Another instance on the database changed `key` (see `meshvpn.coord.instances`)."""
        try:
            message = None if frame is None else messages.decode(frame)
        except RemoteProtocolError as exc:
            log.warning("dropping a change from another instance: %s", exc)
            return
        self._elsewhere_due.append(ChangeElsewhere(network, key, message, frame, instance))
        if len(self._elsewhere_due) == 1:
            asyncio.get_running_loop().call_soon(self._apply_elsewhere)

    def _apply_elsewhere(self) -> None:
        """Apply the changes other instances published since the last call, their records read
        in one go: notifications come in bursts when many nodes join another instance."""
        changes, self._elsewhere_due = self._elsewhere_due, []
        if changes and not self.stopping:
            self.membership.changes_elsewhere(changes)
            self.run_actions()

    def _punched_elsewhere(self, network: str, key: bytes, frame: bytes, instance: str) -> None:
        """A node on another instance asked to punch node `key` (see `meshvpn.coord.instances`)."""
        try:
            punch = messages.decode(frame)
        except RemoteProtocolError as exc:
            punch = exc
        if not isinstance(punch, messages.Punch):
            log.warning("dropping a punch from instance %s: not a punch frame (%s)", instance, punch)
            return
        self._apply_elsewhere()  # the requester's own news came first
        self.membership.punched_elsewhere(network, key, punch)
        self.run_actions()


def _log_core(action: Log) -> None:
    fields = " ".join(f"{key}={value}" for key, value in action.fields.items())
    log.log(_LOG_LEVELS.get(action.level, logging.INFO), "%s %s", action.text, fields)


def main(args) -> int:
    """`meshvpn coord -c FILE`: serve until SIGTERM or SIGINT; SIGHUP reloads the config."""
    return service.run_server("coord", args.settings, CoordServer,
                              lambda: load_coord_config(Path(args.config)), ServerLimits().status_interval)
