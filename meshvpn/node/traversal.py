"""Hard-NAT traversal for the node core: probe strategy per peer, port samples, birthday mappings.

Sans-IO; the core (`meshvpn.node.core`) asks it what to do and carries it out. Rules:

* Every peer's `PathFinder` probes with `strategy_for(our NAT, its NAT)`; both profiles come
  from the nodes' own STUN samples, ours from the shell (`local`), the peer's from the coord
  (`PeerInfo.nat`, `Punch.nat`). A peer that reported nothing is taken as endpoint-independent.
* **Sequential side** (our mapping is endpoint-dependent, the ports predictable): a punch only
  helps right after a fresh sample, because the peer probes the ports above it. So we never
  punch on our own: wanting a path, or hearing the peer's punch, asks the shell for a sample
  (`SampleWanted`, a STUN request from a new socket); the sample goes to the coord in a
  `punch_request`, and the coord's answering `punch` is the one we act on — once per sample,
  and, when the peer samples too (sequential as well), only if it carries the peer's own fresh
  sample (each side's i-th new mapping must meet the other's i-th predicted port). A peer
  whose ports cannot be predicted never sends a sample, so against it we punch on ours alone.
* **Punch from the sample's socket.** The shell takes the sample from a socket of its own and
  keeps it (``port_sampled(..., via)``); every probe to the peer leaves from that socket while the
  sample is fresh (`SAMPLE_SOCKET`), so our NAT's mapping towards the peer is a new one, right
  above the sample, whatever the main socket sent there before. Behind an address-dependent
  NAT the main socket's mapping towards the peer's address outlives every sample: our data made
  it (after a re-mapping, a move) before the sample, below the ports the peer predicts.
* Whatever the two profiles, a peer that needs a path gets the relay by `relay_after`: the
  core arms each path finder's fallback (`PathFinder.want_path`) on traffic, on a handshake
  and on the coord's punch, before and apart from any strategy here.
* **Birthday side** (random ports, peer endpoint-independent): every punch opens up to
  `BirthdayPlan.sockets` mappings from fresh sockets (`OpenMappings`), at most one window at a
  time, while the peer probes random ports of our address.
* Both hard sides re-sample on `ResampleSchedule` while no direct path exists: a new sample
  (sequential) or a new punch request (birthday) every `interval`, at most `max_samples`; after
  a fall back to the relay, every `FALLBACK_RESAMPLE_INTERVAL` through the path finder's fast window.
* A probe that arrived on one of the extra sockets pins its source to that socket
  (`pinned`): everything for that endpoint leaves from there, or the NAT's filter drops it.
* **Mapped side** (our router forwards a port to us: UPnP IGD, NAT-PMP, PCP): the peer gets in
  through the mapping, so we probe its candidates only, neither predicted ports nor birthday
  sockets, and its public ones only once it was heard or the burst's first rounds are over
  (`AnswerFirst`: its probe must reach the forward before our NAT has a flow towards it). A probe of ours to the very port the peer's next mapping takes would hold that flow
  in our NAT, and the reply to the peer's probe through the mapping would leave from the wrong
  port (conntrack keeps the first flow of a pair of endpoints).
"""

from __future__ import annotations

import enum
import math
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Callable, Optional

from meshvpn.control import messages as m
from meshvpn.node.candidates import AnswerFirst, Endpoint, ProbeStrategy
from meshvpn.node.pins import SocketPins
from meshvpn.node.prediction import (
    Allocation, BirthdayPlan, NatProfile, ResampleSchedule, opens_many_mappings, samples_ports,
    strategy_for,
)

SAMPLE_ANSWER = 1.0
"""Seconds after our sample during which a coord punch is taken as its answer."""
BIRTHDAY_WINDOW = 8.0
"""Seconds the extra sockets of one birthday campaign stay open (the peer's probing, resamples)."""
RESAMPLE_INTERVAL = 1.5
RESAMPLE_MAX = 3
FALLBACK_RESAMPLE_INTERVAL = 3.0
"""Seconds between re-samples, past `RESAMPLE_MAX`, while a peer that fell back is in its fast window."""
MAPPED_HOLD_ROUNDS = 5
"""Rounds of a burst (0.8 s at the defaults) in which a mapped side lets the peer send first (`AnswerFirst`)."""
SAMPLE_SOCKET = BIRTHDAY_WINDOW
"""Seconds our probes to a peer leave from the socket of our latest sample (the shell keeps it open
this long unless a path uses it)."""


