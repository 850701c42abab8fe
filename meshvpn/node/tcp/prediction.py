"""TCP port prediction: a direct TCP path through a sequential NAT, without I/O.

A site that drops UDP punches over TCP (`meshvpn.node.tcp.core`). The peer's ``public_tcp`` is
where its NAT mapped the punch port for the coord; behind a NAT that maps endpoint-dependently
the connection towards us gets a port of its own, and a sequential NAT gives it the next one
after its newest mapping. So, as for UDP (``docs/nat-traversal.md``, "Sequential prediction"):

* **Hard side** (our NAT maps endpoint-dependently, sequential ports: the node says ``hard``):
  on the coord's punch we take a TCP port sample (`TcpSampleWanted`: STUN over a new TCP
  connection to the coord). With the sample in hand we connect at once to each of the peer's
  TCP endpoints from a new local port (`Dial` with ``fresh_port``: a new mapping each, right
  above the sample, whatever the punch port's own connections hold), then send the sample to
  the coord (`SendSample`, ``punch_request.tcp_sample``), which hands it to the peer in its punch.
  At most one sample per peer every `sample_gap` seconds: the coord's punch that answers our
  own request must not start another.
* **Easy side**: a punch carrying the peer's ``tcp_sample`` S makes us connect at once to
  S+1 … S+`window` from our punch port, one connection per port. Our SYN to the port the
  peer's NAT gave its connection to us passes that NAT (the mapping was made for exactly our
  endpoint) and meets the peer's own SYN: a simultaneous open. The first channel up is the
  path (`TcpPunch`); the others are aborted. Each sample is dialled once.
* **Random ports** (our NAT maps endpoint-dependently and draws each port at random): nothing
  predicts the port, so it is a birthday campaign, as for UDP (``docs/nat-traversal.md``,
  "Birthday probing"). The hard side opens `birthday_sockets` connections to the peer's TCP
  endpoint, each from a new local port (so many mappings, each made for the peer's punch port),
  then sends its sample as the starting gun; a peer whose punch says our NAT draws random ports
  connects to `birthday_guesses` random ports of the sample's address instead of the window.
  One guess that lands on one of the mappings is a simultaneous open like the sequential one.
* Bounded: `window` (or `birthday_guesses`, and `birthday_sockets` on the other side)
  connections per sample, a sample per `sample_gap`, each connection living
  `TcpPunchConfig.attempt_timeout`, all aborted once one carries the path. A round without a
  path ends in `TcpPunch`'s repunch backoff, whose punch brings a new sample.
"""

from __future__ import annotations

import enum
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from meshvpn.node.events import TcpSampleWanted
from meshvpn.node.prediction import PORT_SPACE, NatProfile
from meshvpn.wire import Endpoint

MAX_PORT = 65535


class HardSide(enum.Enum):
    """How our own NAT maps TCP connections to the peer, as far as prediction cares."""

    NO = "no"
    """The peer reaches our known TCP endpoint, or UDP serves the peer: no sample."""
    SEQUENTIAL = "sequential"
    """A new port per destination, the next one: sample, dial from a new port."""
    RANDOM = "random"
    """A new random port per destination: sample, open `birthday_sockets` mappings."""


@dataclass
class TcpPredictionConfig:
    """Bounds of TCP port prediction; every default is the documented one."""

    window: int = 16
    """Ports above the peer's sample we connect to at once (new TCP flows of its LAN in between take some)."""
    sample_gap: float = 2.0
    """Seconds after a sample during which punches for the same peer take no new one."""
    birthday_sockets: int = 256
    """Connections a random-port side opens towards the peer, each a mapping of its own."""
    birthday_guesses: int = 768
    """Random ports of a random-port peer we connect to per sample."""

    def birthday_probability(self, port_space: int = PORT_SPACE[1] - PORT_SPACE[0]) -> float:
        """Chance that one of `birthday_guesses` random ports is one of `birthday_sockets` mappings."""
        return 1.0 - (1.0 - self.birthday_sockets / port_space) ** self.birthday_guesses


@dataclass(frozen=True)
class Dial:
    """Connect to each of `endpoints` at once: from the punch port, or each from a new local port."""

    peer_key: bytes
    endpoints: tuple[Endpoint, ...]
    fresh_port: bool = False


