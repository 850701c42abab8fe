"""How the node core answers the coord's ``punch`` and keeps punching behind hard NATs.

A part of :class:`~meshvpn.node.core.NodeCore` (its base class), kept apart because it is one
concern with its own rules (the core's docstring states them; ``docs/nat-traversal.md`` tells why):
a ``punch`` replaces the peer's candidates and probes them all at once (at ``punch.at``);
sequential sides punch only on fresh port samples (``SampleWanted``); birthday sides open many
mappings (``OpenMappings``) and re-ask the coord for punches while no direct path is found.
"""

from __future__ import annotations

from typing import Iterable, Optional

from meshvpn.control import messages as m
from meshvpn.node.candidates import Candidate, CandidateKind, candidates_of
from meshvpn.node.events import OpenMappings, SampleWanted
from meshvpn.node.pathfinder import RELAY_PATH
from meshvpn.node.peers import Peer
from meshvpn.node.prediction import NatProfile
from meshvpn.node.traversal import OnPunch
from meshvpn.wire import Endpoint


class Punching:
    """The punch and hard-NAT methods of the node core (which provides every attribute used here)."""

    def _on_punch(self, msg: m.Punch, now: float) -> None:
        peer = self.peers.by_key.get(msg.peer_key)
        if peer is None:
            self.drops["punch for unknown peer"] += 1
            return
        local = set(peer.info.local_endpoints)
        extra = [
            Candidate(Endpoint(e.host, e.port), CandidateKind.LAN if e in local else CandidateKind.PUBLIC)
            for e in msg.endpoints
        ]
        traversal = self.traversal
        if msg.nat is not None:
            traversal.set_peer_nat(peer.key, msg.nat)
        peer.paths.strategy = traversal.strategy(peer.key)
        if msg.sample is not None and not traversal.profile(peer.key).endpoint_independent:
            extra = [Candidate(Endpoint(msg.sample.host, msg.sample.port), CandidateKind.PUBLIC)]
            kept = [c for c in candidates_of(peer.info) if c.kind in (CandidateKind.LAN, CandidateKind.MAPPED)]
            peer.paths.set_candidates(kept + extra, now)
        else:
            peer.paths.set_candidates(candidates_of(peer.info) + extra, now)
        if peer.route is None:
            peer.paths.want_path(now)
        if peer.route is None or peer.route.path is RELAY_PATH:
            traversal.want_path(peer.key, now, restart=False)
        plan = traversal.on_punch(peer.key, msg.sample is not None, now)
        if plan is OnPunch.SAMPLE:
            self._ask_sample(peer)
        if plan is not OnPunch.PUNCH:
            return
        public = [c.endpoint for c in extra if c.kind is CandidateKind.PUBLIC]
        if public and traversal.open_mappings(peer.key, now):
            probes = tuple(self._probe(peer, self.random_bytes(8), public[0], now)
                           for _ in range(traversal.birthday.sockets))
            probes = tuple(probe for probe in probes if probe is not None)
            self._events.append(OpenMappings(peer.key, public[0], probes, traversal.birthday.seconds))
        start = now if msg.at is None else msg.at - self.config.wall_offset
        if start > now:
            peer.punches_due.append(start)
        else:
            self._punch(peer, now)

    def _punch(self, peer: Peer, now: float) -> None:
        peer.path_log.wanted(peer.route and peer.route.path, now)
        peer.paths.punch(now)
        self._drain_paths(peer, now)

    def reprobe(self, now: float) -> None:
        """Our own network changed: every peer in use gets a punch round now and a punch via the coord.

        The path we had may leave from an address we no longer hold, and the peer's NAT knows
        only our old mapping, so both sides must probe again towards the endpoints just reported.
        """
        for peer in self.peers:
            if peer.route is not None or peer.ring.current is not None:
                self._punch(peer, now)
                peer.punch_requested_at = now
                self._coord_out.append(m.PunchRequest(peer_key=peer.key))

    def _seek_path(self, peer: Peer, now: float, request_interval: float) -> None:
        """Our traffic needs a (better) path: punch, or re-sample on the hard side, and have the
        coord make the peer punch back (at most once per `request_interval` unless we are the hard side)."""
        peer.paths.want_path(now)
        self.traversal.want_path(peer.key, now)
        if self.traversal.samples_ports:
            self._resample(now)
        else:
            self._punch(peer, now)
        if not self.traversal.hard_side(peer.key) and now >= peer.punch_requested_at + request_interval:
            peer.punch_requested_at = now
            self._coord_out.append(m.PunchRequest(peer_key=peer.key))

    # ---- hard NATs ----------------------------------------------------------------

    def set_own_endpoints(self, local: Iterable[Endpoint], public: Optional[Endpoint],
                          mapped: Optional[Endpoint] = None) -> None:
        """Our LAN endpoints, public and router-mapped endpoints, as the shell learns them: probes to
        us were sent there."""
        hosts = [e.host for e in local] + [e.host for e in (public, mapped) if e is not None]
        self.probes.set_own_hosts(hosts)
        if (mapped is not None) != self.traversal.mapped:
            self.traversal.mapped = mapped is not None
            for peer in self.peers:
                peer.paths.strategy = self.traversal.strategy(peer.key)

    def set_nat_profile(self, profile: NatProfile) -> None:
        """Our NAT's behaviour as the shell sampled it; every peer's probe strategy follows."""
        if profile != self.traversal.local:
            self.traversal.local = profile
            for peer in self.peers:
                peer.paths.strategy = self.traversal.strategy(peer.key)

    def port_sampled(self, peer_key: bytes, sample: Optional[Endpoint], now: float) -> None:
        """The answer to ``SampleWanted``: a new socket's mapped endpoint (None: no STUN answer)."""
        peer = self.peers.by_key.get(peer_key)
        if peer is None:
            return
        self.traversal.sampled(peer_key, now)
        self._coord_out.append(m.PunchRequest(peer_key, sample=None if sample is None else m.Endpoint(*sample)))
        if sample is None:
            self._punch(peer, now)

    def _ask_sample(self, peer: Peer) -> None:
        if self.traversal.sample_requested(peer.key):
            self._events.append(SampleWanted(peer.key))

    def _resample(self, now: float) -> None:
        """Hard sides whose re-sample is due: a new sample, or (birthday) a new punch request."""
        for key in self.traversal.due(now):
            peer = self.peers.by_key.get(key)
            if peer is None or (peer.route is not None and peer.route.path is not RELAY_PATH):
                self.traversal.path_found(key)
            elif self.traversal.samples_ports:
                self._ask_sample(peer)
            else:
                self.traversal.sampled(key, now)
                self._coord_out.append(m.PunchRequest(peer_key=key))
