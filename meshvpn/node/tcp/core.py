"""Direct TCP paths made by TCP simultaneous open through both NATs, without I/O.

When a site drops outgoing UDP, UDP hole punching cannot work, but TCP hole punching can:
after an outgoing SYN a NAT forwards incoming packets from the SYN's destination to the
inside host, so two nodes that connect() to each other's public TCP endpoint at the same
moment (the coord's ``punch`` is the starting gun) meet in the middle, a TCP simultaneous
open. Each node connects from its *punch port* (the TCP port its coord connection also comes
from, so the coord reports the NAT's mapping for it as ``public_tcp``) and listens on it too,
for a peer whose NAT is open, or whose router forwards a port to it (``mapped_tcp``: UPnP IGD,
NAT-PMP or PCP, `meshvpn.node.portmap`).

Rules:

* ``punch(peer, candidates)`` starts a campaign: up to `attempts` connects, one at a time,
  each given `attempt_timeout` (long enough for the kernel's SYN retransmission at 1 s, which
  is what usually lands once the peer's SYN opened its own NAT), the next `retry_gap` after a
  failure, taking the peer's candidates in turn (its router's mapping first, then its NAT's
  mapping of its punch port). A punch while a campaign runs refills its attempts, and connects
  to the first candidate at once if our pending connects all went elsewhere: the punch says the
  peer is ready now, and a connect to its NAT's mapping may wait out its timeout (a router's
  mapping that refused us while the peer still held its old path accepts us now). One for a
  peer with a path is ignored.
* ``dial(peer, candidates, endpoints)`` opens one connection to each endpoint at once, from the
  punch port or each from a new local port (TCP port prediction, :mod:`meshvpn.node.tcp.prediction`);
  they belong to the peer's campaign like its own connects.
* A node whose router maps its punch port (`mapped`; the node sets it only when the mapping's
  address is its public one) does not connect to a peer without such a mapping: the peer
  connects to ours. Our own SYN towards the peer would leave a connection
  entry on our router with the very address pair of the peer's SYN once forwarded to us,
  and the router would drop the peer's SYN as a clash for minutes.
* An accepted connection belongs to the punched peer that has its source among its candidates,
  else to the one punched peer on its source address (a NAT that picks a new port for us), the
  address of a candidate or one of the peer's `sources` (its NAT's UDP address: a peer whose coord
  link is IPv6 has no IPv4 TCP candidate, yet connects to our router's mapping over IPv4).
* A connected or accepted TCP connection is secured with :mod:`meshvpn.channel`: the node
  with the lower static key is the client (Noise initiator) and pins the peer's key; the
  other side authorises only the peer it punches towards. An accepted connection from an
  endpoint we do not punch towards is served for any punched peer with a lower key.
* The first connection whose channel is established is the peer's TCP path (`PathUp`);
  every other connection to that peer is closed. Each channel frame carries one meshvpn
  message, exactly as a UDP datagram would (handshakes, data, probes).
* A path is kept alive with empty frames after `keepalive` seconds without sending, and is
  dead (`PathDown`) after `idle_timeout` without receiving a byte, after a channel error, when
  the connection closes, or when the path finder found it silent under traffic (`path_silent`). Connections are always aborted (RST), never closed, so no
  TIME_WAIT blocks the next punch between the same two endpoints.
* When the host's network comes back under a path (``network_back``), the path checks that it
  carries (`meshvpn.node.tcpresume`): a path whose connection waits behind TCP's backed-off
  retransmission timer is ended at once and a new punch asked for at once (`WantPunch`), the
  relay carrying meanwhile; else the path is probed (`ProbePath`) and ended so if nothing comes
  over it within the check's wait.
* A campaign that ends without a path, or a path that died, asks for a new synchronised
  punch (`WantPunch`, the shell sends ``punch_request``) after `repunch_initial` seconds,
  doubling to `repunch_max`; a path coming up resets the backoff. ``stop(peer)`` (the peer
  left) ends it all for that peer. ``hand_over(peer)`` (the peer has a UDP path, which suits
  tunnelled TCP better) ends the campaign but keeps the path for `handover` seconds, make before
  break: the peer's UDP path may become current a probe's round trip after ours, and a path
  closed under it before then would leave it on the relay (or on nothing) meanwhile. Each end
  closes the path once its time is up; one whose path is closed by the other meanwhile punches
  no more. ``keep(peer)`` (the TCP path is the peer's path again) cancels the hand-over.

Inputs take ``now`` (monotonic seconds); randomness (channel ephemeral keys) comes from the
``random_bytes`` callable. Outputs are pulled with :meth:`TcpPunch.next_actions`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Callable, Optional

from meshvpn.channel import ClientChannel, ServerChannel
from meshvpn.errors import RemoteProtocolError
from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.node.events import TcpAbort, TcpConnect, TcpWrite
from meshvpn.node.tcp.campaign import (
    Action, Conn, ConnState, PathDown, PathUp, ProbePath, TcpCampaign, TcpEndpoint, TcpPunchConfig, WantPunch,
)
from meshvpn.node.tcpresume import Reconnect
from meshvpn.node.transports import Moves
from meshvpn.noise import StaticIdentity
from meshvpn.wire import Endpoint

__all__ = ["Action", "ConnState", "PathDown", "PathUp", "ProbePath", "TcpCampaign", "TcpEndpoint", "TcpPunch",
           "TcpPunchConfig", "WantPunch"]


class TcpPunch:
    """TCP punching and TCP paths for one node; the shell moves bytes and follows the actions."""

    def __init__(self, identity: StaticIdentity, random_bytes: Callable[[int], bytes], wall_offset: float,
                 config: TcpPunchConfig | None = None, peers: MutableMapping[bytes, TcpCampaign] | None = None) -> None:
        self.identity = identity
        self.config = config if config is not None else TcpPunchConfig()
        self.random_bytes = random_bytes
        self.wall_offset = wall_offset
        """Wall clock minus monotonic clock, for the Noise timestamps."""
        self.counters: dict[str, int] = {"attempts": 0, "paths": 0, "failed": 0}
        self._peers: MutableMapping[bytes, TcpCampaign] = {} if peers is None else peers
        """Each peer's campaign, connections and path (the node keeps them on its peers)."""
        self._conns: dict[int, Conn] = {}
        self._by_endpoint: dict[Endpoint, Conn] = {}
        self.moves = Moves()
        """Endpoints whose TCP path came or went (for the node's routes)."""
        self._next_id = 1
        self._actions: list[Action] = []
        self.mapped = False
        """Our router forwards a TCP port to our punch port (`mapped_tcp`): peers without one come to us."""

    # ---- inputs: control ------------------------------------------------------------

    def punch(self, peer_key: bytes, candidates: Sequence[Candidate], now: float, sources: Sequence[str] = ()) -> None:
        """The coord says punch: connect to the peer's TCP `candidates` now and retry (or, when
        only our router maps a port, wait for the peer to connect to it, from `sources` maybe)."""
        peer = self._peers.get(peer_key)
        if peer is None:
            peer = self._peers[peer_key] = TcpCampaign(peer_key, tuple(candidates))
        if peer.path is not None:
            return
        peer.candidates, peer.sources = tuple(candidates), tuple(sources)
        comes_to_us = self.mapped and all(c.kind is not CandidateKind.MAPPED for c in peer.candidates)
        peer.attempts_left = 0 if comes_to_us or not peer.candidates else self.config.attempts
        peer.repunch_at = None
        first = peer.candidates[0].endpoint if peer.candidates else None
        if not peer.conns or all(c.state is ConnState.CONNECTING and c.endpoint != first for c in peer.conns):
            self._attempt(peer, now, beside=True)

    def dial(self, peer_key: bytes, candidates: Sequence[Candidate], endpoints: Sequence[Endpoint], now: float,
             fresh_port: bool = False) -> None:
        """Connect to all of `endpoints` at once, from the punch port or each from a new local port
        (`meshvpn.node.tcp.prediction`: a peer NAT's predicted ports, or the peer from new mappings)."""
        peer = self._peers.get(peer_key)
        if peer is None:
            peer = self._peers[peer_key] = TcpCampaign(peer_key, tuple(candidates))
        if peer.path is not None:
            return
        for endpoint in endpoints:
            self.counters["attempts"] += 1
            conn = self._new_conn(endpoint, peer.key, ConnState.CONNECTING, now)
            self._actions.append(TcpConnect(conn.conn_id, endpoint, self.config.attempt_timeout, fresh_port))

    def stop(self, peer_key: bytes) -> None:
        """No TCP path to `peer_key` is wanted (it has a UDP path, or left): abort everything."""
        peer = self._peers.get(peer_key)
        if peer is None:
            return
        had_path = peer.path is not None
        for conn in list(peer.conns):
            self._forget(conn)  # while the peer is still known, so its path's endpoint index goes too
        del self._peers[peer_key]
        if had_path:
            self._actions.append(PathDown(peer_key, "not needed"))

    def hand_over(self, peer_key: bytes, now: float) -> None:
        """The peer has a UDP path: no more punching, and the TCP path closes `handover` seconds from
        now rather than at once (the module's rules)."""
        peer = self._peers.get(peer_key)
        if peer is None or peer.path is None:
            self.stop(peer_key)
            return
        for conn in list(peer.conns):
            if conn is not peer.path:
                self._forget(conn)
        peer.attempts_left, peer.next_attempt, peer.repunch_at = 0, None, None
        if peer.handover_until is None:
            peer.handover_until = now + self.config.handover

    def keep(self, peer_key: bytes) -> None:
        """The TCP path is the peer's path again (its UDP path went while the TCP one was handed over)."""
        peer = self._peers.get(peer_key)
        if peer is not None:
            peer.handover_until = None

    def path_silent(self, peer_key: bytes, now: float) -> None:
        """The path finder found the peer's TCP path silent under traffic (a NAT re-mapped one of us,
        long before `idle_timeout`): end it and punch again as for a lost path."""
        peer = self._peers.get(peer_key)
        if peer is not None and peer.path is not None:
            self._end(peer.path, "silent under traffic", now)

    def network_back(self, retransmitting: Mapping[int, Optional[bool]], now: float) -> None:
        """The host's network is usable again under the connections the shell holds, by `conn_id` with
        whether the kernel says each waits for a backed-off retransmission (None: it does not say):
        every path among them checks that it carries (the module's rules)."""
        for peer in list(self._peers.values()):
            if peer.path is not None and peer.path.conn_id in retransmitting:
                peer.resume.resumed(now, retransmitting[peer.path.conn_id])
                self._follow_resume(peer, now)

    # ---- inputs: connections ----------------------------------------------------------

    def connected(self, conn_id: int, now: float) -> None:
        """Connection `conn_id` (from a `Connect`) completed its TCP handshake."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is not ConnState.CONNECTING:
            return
        self._secure(conn, conn.peer_key, now)

    def accepted(self, remote: Endpoint, now: float) -> Optional[int]:
        """A connection arrived on the punch port from `remote`; its id, or None to abort it."""
        peer = self._accepted_for(Endpoint(*remote))
        if peer is None:
            unmatched = sum(1 for c in self._conns.values() if c.peer_key is None)
            if unmatched >= self.config.max_unmatched or not self._serves_unknown():
                return None
        conn = self._new_conn(remote, None if peer is None else peer.key, ConnState.HANDSHAKING, now)
        self._secure(conn, conn.peer_key, now)
        return conn.conn_id

    def connect_failed(self, conn_id: int, now: float) -> None:
        """Connection `conn_id` could not be opened (refused, timed out, address busy)."""
        self.connection_lost(conn_id, now)

    def connection_lost(self, conn_id: int, now: float) -> None:
        """Connection `conn_id` closed or failed; the shell has already dropped it."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._end(conn, "connection closed", now, abort=False)

    def data_received(self, conn_id: int, data: bytes, now: float) -> list[bytes]:
        """Bytes from connection `conn_id`; the meshvpn messages they completed."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.channel is None:
            return []
        conn.last_rx = now
        peer = self._peers.get(conn.peer_key) if conn.peer_key is not None else None
        if peer is not None and peer.path is conn:
            peer.resume.heard(now)
        try:
            messages = conn.channel.receive_data(data)
        except RemoteProtocolError as exc:
            self._end(conn, f"channel error: {exc}", now)
            return []
        self._flush(conn, now)
        if conn.state is ConnState.HANDSHAKING and conn.channel.established:
            self._established(conn, now)
        return messages

    def send(self, endpoint: TcpEndpoint, messages: list[bytes], now: float) -> bool:
        """Seal `messages` onto the TCP path at `endpoint`; False if there is none."""
        conn = self._by_endpoint.get(endpoint)
        if conn is None:
            return False
        channel = conn.channel
        for message in messages:
            channel.send(message)
        self._flush(conn, now)
        return True

    def handle_timer(self, now: float) -> None:
        """Do whatever is due at `now`; safe to call early or late."""
        cfg = self.config
        for conn in list(self._conns.values()):
            if conn.state is not ConnState.ESTABLISHED:
                if now >= conn.deadline:
                    self._end(conn, f"no channel within {cfg.handshake_timeout:g}s"
                              if conn.state is ConnState.HANDSHAKING else "connect timed out", now)
            elif now >= conn.last_rx + cfg.idle_timeout:
                self._end(conn, f"nothing received for {cfg.idle_timeout:g}s", now)
            elif now >= conn.last_tx + cfg.keepalive:
                conn.channel.send(b"")
                self._flush(conn, now)
        for peer in list(self._peers.values()):
            if peer.handover_until is not None and now >= peer.handover_until:
                self.stop(peer.key)
                continue
            peer.resume.handle_timer(now)
            self._follow_resume(peer, now)
            if peer.next_attempt is not None and now >= peer.next_attempt:
                self._attempt(peer, now)
            if peer.repunch_at is not None and now >= peer.repunch_at:
                peer.repunch_at = None
                self._actions.append(WantPunch(peer.key))

    # ---- outputs ---------------------------------------------------------------------

    def next_actions(self) -> list[Action]:
        """Connects, writes, aborts and path events, in order; each is returned once."""
        actions, self._actions = self._actions, []
        return actions

    def get_timer(self) -> Optional[float]:
        """When `handle_timer` must next be called, or None."""
        cfg = self.config
        deadlines = []
        for conn in self._conns.values():
            if conn.state is ConnState.ESTABLISHED:
                deadlines.append(min(conn.last_rx + cfg.idle_timeout, conn.last_tx + cfg.keepalive))
            else:
                deadlines.append(conn.deadline)
        for peer in self._peers.values():
            deadlines += [t for t in (peer.next_attempt, peer.repunch_at, peer.resume.get_timer(), peer.handover_until)
                          if t is not None]
        return min(deadlines, default=None)

    def path_endpoint(self, peer_key: bytes) -> Optional[TcpEndpoint]:
        """The TCP path to `peer_key`, if there is one."""
        peer = self._peers.get(peer_key)
        return None if peer is None or peer.path is None else TcpEndpoint(*peer.path.endpoint)

    def peer_keys(self) -> set[bytes]:
        """The peers this machine holds any state for (a campaign, connections or a path)."""
        return set(self._peers)

    def path_conn(self, endpoint: TcpEndpoint) -> Optional[int]:
        """The connection carrying the TCP path at `endpoint`, if there is one."""
        conn = self._by_endpoint.get(endpoint)
        return None if conn is None else conn.conn_id

    def conn_endpoint(self, conn_id: int) -> Optional[TcpEndpoint]:
        """Where messages from connection `conn_id` come from, once it carries a path."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is not ConnState.ESTABLISHED:
            return None
        return TcpEndpoint(*conn.endpoint)

    def status(self) -> dict:
        """Punch state per peer (hex key prefix), for ``meshvpn status``."""
        return {
            key.hex()[:8]: {
                "endpoints": [f"{c.endpoint.host}:{c.endpoint.port} ({c.kind})" for c in peer.candidates],
                "path": peer.path is not None,
                "connections": sorted(c.state.value for c in peer.conns),
            }
            for key, peer in self._peers.items()
        }

    # ---- internals -------------------------------------------------------------------

    def _accepted_for(self, remote: Endpoint) -> Optional[TcpCampaign]:
        """The punched peer (without a path) a connection from `remote` most likely comes from."""
        waiting = [p for p in self._peers.values() if p.path is None]
        exact = [p for p in waiting if any(c.endpoint == remote for c in p.candidates)]
        if exact:
            return exact[0]
        same_host = [p for p in waiting if remote.host in {c.endpoint.host for c in p.candidates} | set(p.sources)]
        return same_host[0] if len(same_host) == 1 else None

    def _serves_unknown(self) -> bool:
        return any(key < self.identity.public and p.path is None for key, p in self._peers.items())

    def _new_conn(self, endpoint: Endpoint, peer_key: Optional[bytes], state: ConnState, now: float) -> Conn:
        conn_id, self._next_id = self._next_id, self._next_id + 1
        timeout = self.config.attempt_timeout if state is ConnState.CONNECTING else self.config.handshake_timeout
        conn = Conn(conn_id, endpoint, peer_key, state, now + timeout)
        self._conns[conn_id] = conn
        if peer_key is not None:
            self._peers[peer_key].conns.add(conn)
        return conn

    def _attempt(self, peer: TcpCampaign, now: float, beside: bool = False) -> None:
        """The campaign's next connect, unless one is pending (`beside`: even then)."""
        peer.next_attempt = None
        if peer.attempts_left <= 0 or peer.path is not None or (peer.conns and not beside):
            return
        endpoint = peer.candidates[(self.config.attempts - peer.attempts_left) % len(peer.candidates)].endpoint
        peer.attempts_left -= 1
        self.counters["attempts"] += 1
        conn = self._new_conn(endpoint, peer.key, ConnState.CONNECTING, now)
        self._actions.append(TcpConnect(conn.conn_id, endpoint, self.config.attempt_timeout))

    def _secure(self, conn: Conn, peer_key: Optional[bytes], now: float) -> None:
        """TCP is up: start the channel in the role our key order gives us."""
        conn.state = ConnState.HANDSHAKING
        conn.deadline = now + self.config.handshake_timeout
        conn.last_rx = conn.last_tx = now
        ephemeral = self.random_bytes(32)
        if peer_key is not None and self.identity.public < peer_key:
            conn.channel = ClientChannel(self.identity, peer_key, ephemeral, now + self.wall_offset)
            self._flush(conn, now)
        elif peer_key is not None:
            conn.channel = ServerChannel(self.identity, lambda key: key == peer_key, ephemeral)
        else:
            conn.channel = ServerChannel(self.identity, self._may_serve, ephemeral)

    def _may_serve(self, key: bytes) -> bool:
        peer = self._peers.get(key)
        return peer is not None and key < self.identity.public and peer.path is None

    def _established(self, conn: Conn, now: float) -> None:
        key = conn.channel.remote_public
        peer = self._peers.get(key)
        if peer is None or peer.path is not None:
            self._end(conn, "a path to that peer exists", now)
            return
        conn.peer_key = key
        peer.conns.add(conn)
        conn.state = ConnState.ESTABLISHED
        peer.path = conn
        peer.next_attempt = peer.repunch_at = None
        peer.attempts_left = 0
        peer.repunch_gap = 0.0
        self._by_endpoint[TcpEndpoint(*conn.endpoint)] = conn
        self.moves.add(TcpEndpoint(*conn.endpoint))
        self.counters["paths"] += 1
        for other in list(peer.conns):
            if other is not conn:
                self._forget(other)
        self._actions.append(PathUp(key, TcpEndpoint(*conn.endpoint)))

    def _end(self, conn: Conn, reason: str, now: float, abort: bool = True) -> None:
        """Drop `conn`; a lost path or a campaign out of attempts schedules a new punch."""
        peer = None if conn.peer_key is None else self._peers.get(conn.peer_key)
        was_path = peer is not None and peer.path is conn
        self._forget(conn, abort)
        if peer is None:
            return
        if was_path:
            self._actions.append(PathDown(peer.key, reason))
            if peer.handover_until is not None:  # the peer took its UDP path too: nothing to punch for
                del self._peers[peer.key]
            else:
                self._schedule_repunch(peer, now)
        elif peer.path is None and conn.state is not ConnState.ESTABLISHED:
            self.counters["failed"] += 1
            if peer.conns:
                return
            if peer.attempts_left > 0:
                peer.next_attempt = now + self.config.retry_gap
            else:
                self._schedule_repunch(peer, now)

    def _follow_resume(self, peer: TcpCampaign, now: float) -> None:
        """The path's check after the network came back: probe it, or end it and ask for a punch now
        (the repunch `_end` schedules stays, should the coord's punch not come)."""
        for action in peer.resume.next_actions():
            if peer.path is None:
                continue
            if isinstance(action, Reconnect):
                self._end(peer.path, f"replaced, {action.reason}", now)
                if peer.key in self._peers:
                    self._actions.append(WantPunch(peer.key))
            else:
                self._actions.append(ProbePath(peer.key))

    def _schedule_repunch(self, peer: TcpCampaign, now: float) -> None:
        cfg = self.config
        peer.repunch_gap = min(max(cfg.repunch_initial, 2 * peer.repunch_gap), cfg.repunch_max)
        peer.repunch_at = now + peer.repunch_gap

    def _forget(self, conn: Conn, abort: bool = True) -> None:
        if self._conns.pop(conn.conn_id, None) is None:
            return
        peer = None if conn.peer_key is None else self._peers.get(conn.peer_key)
        if peer is not None:
            peer.conns.discard(conn)
            if peer.path is conn:
                peer.path = None
                peer.resume.forget()
                del self._by_endpoint[TcpEndpoint(*conn.endpoint)]
                self.moves.add(TcpEndpoint(*conn.endpoint))
        if abort:
            self._actions.append(TcpAbort(conn.conn_id))

    def _flush(self, conn: Conn, now: float) -> None:
        data = conn.channel.data_to_send()
        if data:
            conn.last_tx = now
            self._actions.append(TcpWrite(conn.conn_id, data))