@dataclass(frozen=True)
class SendSample:
    """Send `sample` to the coord in a ``punch_request`` for `peer_key` (``tcp_sample``)."""

    peer_key: bytes
    sample: Endpoint


Action = Union[TcpSampleWanted, Dial, SendSample]


@dataclass
class PredictionState:
    """One peer's prediction (kept on the peer, ``Peer.tcp_prediction``)."""

    sampled_at: Optional[float] = None
    """When we last asked for a sample of our own for this peer."""
    dialled: Optional[Endpoint] = None
    """The peer's latest sample we connected above (or around, for random ports)."""
    hard: HardSide = HardSide.NO
    """What our NAT does, as of our latest sample for the peer."""


def hard_side(profile: NatProfile) -> HardSide:
    """What our NAT, as netcheck saw it over UDP, makes of our TCP connection to a peer."""
    if profile.endpoint_independent:
        return HardSide.NO
    return HardSide.SEQUENTIAL if profile.predictable else HardSide.RANDOM


def predicted_ports(sample: Endpoint, window: int) -> tuple[Endpoint, ...]:
    """The endpoints a sequential NAT gives its next `window` mappings after `sample`."""
    last = min(sample.port + window, MAX_PORT)
    return tuple(Endpoint(sample.host, port) for port in range(sample.port + 1, last + 1))


class TcpPrediction:
    """Which TCP samples to take and which predicted ports to connect to, per peer."""

    def __init__(self, randrange: Callable[[int, int], int], config: TcpPredictionConfig | None = None,
                 peers: MutableMapping[bytes, PredictionState] | None = None) -> None:
        self.config = config if config is not None else TcpPredictionConfig()
        self._randrange = randrange
        self._peers: MutableMapping[bytes, PredictionState] = {} if peers is None else peers
        self.counters: dict[str, int] = {"samples": 0, "predicted": 0}

    def punched(self, peer_key: bytes, peer_sample: Optional[Endpoint], peer_random: bool, hard: HardSide,
                now: float) -> list[Action]:
        """The coord said punch towards a peer we punch over TCP; `peer_sample` is its ``tcp_sample``,
        `peer_random` whether its NAT draws random ports, `hard` what our own NAT does."""
        state = self._state(peer_key)
        actions: list[Action] = []
        if peer_sample is not None and peer_sample != state.dialled:
            state.dialled = peer_sample
            self.counters["predicted"] += 1
            actions.append(Dial(peer_key, self._guesses(peer_sample) if peer_random
                                else predicted_ports(peer_sample, self.config.window)))
        if hard is not HardSide.NO and (state.sampled_at is None or now >= state.sampled_at + self.config.sample_gap):
            state.sampled_at = now
            state.hard = hard
            self.counters["samples"] += 1
            actions.append(TcpSampleWanted(peer_key))
        return actions

    def sampled(self, peer_key: bytes, sample: Optional[Endpoint], peer_endpoints: Sequence[Endpoint]) -> list[Action]:
        """The answer to `TcpSampleWanted` (None: none came): dial the peer from new ports, then tell it."""
        state = self._peers.get(peer_key)
        if sample is None or not peer_endpoints or state is None:
            return []
        if state.hard is HardSide.RANDOM:
            dial = Dial(peer_key, (peer_endpoints[-1],) * self.config.birthday_sockets, fresh_port=True)
        else:
            dial = Dial(peer_key, tuple(peer_endpoints), fresh_port=True)
        return [dial, SendSample(peer_key, sample)]

    def path_lost(self, peer_key: bytes) -> None:
        """The peer's TCP path went silent (a NAT re-mapped one of us): the next punch takes a new
        sample, even within `sample_gap`, and dials the peer's sample again, even one dialled before."""
        self._peers.pop(peer_key, None)

    def _guesses(self, sample: Endpoint) -> tuple[Endpoint, ...]:
        ports = {self._randrange(*PORT_SPACE) for _ in range(self.config.birthday_guesses)}
        return tuple(Endpoint(sample.host, port) for port in sorted(ports))

    def _state(self, peer_key: bytes) -> PredictionState:
        state = self._peers.get(peer_key)
        if state is None:
            state = self._peers[peer_key] = PredictionState()
        return state
