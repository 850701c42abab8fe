"""The node's access filter: the coord's rules, enforced on what peers send after decryption.

Rules come from the coord (`meshvpn.control.messages.AccessInfo`, built by
`meshvpn.coord.policy`) with sources as peer names; `configure` turns names into overlay
addresses from the peer map and is called again whenever the map changes. Without rules every
packet passes and nothing is tracked.

With rules, a packet is let in when it answers a flow this node started (`outbound` records
each flow's reply key: TCP and UDP by address and ports, ICMP and ICMPv6 echo by address; a UDP
broadcast or multicast, such as a server browser's query, lets in unicast answers from any peer to its
port for `BROADCAST_REPLY_TIMEOUT`, as Linux's broadcast conntrack helper does), or, for an ICMP or
ICMPv6 error, when the packet it quotes is one this node sent the error's sender in a flow it
tracks or one the rules let in from that peer (*related*, as conntrack's RELATED: Packet Too Big
and Port Unreachable reach the flows they are about without an `icmp` rule), or else by the
first rule whose sources and services match it, or else by the default. Later fragments carry
no ports: they follow the first fragment of their datagram (one that comes before it is
dropped). Drops are counted by rule
(`rule N`, the rule's index in the coord config) or `default`. Flows and fragments expire.

With a `cache` (`meshvpn.lan.flowcache`, set by the native loop), each accepted flow and each
flow this node sends is noted there with the time its verdict holds until, so the native thread
serves them without asking; `configure` (new rules or a new peer map) and an evicted flow clear it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Mapping

from meshvpn.control import messages as m
from meshvpn.lan.flowcache import FlowCache
from meshvpn.lan.packets import LIMITED_BROADCAST, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Header, is_multicast
from meshvpn.lan.packets6 import ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, PROTO_ICMPV6, is_multicast6
from meshvpn.portspec import Service

FLOW_TIMEOUT = {PROTO_TCP: 720.0, PROTO_UDP: 180.0, PROTO_ICMP: 30.0, PROTO_ICMPV6: 30.0}
"""Seconds a flow stays open after its last outbound packet."""
FRAGMENT_TIMEOUT = 30.0
"""Seconds later fragments of an admitted datagram are let in (Linux's ipfrag_time)."""
MAX_FLOWS = 65536
"""Flows tracked at most; the least recently used goes first."""
BROADCAST_REPLY_TIMEOUT = 3.0
"""Seconds answers to a UDP broadcast or multicast are let in (nf_conntrack_broadcast's default)."""
RULE_VERDICT_TIMEOUT = 60.0
"""Seconds a flow a rule let in stays in the cache (rules change only by `configure`, which clears it)."""
ANY_PEER = -1
PRUNE_INTERVAL = 30.0
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
_ECHO = {PROTO_ICMP: (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY), PROTO_ICMPV6: (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)}
"""(request, reply) types of each family's echo, whose replies a request lets in."""
DEFAULT = "default"
FRAGMENT = "fragment_without_first"
EVERYONE = "*"


@dataclass(frozen=True)
class _Rule:
    label: str
    allow: bool
    sources: frozenset[int] | None
    """Overlay addresses; None is every peer."""
    services: tuple[Service, ...]

    def matches(self, header: Header, port: int | None) -> bool:
        if self.sources is not None and header.src not in self.sources:
            return False
        return any(service.matches(header.proto, port) for service in self.services)


def _reply_key(header: Header) -> tuple[int, int, int | None, int | None]:
    """The key of an inbound packet, and of the reply to an outbound one (swapped)."""
    if header.proto in _ECHO:
        return (header.src, header.proto, None, None)
    return (header.src, header.proto, header.sport, header.dport)


def _datagram(header: Header) -> tuple:
    """Which datagram a fragment belongs to, as the receiving kernel reassembles it: IPv4 by source,
    identification and protocol (RFC 791); IPv6 by source and identification (RFC 8200 4.5), since
    the protocol a later fragment names is only the first header after its Fragment header (a
    Destination Options header, say, which the first fragment walks past)."""
    return header.version, header.src, header.ident, header.proto if header.version == 4 else None


class AccessFilter:
    """Stateful inbound filter of one node."""

    def __init__(self) -> None:
        self.active = False
        self._rules: tuple[_Rule, ...] = ()
        self._default_allow = True
        self._flows: dict[tuple, float] = {}
        self._fragments: dict[tuple, float] = {}
        self._next_prune: float | None = None
        self._broadcast = LIMITED_BROADCAST
        self.dropped: Counter[str] = Counter()
        self.cache: FlowCache | None = None
        """Where the decisions go for the native thread to serve; None without it."""

    def configure(self, info: m.AccessInfo | None, addresses: Mapping[str, int],
                  broadcast: int = LIMITED_BROADCAST) -> None:
        """Take the coord's rules (None: no filtering) with the peer map's name → address and
        the network's broadcast address."""
        self.active, self._broadcast = info is not None, broadcast
        if self.cache is not None:
            self.cache.forget()
        if info is None:
            self._rules, self._default_allow = (), True
            self._flows.clear()
            self._fragments.clear()
            return
        self._default_allow = info.default == "allow"
        self._rules = tuple(
            _Rule(f"rule {rule.rule}", rule.action == "allow",
                  None if EVERYONE in rule.sources else frozenset(addresses[n] for n in rule.sources if n in addresses),
                  rule.services)
            for rule in info.rules
        )

    def outbound(self, header: Header, now: float) -> None:
        """Note a packet this node sends, so its replies are let in."""
        if not self.active or not header.first_fragment:
            return
        key = self._sent_key(header)
        if key is None:
            if self.cache is not None:  # an echo reply, an error: nothing to track, the thread may send it
                self.cache.sent(header, now + FLOW_TIMEOUT[header.proto])
            return
        timeout = BROADCAST_REPLY_TIMEOUT if key[0] == ANY_PEER else FLOW_TIMEOUT.get(header.proto, FLOW_TIMEOUT[PROTO_UDP])
        self._flows.pop(key, None)
        self._flows[key] = now + timeout
        if len(self._flows) > MAX_FLOWS:
            del self._flows[next(iter(self._flows))]
            if self.cache is not None:  # a cached reply of the evicted flow must not outlive it
                self.cache.forget()
        if self.cache is not None and key[0] != ANY_PEER:
            self.cache.sent(header, now + timeout)
        self._arm(now)

    def _sent_key(self, header: Header) -> tuple | None:
        """The flow a packet this node sends opens for its replies; None for an echo reply or an ICMP
        error, which open nothing."""
        if header.proto in _ECHO:
            return (header.dst, header.proto, None, None) if header.sport == _ECHO[header.proto][0] else None
        if header.proto == PROTO_UDP and self._is_group(header):
            return (ANY_PEER, PROTO_UDP, None, header.sport)
        if header.proto in (PROTO_TCP, PROTO_UDP):
            return (header.dst, header.proto, header.dport, header.sport)
        return (header.dst, header.proto, None, None)

    def inbound(self, header: Header, now: float, quote: Header | None = None) -> bool:
        """Whether to deliver a packet a peer sent; a refusal is counted by the rule that made it.

        ``quote`` is the header an ICMP error quotes (`meshvpn.lan.icmperrors.quoted`): the error is
        let in as related when that packet's flow is one the filter lets through."""
        if not self.active:
            return True
        if not header.first_fragment:
            admitted = self._fragments.get(_datagram(header), 0.0) > now
            if not admitted:
                self.dropped[FRAGMENT] += 1
            return admitted
        until = self._flow_until(header, now)
        related = 0.0
        if not until and self._by_rules(header, count=quote is None):
            until = now + RULE_VERDICT_TIMEOUT
        elif not until and quote is not None:
            until = related = self._related_until(header, quote, now)
            if not related:
                self._by_rules(header)  # refused: counted by the rule that refused it
        if until and header.fragmented:
            self._fragments[_datagram(header)] = now + FRAGMENT_TIMEOUT
            self._arm(now)
        elif until and self.cache is not None and not related:
            self.cache.admitted(header, until)  # a related error's key does not name the flow it is about
        return bool(until)

    def _related_until(self, error: Header, quote: Header, now: float) -> float:
        """Until when the packet an ICMP error quotes lets the error in: a packet this node sent the
        error's sender, of a flow it tracks or one the rules let in from that peer; 0.0 if none."""
        if quote.src != error.dst or quote.dst != error.src or not quote.first_fragment:
            return 0.0
        key = self._sent_key(quote)
        until = self._flows.get(key, 0.0) if key is not None else 0.0
        if until > now:
            return until
        answered = replace(quote, src=quote.dst, dst=quote.src, sport=quote.dport, dport=quote.sport)
        return now + RULE_VERDICT_TIMEOUT if self._by_rules(answered, count=False) else 0.0

    def _is_group(self, header: Header) -> bool:
        if header.version == 6:
            return is_multicast6(header.dst)
        return header.dst in (LIMITED_BROADCAST, self._broadcast) or is_multicast(header.dst)

    def _flow_until(self, header: Header, now: float) -> float:
        """Until when a flow this node started lets the packet in; 0.0 if none does."""
        if header.proto in _ECHO and header.sport != _ECHO[header.proto][1]:
            return 0.0
        until = self._flows.get(_reply_key(header), 0.0)
        if header.proto == PROTO_UDP:
            until = max(until, self._flows.get((ANY_PEER, PROTO_UDP, None, header.dport), 0.0))
        return until if until > now else 0.0

    def _by_rules(self, header: Header, count: bool = True) -> bool:
        """The verdict of the first rule that matches, else the default; a refusal counted if ``count``."""
        rule = next((rule for rule in self._rules if rule.matches(header, header.dport)), None)
        allow = self._default_allow if rule is None else rule.allow
        if not allow and count:
            self.dropped[DEFAULT if rule is None else rule.label] += 1
        return allow

    def _arm(self, now: float) -> None:
        if self._next_prune is None:
            self._next_prune = now + PRUNE_INTERVAL

    def get_timer(self) -> float | None:
        return self._next_prune

    def handle_timer(self, now: float) -> None:
        """Forget expired flows and fragments."""
        if self._next_prune is None or now < self._next_prune:
            return
        self._flows = {key: until for key, until in self._flows.items() if until > now}
        self._fragments = {key: until for key, until in self._fragments.items() if until > now}
        self._next_prune = now + PRUNE_INTERVAL if self._flows or self._fragments else None