class OnPunch(enum.Enum):
    """What a `punch` from the coord should make us do."""

    PUNCH = "punch"
    SAMPLE = "sample first"
    WAIT = "wait for the answer to our sample"


def profile_of(info: Optional[m.NatInfo]) -> NatProfile:
    """The `NatProfile` a peer's report describes; unknown means endpoint-independent."""
    if info is None:
        return NatProfile()
    return NatProfile(info.endpoint_independent, Allocation(info.allocation))


def nat_info(profile: NatProfile) -> m.NatInfo:
    """What we report to the coord about our NAT."""
    return m.NatInfo(profile.endpoint_independent, profile.allocation.value)


@dataclass
class PeerTraversal:
    """One peer's hard-NAT state (kept on the peer, ``Peer.traversal``)."""

    profile: NatProfile = field(default_factory=NatProfile)
    schedule: Optional[ResampleSchedule] = None
    sampling: bool = False
    """A sample was asked of the shell and not reported yet."""
    sampled_at: float = -math.inf
    answered: bool = True
    """The coord's punch for our latest sample was acted on."""
    mappings_until: float = -math.inf
    punched_on: Optional[m.Endpoint] = None
    """The peer's sample our latest punch answered."""
    socket: Optional[int] = None
    """The extra socket our latest sample came from: probes to the peer leave from it."""


