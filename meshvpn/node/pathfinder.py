"""Per-peer path selection: direct over the LAN, direct over the internet, direct over TCP, or via the relay.

One `PathFinder` per peer, sans-IO in the aioquic style: inputs are method calls that take
`now`, outputs are pulled with `next_actions()`, and the caller keeps one timer from
`get_timer()` and calls `handle_timer(now)` when it fires.

Rules (docs/paths.md has the state table):

* `punch()` starts a campaign: probe every target at once, again every `punch_interval`
  for `punch_burst` rounds, then with exponential backoff (`backoff_initial` doubling to
  `backoff_max`). Rounds go on until a direct path is found.
* A probe reply proves a direct path only when it answers a probe sent at most `path_timeout`
  ago and comes from the very endpoint that probe went to (the round trip, proven by the
  sealed transaction id). A reply from elsewhere only adds an observed candidate, and the
  current path's endpoint is never pushed out of the `max_observed` observed ones.
  The first proof is taken at once; within
  `selection_window` after that a better path of the same kind replaces it (`meshvpn.node.pathpref`:
  the lower RTT, the peer's announced endpoint preferred to an observed one within 2 ms, and that
  also later, from any reply to a probe of the campaign), and a LAN path always replaces a public
  one. A path is a LAN path when its endpoint is one of the peer's LAN candidates, whichever
  candidate the answered probe went to, and becomes one when a later report names it so
  (`pathpref.lan_twin`); any direct path replaces the relay.
* No direct path `relay_after` seconds after the first punch or `want_path`, and the relay
  is ready: use the relay, and keep punching in the background.
* The current direct path is probed every `keepalive` to hold NAT mappings, and every
  `liveness_interval` when nothing has been heard on it for that long, because then the
  probes are the only evidence it still works. Nothing heard (reply or authenticated
  traffic) for `path_timeout`: the path is dead; switch to a TCP path or the relay if one is
  ready, and punch again.
* A TCP path (`tcp_ready`, made by `meshvpn.node.tcp.core`) ranks below UDP direct paths and
  above the relay: it replaces the relay at once, any UDP path that answers replaces it, and
  UDP punching goes on while it is used. Evidence from a `TcpEndpoint` never counts for (or
  becomes) a UDP candidate; it only shows that the TCP path lives, which silence watches as it
  does a UDP path's (probes over the connection; dead: the relay, and the TCP module punches again).
* Roaming (`roamed`): the newest authenticated data of the current session from another
  endpoint moves a direct path there at once (WireGuard's rule); a probe there confirms it.
  Not from the peer's STUN mapping, heard within `liveness_interval`, to one of its extra
  punching sockets we already know (`pathpref.stays_announced`): the peer sent from the socket
  that heard us last; a probe of the current path makes that its main one again.
* Silence on a path that carries traffic (`meshvpn.node.silence`) ends it within a second;
  after any fall back, punch rounds stay at most `fast_backoff_max` apart for `fast_window`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from meshvpn.node.candidates import AllCandidates, Candidate, CandidateKind, Endpoint, ProbeStrategy
from meshvpn.node.family import FamilyRace
from meshvpn.node.pathpref import announced_slack, better, lan_twin, stays_announced
from meshvpn.node.pathprobes import PendingProbes
from meshvpn.node.pathtimers import PathFinderConfig
from meshvpn.node.pathtypes import (  # noqa: F401  (re-exported: the machine's vocabulary)
    RELAY_PATH, Action, ChangeReason, Path, PathChanged, PathKind, PathState, PathStats, SendProbe,
)
from meshvpn.node.silence import EndpointsStale, RelaySilent, SilenceWatch, Verdict  # noqa: F401
from meshvpn.node.tcp.core import TcpEndpoint

_RANK = {PathKind.LAN: 0, PathKind.DIRECT: 1, PathKind.TCP: 2, PathKind.RELAY: 3}
_UDP_DIRECT = (PathKind.LAN, PathKind.DIRECT)
_HELD_BY_PEER = (CandidateKind.LAN, CandidateKind.IPV6, CandidateKind.MAPPED)
"""Candidates that are the peer's own addresses or its router's mapping (no NAT of ours moves them)."""


class PathFinder:
    """The path state machine for one peer.

    `rng` returns 8 random bytes, the transaction id of the next probe; `strategy` picks
    the targets of each punch round.
    """

    def __init__(self, rng: Callable[[], bytes], config: PathFinderConfig | None = None,
                 strategy: ProbeStrategy | None = None) -> None:
        self.config = config if config is not None else PathFinderConfig()
        self.strategy = strategy if strategy is not None else AllCandidates()
        self.stats = PathStats()
        self.current_path: Path | None = None
        self._candidates: list[Candidate] = []
        self._path_candidate: Candidate | None = None
        self._observed: list[Candidate] = []
        self._pending = PendingProbes(rng, self.config)
        """Our probes in flight, which a reply must answer to prove a path."""
        self._actions: list[Action] = []
        self._relay_ready = False
        self._tcp_path: Path | None = None
        self._relay_due: float | None = None
        self._round = 0
        self._next_round: float | None = None
        self._selected_at = 0.0
        self._last_heard = 0.0
        self._last_probe = 0.0
        self._udp_probed_at = -math.inf  # the last UDP probe from the peer: its UDP reaches us
        self._silence = SilenceWatch(self.config)
        self._race = FamilyRace(self.config)
        self._fast_until = float("-inf")

    # ---- state ---------------------------------------------------------------------

    @property
    def state(self) -> PathState:
        """The machine's state, as in docs/paths.md."""
        if self._direct():
            return PathState.DIRECT
        if self.current_path == RELAY_PATH:
            return PathState.RELAYED
        if self.current_path is not None:
            return PathState.TCP
        if self._next_round is not None:
            return PathState.PUNCHING
        return PathState.IDLE

    @property
    def candidates(self) -> list[Candidate]:
        """Every endpoint we may probe: the coordination server's, then observed ones."""
        return self._candidates + self._observed

    def _direct(self) -> bool:
        """Whether the current path is a proven UDP path (LAN or public)."""
        return self.current_path is not None and self.current_path.kind in _UDP_DIRECT

    def _on_tcp(self) -> bool:
        return self.current_path is not None and self.current_path.kind is PathKind.TCP

    def _watched(self) -> bool:
        """Whether silence watches the current path: a UDP path or a TCP one (not the relay: its links do)."""
        return self._direct() or self._on_tcp()

    # ---- inputs --------------------------------------------------------------------

    def set_candidates(self, candidates: Iterable[Candidate], now: float) -> None:
        """Replace the peer's LAN and public candidates (observed ones are kept).

        A direct path to an address the peer held itself (LAN, IPv6, router mapping) that it no
        longer announces is suspect at once: the peer moved off it, and an idle path would
        otherwise wait for `path_timeout`. Its probes decide, and the peer's newest probe from its
        new address moves the path there (`meshvpn.node.silence`). A candidate new while a burst
        runs without a direct path is probed at once where the strategy allows (``news_at_once``),
        not at the next round: a peer re-mapped under a flow announces its new mapping just after
        we fell back."""
        held = {c.endpoint for c in self._candidates if c.kind in _HELD_BY_PEER}
        before, self._candidates = self._candidates, []
        for candidate in candidates:
            if candidate.kind is CandidateKind.OBSERVED:
                self._observe(candidate.endpoint)
            elif candidate not in self._candidates:
                self._candidates.append(candidate)
        if self._next_round is not None and not self._direct() and getattr(self.strategy, "news_at_once", False):
            for candidate in self.strategy.targets(self.candidates, max(self._round - 1, 0)):
                if candidate in self._candidates and candidate not in before:
                    self._send_probe(candidate, now)
        if self._direct() and self.current_path.endpoint in held \
                and all(c.endpoint != self.current_path.endpoint for c in self._candidates):  # type: ignore[union-attr]
            self._suspect(now)
        twin = lan_twin(self._path_candidate, self._candidates) if self._direct() else None
        if twin is not None:
            self._switch(Path(PathKind.LAN, twin.endpoint), ChangeReason.BETTER_PATH)
            self._path_candidate = twin

    def punch(self, now: float, restart: bool = False) -> None:
        """The coordination server's punch signal, or a packet that needs a path.

        Sends a round now. Without a direct path it (re)starts the burst, unless a burst
        is already running (and not `restart`), so a stream of packets waiting for a path costs
        nothing; a fresh port sample restarts it, since its predicted ports are good only now.
        On a TCP path it is also suspect at once: the peer seeks a path, so it may have lost ours
        (a NAT re-mapped it) while we send nothing that would find it silent.
        """
        self.want_path(now)
        if self._on_tcp():
            self._suspect(now)
        if self._next_round is not None and self._round < self.config.punch_burst and not restart:
            return
        self._round = 0
        self._punch_round(now)

    def want_path(self, now: float) -> None:
        """Something needs the peer (traffic, a handshake, its punch): arm the relay fallback.

        Punching arms it too, but a side that must wait before probing (a sequential NAT
        waits for its port sample) still gets the relay `relay_after` from now.
        """
        if self._relay_due is None and not self._direct():
            self._relay_due = now + self.config.relay_after

    def probe_received(self, src: Endpoint, now: float, newest: bool = False) -> None:
        """The peer's authenticated probe arrived from `src`; the caller sends the reply.

        `src` is where the peer's NAT put it for us, often the only way to reach a peer
        behind a symmetric NAT, so a new one is probed at once unless we are direct. The
        `newest` probe from elsewhere moves a direct path that silence suspects (`meshvpn.node.silence`).
        """
        if type(src) is TcpEndpoint:
            return
        self._udp_probed_at = now
        if newest and self._direct() and src != self.current_path.endpoint:  # type: ignore[union-attr]
            self._silence.probed_from(src, now)
            if self._roam_if_silent(now):
                return
        if self._observe(src) and not self._direct():
            self._send_probe(self._observed[-1], now)

    def probe_reply_received(self, tx_id: bytes, src: Endpoint, now: float) -> None:
        """An authenticated reply to our probe `tx_id` arrived from `src`."""
        if type(src) is TcpEndpoint:
            return self._tcp_reply(tx_id, src, now)
        probe = self._pending.answered(tx_id, now)
        if probe is None:
            self.stats.unmatched_replies += 1
            return
        if src != probe.candidate.endpoint:
            self.stats.misrouted_replies += 1
            if self._observe(src) and not self._direct():
                self._send_probe(self._observed[-1], now)
            return
        self.stats.replies += 1
        rtt = now - probe.sent_at
        candidate = self._proven(probe.candidate)
        path = Path(PathKind.LAN if candidate.kind is CandidateKind.LAN else PathKind.DIRECT, candidate.endpoint)
        if path == self.current_path:
            self._heard(now)
            self.stats.last_reply = now
            srtt = self.stats.rtt
            self.stats.rtt = rtt if srtt is None else srtt + (rtt - srtt) / 8
            return
        reason = self._improvement(path, candidate, rtt, now)
        if reason is not None:
            self._switch(path, reason)
            self._use_direct(candidate, now, rtt)

    def traffic_received(self, src: Endpoint, now: float) -> None:
        """An authenticated data or keepalive packet arrived directly from `src`."""
        if type(src) is TcpEndpoint:
            if self.current_path == Path(PathKind.TCP, src):
                self._heard(now)
            return
        if self._direct() and self.current_path.endpoint == src:  # type: ignore[union-attr]
            self._heard(now)
        elif self._observe(src) and not self._direct():
            self._send_probe(self._observed[-1], now)

    def roamed(self, src: Endpoint, now: float) -> None:
        """The newest data of the current session came from `src`: a direct path moves there; a probe confirms.

        Not off the peer's STUN mapping, heard within `liveness_interval`, onto one of its extra
        sockets we know or probed (`pathpref.stays_announced`): the peer sent from the socket that heard
        us last, so the path is probed instead, and the peer hears us on its main socket again."""
        known = next((c for c in (*self.candidates, *self._pending.candidates()) if c.endpoint == src), None)
        if self._direct() and now - self._last_heard < self.config.liveness_interval \
                and stays_announced(self._path_candidate, known):
            return self._probe_path(now)
        self._roam(src, now)

    def _roam(self, src: Endpoint, now: float) -> None:
        """Move a direct path to `src` (probed at once), or probe it if there is none."""
        if type(src) is TcpEndpoint or (self._direct() and self.current_path.endpoint == src):  # type: ignore[union-attr]
            return self.traffic_received(src, now)
        self._observe(src)
        candidate = self._proven(next(c for c in self.candidates if c.endpoint == src))
        if self._direct():
            kind = PathKind.LAN if candidate.kind is CandidateKind.LAN else PathKind.DIRECT
            self._switch(Path(kind, src), ChangeReason.ROAMED)
            self._path_candidate = candidate
            self._selected_at = now
            self._heard(now)
            self._last_probe = now
        self._send_probe(candidate, now)

    def recovering(self, now: float) -> bool:
        """Whether the peer fell back within `fast_window` and has no direct path yet."""
        return now < self._fast_until and not self._direct()

    def traffic_sent(self, at: float) -> None:
        """The data path last sent traffic to the peer at `at`, on whatever path is current."""
        self._silence.last_sent = max(self._silence.last_sent, at)

    def relay_traffic_received(self, at: float) -> None:
        """Authenticated traffic from the peer last came through a relay at `at`."""
        self._silence.relay_heard = max(self._silence.relay_heard, at)

    def silence_look(self) -> float | None:
        """The earliest that traffic sent since the last look could have silence act (`SilenceWatch.earliest`)."""
        return self._silence.earliest(self._watched(), self.current_path == RELAY_PATH, self._last_heard)

    def relay_ready(self, ready: bool, now: float) -> None:
        """Whether the relay can carry packets to this peer right now."""
        self._relay_ready = ready
        if not ready and self.current_path == RELAY_PATH:
            self._switch(None, ChangeReason.RELAY_LOST)
        self._maybe_use_relay(now)

    def tcp_ready(self, endpoint: TcpEndpoint | None, now: float) -> None:
        """A direct TCP path to the peer came up at `endpoint`, or (None) went away."""
        self._tcp_path = None if endpoint is None else Path(PathKind.TCP, endpoint)
        current = self.current_path
        if self._tcp_path is not None and (current is None or current == RELAY_PATH):
            self._switch(self._tcp_path, ChangeReason.TCP_PUNCHED)
            self._heard(now)
        elif self._tcp_path is None and current is not None and current.kind is PathKind.TCP:
            # The peer's UDP probes reach us: it closed the TCP path for a UDP one, our mapping is fine.
            udp_works = now - self._udp_probed_at <= self.config.liveness_interval
            self._fall_back(now, ChangeReason.TCP_LOST, mapping_moved=not udp_works)

    def handle_timer(self, now: float) -> None:
        """Do whatever is due at `now`; safe to call early or late."""
        if self._direct() and now >= self._last_heard + self.config.path_timeout:
            self._fall_back(now, ChangeReason.PATH_TIMEOUT)
        self._check_silence(now)
        self._maybe_use_relay(now)
        if self._next_round is not None and now >= self._next_round:
            self._punch_round(now)
        if self._direct() and now >= self._next_check():
            assert self._path_candidate is not None
            self._send_probe(self._path_candidate, now)
            self._last_probe = now

    # ---- outputs -------------------------------------------------------------------

    def next_actions(self) -> list[Action]:
        """Probes to send and path changes, in order; each is returned once."""
        actions, self._actions = self._actions, []
        return actions

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None if nothing is scheduled."""
        deadlines: list[float | None] = []
        if self._direct():
            deadlines.append(self._last_heard + self.config.path_timeout)
            deadlines.append(self._next_check())
        deadlines.append(self._silence.deadline(self._watched(), self.current_path == RELAY_PATH, self._last_heard,
                                                self._last_probe, self.stats.rtt))
        if self._next_round is not None:
            deadlines.append(self._next_round)
        if self._relay_ready and self.current_path is None and self._relay_due is not None:
            deadlines.append(self._relay_due)
        deadlines = [d for d in deadlines if d is not None]
        return min(deadlines) if deadlines else None

    # ---- internals -----------------------------------------------------------------

    def _punch_round(self, now: float) -> None:
        targets = self.strategy.targets(self.candidates, self._round)
        if self._direct():
            targets = self._race.targets(targets, self.current_path.endpoint, now)  # type: ignore[union-attr]
        for candidate in targets:
            self._send_probe(candidate, now)
        self._round += 1
        if self._direct():
            self._next_round = self._race.next_round(now, self.config.punch_interval)
            return
        self._next_round = now + self.config.round_gap(self._round, now < self._fast_until)

    def _send_probe(self, candidate: Candidate, now: float) -> None:
        self.stats.probes_sent += 1
        self._actions.append(SendProbe(candidate.endpoint, self._pending.send(candidate, now)))

    def _observe(self, endpoint: Endpoint) -> bool:
        """Remember `endpoint` as an observed candidate; False if it was already known.

        The oldest observed one makes room, but never the one the current path uses.
        """
        if any(c.endpoint == endpoint for c in self.candidates):
            return False
        self._observed.append(Candidate(endpoint, CandidateKind.OBSERVED))
        if len(self._observed) > self.config.max_observed:
            keep = self._path_candidate if self._direct() else None
            self._observed.remove(next(c for c in self._observed if c != keep))
        return True

    def _proven(self, candidate: Candidate) -> Candidate:
        """What an answer from `candidate`'s endpoint proves: the peer's LAN candidate at that very
        endpoint when it has one (`pathpref.lan_twin`), whichever candidate the probe went to."""
        return lan_twin(candidate, self._candidates) or candidate

    def _improvement(self, path: Path, candidate: Candidate, rtt: float, now: float) -> ChangeReason | None:
        """Why `path` (to `candidate`) should replace the current path, or None if it should not."""
        current = self.current_path
        if current is None or current.kind not in _UDP_DIRECT:
            return ChangeReason.PUNCHED
        if _RANK[path.kind] < _RANK[current.kind]:
            return ChangeReason.BETTER_PATH
        in_window = (now <= self._selected_at + self.config.selection_window
                     or self._race.open(path.endpoint, current.endpoint, now))
        # The peer's announced endpoint replaces a birthday hit also after the window: one way, it cannot flap.
        in_window = in_window or announced_slack(candidate, self._path_candidate) > 0
        if path.kind is current.kind and in_window and better(candidate, rtt, self._path_candidate, self.stats.rtt):
            return ChangeReason.BETTER_PATH
        return None

    def _switch(self, new: Path | None, reason: ChangeReason) -> None:
        old, self.current_path = self.current_path, new
        self.stats.path_changes += 1
        if new is None or new.kind not in _UDP_DIRECT:
            self.stats.rtt = None
            self.stats.last_reply = None
        self._actions.append(PathChanged(old, new, reason))

    def _use_direct(self, candidate: Candidate, now: float, rtt: float) -> None:
        """A direct path to `candidate` was just picked: the campaign is over, upkeep starts."""
        self._path_candidate = candidate
        self._next_round = self._race.picked(candidate.endpoint, self.candidates, now, self.config.punch_interval)
        self._relay_due = None
        self._selected_at = now
        self._last_probe = now
        self._heard(now)
        self.stats.rtt = rtt
        self.stats.last_reply = now

    def _heard(self, now: float) -> None:
        self._last_heard = max(self._last_heard, now)

    def _next_check(self) -> float:
        cfg = self.config
        quiet_since = max(self._last_heard, self._last_probe)
        return min(self._last_probe + cfg.keepalive, quiet_since + cfg.liveness_interval)

    def _maybe_use_relay(self, now: float) -> None:
        if (self._relay_ready and self.current_path is None and self._relay_due is not None
                and now >= self._relay_due):
            self._switch(RELAY_PATH, ChangeReason.RELAY_FALLBACK)
            self._silence.relay_checked = now
            self._fast_until = now + self.config.fast_window

    def _fall_back(self, now: float, reason: ChangeReason, mapping_moved: bool = True) -> None:
        """The direct path is dead: take TCP or the relay, punch again at once, and re-discover
        (from a TCP path: with a new coord connection, unless the mapping is known not to have moved)."""
        stale = EndpointsStale(tcp=self._on_tcp() and mapping_moved)
        self._switch(self._tcp_path or (RELAY_PATH if self._relay_ready else None), reason)
        self._silence.relay_checked = now
        self._relay_due = now
        self._fast_until = now + self.config.fast_window
        self._round = 0
        self._punch_round(now)
        self._actions.append(stale)

    def _check_silence(self, now: float) -> None:
        """Probe a direct path that went silent while traffic went out; fail over if it stays so."""
        verdict = self._silence.check(now, self._watched(), self.current_path == RELAY_PATH, self._last_heard,
                                      self._last_probe, self.stats.rtt)
        if verdict is Verdict.CHECK_RELAY:
            self._actions.append(RelaySilent())
        elif verdict is Verdict.PROBE and not self._roam_if_silent(now):
            self._probe_path(now)
        elif verdict is Verdict.DEAD:
            if self._on_tcp():
                self._tcp_path = None  # the TCP module ends it (the node tells it why)
            self._fall_back(now, ChangeReason.PATH_SILENT)

    def suspect(self, now: float) -> None:
        """Our own network changed: a direct or TCP path may leave from an address we no longer
        hold, and a stateful firewall on the peer's side knows only the old one. Probe it now
        (from where we are now), and leave it within `silence_timeout` if it stays silent."""
        if self._watched():
            self._suspect(now)

    def _suspect(self, now: float) -> None:
        """Suspect the current path now, silent or not: move a direct path to the peer's newest probe
        from elsewhere since it was last heard, or probe it (its answer clears the suspicion). A
        TCP path is always probed: a probe's source is a UDP endpoint, no place for it to move."""
        if self._silence.suspect(now) and not (self._direct() and self._roam_if_silent(now)):
            self._probe_path(now)

    def _roam_if_silent(self, now: float) -> bool:
        """Move a suspect direct path to where the peer's newest probe came from; False if there is none."""
        target = self._silence.roam_target(self._last_heard)
        if target is not None:
            self._roam(target, now)
        return target is not None

    def _probe_path(self, now: float) -> None:
        """Probe the current path: a UDP path at its candidate, a TCP path over its connection."""
        assert self.current_path is not None and self.current_path.endpoint is not None
        on_tcp = Candidate(self.current_path.endpoint, CandidateKind.PUBLIC)
        self._send_probe(self._path_candidate if self._direct() else on_tcp, now)  # type: ignore[arg-type]
        self._last_probe = now

    def _tcp_reply(self, tx_id: bytes, src: TcpEndpoint, now: float) -> None:
        """A reply over a TCP path proves no UDP path; to a probe of the current TCP path, it shows it lives."""
        probe = self._pending.take(tx_id)
        if probe is None or probe.candidate.endpoint != src or self.current_path != Path(PathKind.TCP, src):
            self.stats.unmatched_replies += 1
            return
        self.stats.replies += 1
        self._heard(now)
