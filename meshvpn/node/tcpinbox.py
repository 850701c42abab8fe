"""The node's inbox for its punch port, and the wiring of TCP punching into the node.

Part of `meshvpn.node.node.Node` (mixed in), apart only to keep that module small: the punch
port's connections go to `TcpPunch` (`meshvpn.node.tcp.core`), the coord's ``punch`` starts TCP
punching and TCP port prediction (`meshvpn.node.tcp.prediction`), and their news becomes the
peer core's TCP paths, ``punch_request``s and the shell's connection wishes.
"""

from __future__ import annotations

from typing import Any, Optional

from meshvpn.control import messages as m
from meshvpn.node import events as ev
from meshvpn.node.candidates import Candidate, CandidateKind, tcp_candidates_of, tcp_sources_of
from meshvpn.node.pathfinder import ChangeReason, Path, PathKind
from meshvpn.node.peers import named_keys
from meshvpn.node.tcp.core import PathDown, PathUp, ProbePath, TcpEndpoint, WantPunch
from meshvpn.node.tcp.prediction import Dial, HardSide, SendSample, hard_side
from meshvpn.node.traversal import profile_of
from meshvpn.wire import Endpoint


_PEER_NEWS = (m.PeerMap, m.PeerUpdate, m.PeerDelta)
"""Coord messages that may change a peer's TCP candidates."""