class Traversal:
    """Per-peer hard-NAT state of one node; `randrange(lo, hi)` draws birthday ports; `peers` keeps
    each peer's state (the node core's keeps it on the peers)."""

    def __init__(self, randrange: Callable[[int, int], int], punch_interval: float,
                 birthday: BirthdayPlan | None = None,
                 peers: MutableMapping[bytes, PeerTraversal] | None = None) -> None:
        self.local = NatProfile()
        """Our NAT, as the shell last sampled it."""
        self.mapped = False
        """Our router forwards a port to us (the peers are told): we need no hard-NAT tricks."""
        self.birthday = birthday if birthday is not None else BirthdayPlan()
        self.pinned = SocketPins()
        """Remote endpoint -> extra socket it must be sent from (birthday hits)."""
        self._randrange = randrange
        self._punch_interval = punch_interval
        self._peers: MutableMapping[bytes, PeerTraversal] = {} if peers is None else peers
        self._scheduled: dict[bytes, None] = {}
        """The peers given a re-sample schedule (some may have left since): only they have re-samples
        due, and every peer has a state here, so the timer looks at these alone."""

    def _state(self, key: bytes) -> PeerTraversal:
        return self._peers.setdefault(key, PeerTraversal())

    # ---- profiles and strategy

    @property
    def samples_ports(self) -> bool:
        """We are behind a sequential (endpoint-dependent but predictable) NAT."""
        return samples_ports(self.local)

    def profile(self, key: bytes) -> NatProfile:
        return self._state(key).profile

    def set_peer_nat(self, key: bytes, info: Optional[m.NatInfo]) -> bool:
        """Record a peer's NAT report; True if it changed."""
        state, profile = self._state(key), profile_of(info)
        changed, state.profile = state.profile != profile, profile
        return changed

    def strategy(self, key: bytes) -> ProbeStrategy:
        """A fresh probe strategy for `key` (fresh port runs and birthday budget)."""
        if self.mapped:
            return AnswerFirst(self.pinned.was_heard, MAPPED_HOLD_ROUNDS)
        return strategy_for(self.local, self.profile(key), self._randrange, self._punch_interval,
                            birthday=self.birthday)

    def hard_side(self, key: bytes) -> bool:
        """Whether we drive re-sampling towards `key`."""
        return not self.mapped and (self.samples_ports or opens_many_mappings(self.local, self.profile(key)))

    def peer_keys(self) -> set[bytes]:
        return set(self._peers)

    # ---- punching

    def want_path(self, key: bytes, now: float, restart: bool = True) -> None:
        """A path is wanted: start re-sampling if we are the hard side and it is idle.

        Only our own traffic restarts a finished schedule (`restart`); a peer's punch starts
        the first one, so two hard sides cannot keep each other sampling for ever.
        """
        state = self._state(key)
        idle = state.schedule is None or (restart and state.schedule.get_timer() is None)
        if self.hard_side(key) and idle:
            self._schedule(key, state, now)

    def on_punch(self, key: bytes, sample: Optional[m.Endpoint], now: float) -> OnPunch:
        """The coord's punch for `key` arrived; `sample`: the peer's fresh sample it carries.

        Both sides' requests make the coord punch both, so a punch may repeat the peer's sample
        we already punched on: it asks for nothing (a new sample of ours would leave the peer's
        punch without its pair, and the peer would sample again, and so on)."""
        if not self.samples_ports:
            return OnPunch.PUNCH
        state = self._state(key)
        if sample is not None and sample == state.punched_on:
            return OnPunch.WAIT
        recent = now - state.sampled_at <= SAMPLE_ANSWER
        if recent and not state.answered and (sample is not None or not samples_ports(self.profile(key))):
            state.answered, state.punched_on = True, sample
            return OnPunch.PUNCH
        if state.sampling or (recent and not state.answered):
            return OnPunch.WAIT
        return OnPunch.SAMPLE

    def sample_requested(self, key: bytes) -> bool:
        """Mark a sample as asked for; False if one already is."""
        state = self._state(key)
        if state.sampling:
            return False
        state.sampling = True
        return True

    def sampled(self, key: bytes, now: float, via: Optional[int] = None) -> None:
        """A sample (or, for a birthday side, a punch request) went to the coord; `via`: the extra
        socket the sample came from, which our probes to the peer leave from from now on."""
        state = self._state(key)
        state.sampling, state.sampled_at, state.answered = False, now, False
        if via is not None:
            state.socket = via
        if state.schedule is not None:
            state.schedule.sampled(now)

    def probe_from(self, key: bytes, dst: Endpoint, now: float) -> Endpoint:
        """`dst` of a probe to `key`, pinned to our latest sample's socket while that sample is fresh."""
        state = self._peers.get(key)
        if state is not None and state.socket is not None:
            if now - state.sampled_at < SAMPLE_SOCKET:
                self.pinned.probing(dst, state.socket)
            else:
                state.socket = None
        return dst

    def fell_back(self, key: bytes, now: float, until: float) -> None:
        """`key` fell back to the relay (or lost its path): the hard side keeps re-sampling until
        `until`. The first samples may have met a NAT whose next ports went to other peers'
        mappings (punched at the same time), and only fresh samples can make a punch meet."""
        if not self.hard_side(key):
            return
        state = self._state(key)
        if state.schedule is None:
            self._schedule(key, state, now)
        state.schedule.extend(now, until, FALLBACK_RESAMPLE_INTERVAL)

    def _schedule(self, key: bytes, state: PeerTraversal, now: float) -> None:
        state.schedule = ResampleSchedule(RESAMPLE_INTERVAL, RESAMPLE_MAX)
        state.schedule.start(now)
        self._scheduled[key] = None

    def _with_schedule(self) -> list[tuple[bytes, PeerTraversal]]:
        """(key, state) of the peers that have a re-sample schedule; the others are forgotten here."""
        held = [(key, self._peers.get(key)) for key in self._scheduled]
        for key, state in held:
            if state is None or state.schedule is None:
                del self._scheduled[key]
        return [(key, state) for key, state in held if state is not None and state.schedule is not None]

    def due(self, now: float) -> list[bytes]:
        """Peers whose re-sample is due now."""
        return [key for key, state in self._with_schedule() if state.schedule.due(now) and not state.sampling]

    def path_found(self, key: bytes) -> None:
        """A direct path exists: no more samples."""
        state = self._peers.get(key)
        if state is not None:
            state.socket = None
            if state.schedule is not None:
                state.schedule.stop()

    def network_changed(self) -> None:
        """Our network changed and the shell closed the extra sockets: nothing is pinned to them any
        more, and the next punch opens a birthday campaign at once (the old one's window held the
        old network's mappings)."""
        self.pinned.clear()
        for state in self._peers.values():
            state.mappings_until, state.socket = -math.inf, None

    def open_mappings(self, key: bytes, now: float) -> bool:
        """Whether a punch towards `key` should open birthday mappings now (starts the window)."""
        state = self._state(key)
        if self.mapped or not opens_many_mappings(self.local, state.profile) or now < state.mappings_until:
            return False
        state.mappings_until = now + BIRTHDAY_WINDOW
        return True

    def mappings_short(self, key: bytes) -> None:
        """The shell could not open the whole campaign (other peers' campaigns hold its socket limit):
        the window did not start, so the next punch (a re-sample's request) opens one again."""
        state = self._peers.get(key)
        if state is not None:
            state.mappings_until = -math.inf

    def get_timer(self) -> Optional[float]:
        """The next re-sample due."""
        times = [state.schedule.get_timer() for _, state in self._with_schedule() if not state.sampling]
        return min((t for t in times if t is not None), default=None)
