"""Punching: how the node core answers the coord's ``punch`` and keeps punching behind hard NATs.

A component the core (:class:`~meshvpn.node.core.NodeCore`) owns, one concern with its own rules
(``docs/nat-traversal.md`` tells why):

* A ``punch`` from the coord replaces the peer's candidates and probes them all at once (at
  ``punch.at``, the coord's clock: both sides start together). A probe from a peer we have no
  path to starts punching back (the core's part), so one side's punch still opens both directions.
* Our own traffic that needs a path punches and asks the coord (``punch_request``, at most once
  per interval) to make the peer punch back.
* Behind hard NATs, where to probe and when to punch follow :mod:`meshvpn.node.traversal`:
  sequential sides punch only on fresh port samples (``SampleWanted``), birthday sides open
  many mappings (``OpenMappings``) and re-ask the coord for punches while no direct path is found.

Its interface is narrow: the core hands it the peer table, its configuration, the core's two
outboxes (so events and coord messages keep their order) and two steps of the core's own:
``probe`` (a sealed probe within the peer's budget, or None) and ``drain`` (carry out a path
finder's actions after a punch round).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from meshvpn.control import messages as m
from meshvpn.node.candidates import Candidate, CandidateKind, candidates_of
from meshvpn.node.events import Event, OpenMappings, SampleWanted
from meshvpn.node.pathfinder import RELAY_PATH, Path, PathKind
from meshvpn.node.peers import Peer, PeerSlot, PeerTable
from meshvpn.node.prediction import NatProfile
from meshvpn.node.traversal import OnPunch, Traversal
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.node.core import CoreConfig

ProbeMaker = Callable[[Peer, bytes, Endpoint, float], Optional[bytes]]
"""``probe(peer, tx_id, dst, now)``: a probe within the peer's budget, or None past it."""


_KEPT_ON_SAMPLE = (CandidateKind.LAN, CandidateKind.MAPPED, CandidateKind.IPV6)
"""Candidates a port sample does not replace: those no NAT moves."""


