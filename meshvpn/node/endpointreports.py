"""When the node tells the coord where it can be reached, and when it asks its peers to punch again.

The shell (`meshvpn.node.refresh`) runs endpoint rounds and feeds this core what each step
learnt; the core says what to report and when to re-probe the peers. The rules:

* **Report what is known, at once.** A round (`begin`) reports what the host knows without
  asking anyone (LAN and IPv6 addresses, the router's port mappings, the public endpoint as last
  known) before it asks STUN, and reports again when STUN answers or gives up (`stun`). A
  network that answers no STUN (UDP blocked) then holds up nothing: its 5 s timeout used to hold
  every candidate, IPv6 and mappings included. A report goes out only when something changed.
* **Re-probe after a network change** (`network_changed`): once the coord link is up, the peers in
  use get a punch round and a punch request (`Reprobe`), as soon as the round's STUN answered or
  `reprobe_grace` after the round began, whichever comes first; so a network without UDP waits
  the grace, not the STUN timeout. If STUN answers later with a new public endpoint, the peers
  are asked once more, towards it. The grace keeps the common case to one punch request per peer
  (the coord limits them): STUN answers within a round trip where UDP gets out.
* **Re-probe for a new candidate.** Between changes, a report that adds an endpoint the peers did
  not have (an IPv6 address or mapping, a router's mapping, a LAN address) asks them to punch it
  too: they would otherwise find it only at their next punch round, or never while their path
  works. A new public endpoint is not such a candidate: a path that died asked for that round,
  and the node re-punches what fell back (`Refreshed`).
* **Asked rounds.** A round the node asked for (``DiscoverEndpoints``) ends with `Refreshed` once
  STUN answered or gave up.
* Nothing is asked of the peers while the coord link is down: it waits for `coord_up` (the
  ``register`` carries the endpoints).

Sans-IO: `now` is an argument; the shell keeps one timer on `get_timer()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from meshvpn.control import messages as m


@dataclass(frozen=True)
class OwnEndpoints:
    """Everything the node reports of where it is (the ``endpoints`` message's fields)."""

    public: Optional[m.Endpoint] = None
    """The shared socket's public mapping as STUN saw it."""
    local: tuple[m.Endpoint, ...] = ()
    """The LAN endpoints."""
    nat: Optional[m.NatInfo] = None
    """The NAT's behaviour, sampled."""
    mapped: Optional[m.Endpoint] = None
    """The router's port mapping of the UDP port."""
    ipv6: tuple[m.Endpoint, ...] = ()
    """The IPv6 endpoints (`meshvpn.node.announce6`)."""
    mapped_tcp: Optional[m.Endpoint] = None
    """The router's port mapping of the TCP punch port."""

    def candidates(self) -> set[m.Endpoint]:
        """The endpoints peers punch that no STUN answer gives: LAN, IPv6 and the UDP mapping."""
        return set(self.local) | set(self.ipv6) | ({self.mapped} if self.mapped is not None else set())


@dataclass(frozen=True)
class Report:
    """Tell the node and the coord where we are now."""

    endpoints: OwnEndpoints


@dataclass(frozen=True)
class Reprobe:
    """Have every peer in use punch us again (`Node.network_changed`)."""

    connections_lost: bool
    """The network change closed the old network's connections and extra sockets."""


@dataclass(frozen=True)
class Refreshed:
    """The round the node asked for reported STUN's answer: re-punch what fell back."""


Output = Union[Report, Reprobe, Refreshed]


@dataclass(frozen=True)
class ReportConfig:
    reprobe_grace: float = 0.5
    """Seconds after a round began that the peers are re-probed after a network change, if STUN
    has not answered by then (it answers within a round trip where UDP gets out)."""


class EndpointReports:
    """The rounds' reports and the re-probes they call for (the rules in the module docstring)."""

    def __init__(self, config: Optional[ReportConfig] = None) -> None:
        self.config = config or ReportConfig()
        self.reported: Optional[OwnEndpoints] = None
        """What was reported last (None: nothing yet)."""
        self._known = OwnEndpoints()
        self._coord_up = False
        self._moved = False
        """The network changed and the peers were not re-probed since."""
        self._lost = False
        """A change since the last re-probe closed the old network's connections."""
        self._grew = False
        """The peers have endpoints of ours to punch that they were not asked to yet."""
        self._began: Optional[float] = None
        """When the round waiting for STUN began (None: no round waits)."""
        self._begun = False
        """The round after the last network change began (and reported what the host knew)."""
        self._asked = False
        """The round was asked for by the node (``DiscoverEndpoints``)."""
        self._public_before: Optional[m.Endpoint] = None
        """Our public endpoint when the peers were re-probed before STUN answered (asked again if it moves)."""
        self._recheck = False
        """The peers were re-probed before STUN answered: a public endpoint it moves is asked for again."""
        self._out: list[Output] = []

    @property
    def asked(self) -> bool:
        """A round the node asked for has not had STUN's answer yet."""
        return self._asked

    @property
    def known(self) -> OwnEndpoints:
        """Everything learnt so far (reported, or about to be)."""
        return self._known

    # ---- inbox ----------------------------------------------------------------------

    def network_changed(self, connections_lost: bool, now: float) -> None:
        """The host's network changed: the round that begins now tells the peers its endpoints."""
        self._moved = True
        self._lost |= connections_lost
        self._began, self._begun, self._recheck = now, False, False

    def ask(self) -> None:
        """The node asked for a round (a path died): tell it when STUN answered (`Refreshed`)."""
        self._asked = True

    def begin(self, now: float, **known) -> None:
        """A round starts, knowing `known` (`OwnEndpoints` fields) without asking STUN: report it."""
        self._began, self._begun = now, True
        self.learn(now, **known)
        self._settle(now)

    def stun(self, public: Optional[m.Endpoint], now: float) -> None:
        """STUN's answer to the round (None: it gave up, the public endpoint stays as it was)."""
        if self._began is None:
            return
        self._began = None
        if public is not None:
            self.learn(now, public=public)
        self._grew |= self._recheck and self._known.public != self._public_before
        self._recheck = False
        self._settle(now)
        if self._asked:
            self._asked = False
            self._out.append(Refreshed())

    def learn(self, now: float, **known) -> None:
        """Something was learnt outside the round's steps (an IPv6 mapping, a router's mapping, a NAT
        profile): report it if it changed anything."""
        self._known = dataclasses.replace(self._known, **known)
        if self._known == self.reported:
            return
        if self.reported is not None and self._known.candidates() - self.reported.candidates():
            self._grew = True
        self.reported = self._known
        self._out.append(Report(self._known))
        self._settle(now)

    def coord_up(self, now: float) -> None:
        """The coord link registered (with our endpoints): a re-probe that waited for it goes now."""
        self._coord_up = True
        self._settle(now)

    def coord_down(self) -> None:
        self._coord_up = False

    def handle_timer(self, now: float) -> None:
        self._settle(now)

    # ---- outbox ---------------------------------------------------------------------

    def get_timer(self) -> Optional[float]:
        """The end of the grace, while a re-probe waits on STUN only."""
        if self._moved and self._begun and self._coord_up and self._began is not None:
            return self._began + self.config.reprobe_grace
        return None

    def outputs(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    # ---- rules ----------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        if not self._coord_up:
            return
        if self._moved:
            waiting = self._began is not None
            if not self._begun or (waiting and now < self._began + self.config.reprobe_grace):
                return
            self._moved = self._grew = False
            self._recheck, self._public_before = waiting, self._known.public
            self._out.append(Reprobe(self._lost))
            self._lost = False
        elif self._grew:
            self._grew = False
            self._out.append(Reprobe(False))
