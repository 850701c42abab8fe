"""Which of two proven direct paths of the same kind a peer's traffic should take.

The lower round trip, with two preferences, each worth up to 2 ms of it, so that two alike
paths never take turns:

* IPv6 over IPv4 (`meshvpn.node.family`, whose race decides between the families).
* The peer's **announced** endpoint (its STUN mapping, its router's mapping, its IPv6 address:
  all on its main socket) over one we only **observed** or guessed (a birthday hit, a predicted
  port). Behind a port-range NAT the peer's main socket and its extra punching sockets
  (`meshvpn.node.mappings`) can all answer; the peer answers and sends from the socket that heard
  us last, which after the campaign is the one our path probes. Its main socket outlives every
  campaign; an extra one stays only while a path uses it (the native data-path thread serves both
  since it polls the pinned sockets too, docs/dataplane.md).
"""

from __future__ import annotations

from meshvpn.node.candidates import Candidate, CandidateKind
from meshvpn.node.family import family_slack

ANNOUNCED_SLACK = 0.002
"""Seconds of round trip a path to an announced endpoint may lose against an observed one and still win."""

ANNOUNCED = frozenset({CandidateKind.PUBLIC, CandidateKind.MAPPED, CandidateKind.IPV6})
"""Candidate kinds that are the peer's main socket as the peer itself announced it (LAN ranks apart)."""


def announced_slack(new: Candidate, current: Candidate | None) -> float:
    """ANNOUNCED_SLACK for an announced `new` against an observed or predicted `current`, minus that
    the other way round, 0 when both are of one sort."""
    is_announced = (new.kind in ANNOUNCED) - (current is not None and current.kind in ANNOUNCED)
    return is_announced * ANNOUNCED_SLACK


def better(new: Candidate, rtt: float, current: Candidate | None, current_rtt: float | None) -> bool:
    """Whether a direct path to `new` measured at `rtt` beats the current one of the same kind."""
    slack = family_slack(new.endpoint, current and current.endpoint) + announced_slack(new, current)
    return rtt < (current_rtt or 0.0) + slack


def stays_announced(current: Candidate | None, new: Candidate | None) -> bool:
    """Whether a direct path to the announced `current` stays when the peer's newest data comes from
    `new`, one of its endpoints we observed or guessed while punching (None: one we never knew).

    The peer sends from the socket that heard us last: during a campaign that may be an extra one
    that our probe to a birthday port reached, not a move of the peer. A new endpoint (its NAT
    re-mapped it) is not known, so it still moves the path, and so does any move off an observed one.
    Only off a STUN mapping: behind a router's port forward the peer's answers can reach us from
    another port of its (a flow of its own NAT took the forwarded port's place), and roaming there is
    what keeps the pair direct (docs/paths.md)."""
    return current is not None and current.kind is CandidateKind.PUBLIC and new is not None \
        and new.kind not in ANNOUNCED


def lan_twin(current: Candidate | None, candidates: list[Candidate]) -> Candidate | None:
    """The peer's own interface address (a LAN candidate) at the very endpoint of `current`, a public
    or observed candidate: a path proven there is a LAN path, and takes that kind without a probe
    (the endpoint is what was proven). Without a NAT the peer's STUN mapping is its LAN endpoint:
    the answer to our probe of the one may come when the other's did not (the peer did not know us
    yet), and a path proven before the peer's report of its LAN addresses reached us (its probe
    came first, and ours answered it) is one too."""
    if current is None or current.kind is CandidateKind.LAN:
        return None
    return next((c for c in candidates if c.kind is CandidateKind.LAN and c.endpoint == current.endpoint), None)