class PunchPortInbox:
    """Mixed into `Node`, whose `tcp`, `tcp_prediction`, `core`, `peers`, `_out`, `_name` and `_settle` it uses."""

    tcp: Any
    tcp_prediction: Any
    core: Any
    peers: Any
    tcp_punching: bool
    tcp_ipv6: bool = False
    """We have a global IPv6 address (`set_own_endpoints`): peers' IPv6 addresses are TCP candidates."""
    _out: list
    _name: Any
    _settle: Any

    def enable_tcp_punch(self) -> None:
        """The shell holds a punch port: punch over TCP when the coord says punch."""
        self.tcp_punching = True

    def tcp_accepted(self, remote: Endpoint, now: float) -> Optional[int]:
        """A connection on the punch port from `remote`: its id, or None (then the shell aborts it)."""
        conn_id = self.tcp.accepted(remote, now)
        self._settle(now)
        return conn_id

    def tcp_connected(self, conn_id: int, now: float) -> None:
        self.tcp.connected(conn_id, now)
        self._settle(now)

    def tcp_connect_failed(self, conn_id: int, now: float) -> None:
        self.tcp.connect_failed(conn_id, now)
        self._settle(now)

    def tcp_closed(self, conn_id: int, now: float) -> None:
        self.tcp.connection_lost(conn_id, now)
        self._settle(now)

    def receive_tcp(self, conn_id: int, data: bytes, now: float) -> None:
        """Bytes from punched connection `conn_id`; the messages they complete go to the data path."""
        messages = self.tcp.data_received(conn_id, data, now)
        endpoint = self.tcp.conn_endpoint(conn_id) if messages else None
        if endpoint is not None:
            self._out.append(ev.Deliver([(message, endpoint) for message in messages]))
        self._settle(now)

    def send_tcp(self, endpoint: TcpEndpoint, messages: list[bytes], now: float) -> None:
        """Seal `messages` onto the punched TCP path at `endpoint` (the data path's runs)."""
        self.tcp.send(endpoint, messages, now)
        self._settle(now)

    def _drain_tcp(self, now: float) -> bool:
        actions = self.tcp.next_actions()
        for action in actions:
            if isinstance(action, PathUp):
                self._out.append(ev.TcpPathChanged(self._name(action.peer_key), action.endpoint))
                self.core.set_tcp_path(action.peer_key, action.endpoint, now)
            elif isinstance(action, PathDown):
                self._out.append(ev.TcpPathChanged(self._name(action.peer_key), None, action.reason))
                self.core.set_tcp_path(action.peer_key, None, now)
            elif isinstance(action, WantPunch):
                self._out.append(ev.SendCoord(m.PunchRequest(peer_key=action.peer_key)))
            elif isinstance(action, ProbePath):
                self.core.probe_tcp_path(action.peer_key, now)
            else:
                self._out.append(action)
        return bool(actions)

    def _tcp_candidates_of(self, info: m.PeerInfo) -> list[Candidate]:
        """The peer's TCP candidates we can reach: its IPv6 ones only when we have IPv6 too (else each
        would cost an attempt of the campaign, and its end a needless punch request)."""
        candidates = tcp_candidates_of(info)
        return candidates if self.tcp_ipv6 else _drop_ipv6(candidates)

    def tcp_candidates(self, msg: m.Message) -> dict[bytes, list]:
        """Before a coord message about peers: each peer's TCP candidates, for `tcp_news`."""
        if not self.tcp_punching or not isinstance(msg, _PEER_NEWS):
            return {}
        return {peer.key: self._tcp_candidates_of(peer.info) for peer in self.peers.named(named_keys(msg))}

    def tcp_news(self, before: dict[bytes, list]) -> None:
        """After it: a peer in use that gained TCP candidates (its IPv6 addresses, or a TCP
        mapping, often announced after the coord's first punch) and has neither a UDP nor a TCP
        path gets a ``punch_request``, so both sides punch the new candidates together; else TCP
        punching would wait for a punch that a relayed peer no longer asks for. Only the peers the
        message named are looked at (`named_keys`)."""
        for peer in self.peers.named(tuple(before)):
            old = before[peer.key]
            if peer.route is None or udp_direct(peer.route.path):
                continue
            if peer.tcp is not None and peer.tcp.path is not None:
                continue
            if set(self._tcp_candidates_of(peer.info)) - set(old):
                self._out.append(ev.SendCoord(m.PunchRequest(peer_key=peer.key)))

    def tcp_sampled(self, peer_key: bytes, sample: Optional[Endpoint], now: float) -> None:
        """The answer to ``TcpSampleWanted`` (None: no answer): our NAT's newest TCP mapping."""
        peer = self.peers.by_key.get(peer_key)
        candidates = [] if peer is None else self._tcp_candidates_of(peer.info)
        if peer is not None and peer.tcp is not None and peer.tcp.path is None:
            endpoints = [candidate.endpoint for candidate in _drop_ipv6(candidates)]  # NAT mappings only
            self._predicted(self.tcp_prediction.sampled(peer_key, sample, endpoints), candidates, now)
        self._settle(now)

    def _punch_tcp(self, punch: m.Punch, now: float) -> None:
        """On the coord's ``punch``, punch over TCP too, unless the peer has a UDP path. Behind an
        endpoint-dependent NAT, towards a peer without a public UDP endpoint (its site drops UDP),
        take a TCP port sample; against a peer that sent one, connect to the ports above it (or to
        random ports of its address, when its NAT draws them at random)."""
        peer = self.peers.by_key.get(punch.peer_key)
        if peer is None:
            return
        candidates = self._tcp_candidates_of(peer.info)
        waits = self.tcp.mapped  # the peer comes through our router, even with no candidate we can reach
        if not self.tcp_punching or udp_direct(peer.route and peer.route.path):
            return
        if not (candidates or punch.tcp_sample or waits):
            return
        if candidates or waits:  # else the peer's coord channel is not from its punch port (IPv6), but it sampled
            self.tcp.punch(peer.key, candidates, now, tcp_sources_of(peer.info))
        info = peer.info  # a peer reachable over UDP gets UDP's prediction, which a TCP sample could upset
        udp_less = info.public_endpoint is None and info.mapped_endpoint is None
        traversal = self.core.punching.traversal
        hard = hard_side(traversal.local) if udp_less and not self.tcp.mapped else HardSide.NO
        peer_random = not profile_of(punch.nat).predictable
        actions = self.tcp_prediction.punched(peer.key, punch.tcp_sample, peer_random, hard, now)
        self._predicted(actions, candidates, now)

    def _predicted(self, actions: list, candidates: list, now: float) -> None:
        """Carry out TCP port prediction's wishes: connects, a sample to take, a sample to send."""
        for action in actions:
            if isinstance(action, Dial):
                self.tcp.dial(action.peer_key, candidates, action.endpoints, now, action.fresh_port)
            elif isinstance(action, SendSample):
                self._out.append(ev.SendCoord(m.PunchRequest(peer_key=action.peer_key, tcp_sample=action.sample)))
            else:
                self._out.append(action)


def _drop_ipv6(candidates: list[Candidate]) -> list[Candidate]:
    return [candidate for candidate in candidates if candidate.kind is not CandidateKind.IPV6]


def udp_direct(path: Optional[Path]) -> bool:
    """Whether `path` is a UDP path (LAN or direct), which ends TCP punching for its peer."""
    return path is not None and path.kind in (PathKind.LAN, PathKind.DIRECT)


def tcp_silent(event: ev.PeerPathChanged) -> bool:
    """Whether the path finder left a TCP path because it went silent under traffic (`meshvpn.node.silence`)."""
    return event.old is not None and event.old.kind is PathKind.TCP and event.reason == ChangeReason.PATH_SILENT
