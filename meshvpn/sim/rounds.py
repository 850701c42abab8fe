"""A simulated node's endpoint rounds, as the daemon runs them (`meshvpn.node.refresh`).

The same rules decide (`meshvpn.node.endpointreports`): a round reports what the host knows at
once, then STUN's answer, or nothing new after `MAPPING_TIMEOUT`; after a network change the
node re-probes its peers once the coord link is up and STUN answered or the grace passed; a
new IPv6 endpoint asks the peers to punch it. The harness's node (`meshvpn.sim.pairs`) asks
STUN with its short form and reports through its fake coord; every round of it re-punches what
fell back, as a round the daemon's node asked for does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from meshvpn.control import messages as m
from meshvpn.node.endpointreports import EndpointReports, Report, Reprobe
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.sim.pairs import Node

MAPPING_TIMEOUT = 5.0
"""Seconds an endpoint round waits for STUN (the daemon's `discovery.MAPPING_TIMEOUT`)."""


class EndpointRounds:
    """One simulated node's rounds: the rules, their timer on the simulated clock, and their outputs."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.reports = EndpointReports()
        self._timer = None
        self._round = 0
        self.asked_at = 0.0
        """When the current round asked STUN: a mapping that moved under a coord connection made
        before has the link reconnect at once (`meshvpn.node.coorddial.remapped`)."""

    def discover(self) -> None:
        """A round: what the host knows goes out at once, then STUN on the main socket."""
        node = self.node
        self.reports.ask()
        self._coord_link()
        public = None if node.public_endpoint is None else m.Endpoint(*node.public_endpoint)
        self.reports.begin(node.now, public=public, local=_endpoints(node._local()), ipv6=_endpoints(node._ipv6()))
        self._carry_out()
        self.asked_at = node.now
        node.ask_stun()
        self._round += 1
        node.world.net.scheduler.call_later(MAPPING_TIMEOUT, self._ended, self._round, None)

    def network_changed(self, connections_lost: bool) -> None:
        """The host's network changed (it moved, or its link came back): a round now."""
        self.reports.network_changed(connections_lost, self.node.now)
        self.discover()

    def answered(self, public: m.Endpoint) -> None:
        """STUN's answer on the main socket over IPv4: it ends the round under way."""
        self._ended(self._round, public)

    def learnt(self) -> None:
        """The IPv6 endpoints may have changed (STUN's answer over IPv6)."""
        self._coord_link()
        self.reports.learn(self.node.now, ipv6=_endpoints(self.node._ipv6()))
        self._carry_out()

    def registered(self) -> None:
        """The coord link registered: what waited for it goes now."""
        self._coord_link()
        self._carry_out()

    def _ended(self, round_: int, public: Optional[m.Endpoint]) -> None:
        if round_ != self._round:
            return
        self._coord_link()
        self.reports.stun(public, self.node.now)
        self._carry_out()

    def _coord_link(self) -> None:
        """Tell the rules whether the coord link is up (the fake coord's links change under them)."""
        node = self.node
        if node.world.coord.link(node).up:
            self.reports.coord_up(node.now)
        else:
            self.reports.coord_down()

    def _carry_out(self) -> None:
        """What the rules said, as the daemon's refresh does it, and their timer followed."""
        node = self.node
        for out in self.reports.outputs():
            if isinstance(out, Report):  # the harness reports its own fields, as it always did
                node._report(None if node.public_endpoint is None else Endpoint(*node.public_endpoint))
            elif isinstance(out, Reprobe):
                node.node.network_changed(node.now, connections_lost=out.connections_lost)
            else:
                node.node.endpoints_refreshed(node.now)
        node.pump()
        if self._timer is not None:
            self._timer.cancel()
        when = self.reports.get_timer()
        scheduler = node.world.net.scheduler
        self._timer = None if when is None else scheduler.call_at(max(when, node.now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._coord_link()
        self.reports.handle_timer(self.node.now)
        self._carry_out()


def _endpoints(endpoints) -> tuple[m.Endpoint, ...]:
    return tuple(m.Endpoint(*e) for e in endpoints)