class Punching:
    """Punch rounds for every peer, the coord's punches and our punch requests, hard NATs included."""

    def __init__(self, peers: PeerTable, events: deque[Event], coord_out: list[m.Message], probe: ProbeMaker,
                 drain: Callable[[Peer, float], None], random_bytes: Callable[[int], bytes],
                 config: CoreConfig) -> None:
        self.peers = peers
        self.traversal = Traversal(self.randrange, config.paths.punch_interval,
                                   peers=PeerSlot(peers, "traversal"))
        """Our NAT and every peer's hard-NAT state."""
        self._events = events
        self._coord_out = coord_out
        self._probe = probe
        self._drain = drain
        self._random_bytes = random_bytes
        self._wall_offset = config.wall_offset

    def randrange(self, low: int, high: int) -> int:
        """A random integer in [low, high) from the node's randomness (probe ports, birthday guesses)."""
        return low + int.from_bytes(self._random_bytes(4), "little") % (high - low)

    def on_punch(self, peer: Peer, msg: m.Punch, now: float) -> None:
        """The coord's ``punch`` towards `peer`: new candidates, then punch (now, at ``msg.at`` or after a sample)."""
        extra = self._punch_candidates(peer, msg, now)
        traversal = self.traversal
        if peer.route is None:
            peer.paths.want_path(now)
        if peer.route is None or peer.route.path is RELAY_PATH:
            traversal.want_path(peer.key, now, restart=False)
        plan = traversal.on_punch(peer.key, msg.sample, now)
        if plan is OnPunch.SAMPLE:
            self._ask_sample(peer)
        if plan is not OnPunch.PUNCH:
            return
        public = [c.endpoint for c in extra if c.kind is CandidateKind.PUBLIC]
        if public and traversal.open_mappings(peer.key, now):
            probes = tuple(self._probe(peer, self._random_bytes(8), public[0], now)
                           for _ in range(traversal.birthday.sockets))
            probes = tuple(probe for probe in probes if probe is not None)
            self._events.append(OpenMappings(peer.key, public[0], probes, traversal.birthday.seconds))
        start = now if msg.at is None else msg.at - self._wall_offset
        if start > now:
            peer.punches_due.append(start)
        else:
            self.punch(peer, now, restart=traversal.samples_ports)

    def _punch_candidates(self, peer: Peer, msg: m.Punch, now: float) -> list[Candidate]:
        """Take the punch's endpoints (or, towards a hard NAT, its fresh sample) as the peer's candidates."""
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
            kept = [c for c in candidates_of(peer.info) if c.kind in _KEPT_ON_SAMPLE]
            peer.paths.set_candidates(kept + extra, now)
        else:
            peer.paths.set_candidates(candidates_of(peer.info) + extra, now)
        return extra

    def punch(self, peer: Peer, now: float, restart: bool = False) -> None:
        """One punch round towards `peer` now: its path finder probes every candidate (a new burst
        with `restart`, even if one runs)."""
        peer.path_log.wanted(peer.route and peer.route.path, now)
        peer.paths.punch(now, restart)
        self._drain(peer, now)

    def path_changed(self, peer: Peer, new: Optional[Path], now: float) -> None:
        """A direct path ends the hard side's re-samples; a fall back keeps them going while the
        path finder keeps punching fast (`PathFinder.recovering`)."""
        if new is not None and new.kind is not PathKind.RELAY:
            self.traversal.path_found(peer.key)
        elif peer.paths.recovering(now):
            self.traversal.fell_back(peer.key, now, now + peer.paths.config.fast_window)

    def reprobe(self, now: float, sockets_closed: bool = True) -> None:
        """Our own network changed: every peer in use gets a punch round now and a punch via the coord.

        The path we had may leave from an address we no longer hold, and the peer's NAT knows
        only our old mapping, so both sides must probe again towards the endpoints just reported;
        the path in use is probed at once and left if it stays silent (`PathFinder.suspect`: a
        punch round on a direct path may probe only the other address family).
        `sockets_closed`: the shell closed the extra sockets (their mappings belonged to the old network).
        """
        if sockets_closed:
            self.traversal.network_changed()
        for peer in self.peers:
            if peer.route is not None or peer.ring.current is not None:
                peer.paths.suspect(now)
                self.punch(peer, now)
                peer.punch_requested_at = now
                self._coord_out.append(m.PunchRequest(peer_key=peer.key))

    def seek_path(self, peer: Peer, now: float, request_interval: float) -> None:
        """Our traffic needs a (better) path: punch, or re-sample on the hard side, and have the
        coord make the peer punch back (at most once per `request_interval` unless we are the hard side)."""
        peer.paths.want_path(now)
        self.peers.touched.add(peer)
        self.traversal.want_path(peer.key, now)
        if self.traversal.samples_ports:
            self.resample(now)
        else:
            self.punch(peer, now)
        if not self.traversal.hard_side(peer.key) and now >= peer.punch_requested_at + request_interval:
            peer.punch_requested_at = now
            self._coord_out.append(m.PunchRequest(peer_key=peer.key))

    def handle_timer(self, now: float, peers: Iterable[Peer]) -> None:
        """The coord's synchronised punches of `peers` that are due (a peer's punches are part of its
        deadline, :mod:`meshvpn.node.coretimers`), then the hard sides' re-samples."""
        for peer in peers:
            due = [when for when in peer.punches_due if when <= now]
            peer.punches_due = [when for when in peer.punches_due if when > now]
            for _ in due:
                self.punch(peer, now, restart=self.traversal.samples_ports)
        self.resample(now)

    def get_timer(self) -> Optional[float]:
        """The next re-sample (the scheduled punches are their peers' deadlines)."""
        return self.traversal.get_timer()

    # ---- hard NATs ----------------------------------------------------------------

    def set_mapped(self, mapped: bool) -> None:
        """Whether our router forwards a port to us; every peer's probe strategy follows."""
        if mapped != self.traversal.mapped:
            self.traversal.mapped = mapped
            self._restrategise()

    def set_nat_profile(self, profile: NatProfile) -> None:
        """Our NAT's behaviour as the shell sampled it; every peer's probe strategy follows."""
        if profile != self.traversal.local:
            self.traversal.local = profile
            self._restrategise()

    def _restrategise(self) -> None:
        for peer in self.peers:
            peer.paths.strategy = self.traversal.strategy(peer.key)

    def port_sampled(self, peer_key: bytes, sample: Optional[Endpoint], now: float,
                     via: Optional[int] = None) -> None:
        """The answer to ``SampleWanted``: a new socket's mapped endpoint (None: no STUN answer) and,
        when the shell keeps that socket, its id: our probes to the peer leave from it."""
        peer = self.peers.by_key.get(peer_key)
        if peer is None:
            return
        self.traversal.sampled(peer_key, now, None if sample is None else via)
        self._coord_out.append(m.PunchRequest(peer_key, sample=None if sample is None else m.Endpoint(*sample)))
        if sample is None:
            self.punch(peer, now)

    def _ask_sample(self, peer: Peer) -> None:
        if self.traversal.sample_requested(peer.key):
            self._events.append(SampleWanted(peer.key))

    def resample(self, now: float) -> None:
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
