"""How the node core keeps paths through a network that changes under them.

A part of :class:`~meshvpn.node.core.NodeCore` (its base class), one concern with its own rules
(``docs/paths.md``, "When the network changes"):

* The data path reports what the path finders need to judge silence: when traffic last went
  out (``last_tx``), came straight in (``last_rx``) and came through a relay (``last_relay_rx``).
  The core reads them on its timer (a look), and looks when a silence rule could first act: the
  data path sends without telling it, so at the earliest a path's silence rule could fire had
  traffic gone out since the last look (``PathFinder.silence_look``: last heard + `silence_after`).
  Steady traffic that is answered moves that time on at each look, so the core looks about every
  `silence_after`, not more often; once it has passed (nothing heard since), any send may make
  the path silent, and the core looks every `WATCH_INTERVAL` while the peer carried traffic within
  `WATCH_IDLE`: silence is noticed no later than by looking every `WATCH_INTERVAL` throughout.
  Everything else that reads the traffic times has its own deadline (keepalives and liveness
  probes, path timeout, rekey), before which the shell folds the data path's times in, or is an
  event of the data path (a roam, a relayed receive on a direct path, a relay that moved).
* Roaming: the data path calls ``roamed`` for the newest authenticated data of a current
  session from a new source; the peer's direct route moves there at once.
* The peer's traffic moving from the direct path to a relay while ours goes direct is an event
  too (``relayed_on_direct``, from the data path; the native thread wakes Python for its receives):
  a direct path that went silent is left at once, as the peer left it, rather than at the next look.
* A direct path that died while carrying traffic asks the shell for endpoint discovery
  (``DiscoverEndpoints``, at most once per `DISCOVER_INTERVAL`; a TCP path's request for a new
  coord connection is never dropped by that limit, it joins the round asked for); once it is done
  (``endpoints_refreshed``), every peer that fell back seeks a path as new traffic does (a punch,
  a port sample or the coord's punch on the hard side, at once) and asks the coord for a punch,
  so the peer learns our new mapping and both punch again.
  The same after a (re-)registration: a NAT that re-mapped us often cut the coord link too, so
  the requests made before the coord had our new endpoints were lost with it.
* A relay path that went silent, or a direct path that died (our mapping may have moved, and a
  hello re-registers it), raises ``check_relays``; the node (:class:`NodeRecovery`, a part of
  :class:`~meshvpn.node.node.Node`) has its relay links and TURN allocations check themselves.
* A peer that stops reporting a relay (its link to it stopped being ready: the relay may have
  died) has our link to that relay check itself (``relays_to_check``): a node that relays nothing
  through it, or whose traffic through it just stopped being echoed by a peer that left it,
  would otherwise notice only by its own hellos (``down_after``), and both ends of a pair that
  left it would not agree on it for up to that long.
"""

from __future__ import annotations

from typing import Optional

from meshvpn.control import messages as m
from meshvpn.node.events import DiscoverEndpoints
from meshvpn.node.pairrelay import relays_left
from meshvpn.node.pathfinder import RELAY_PATH
from meshvpn.node.peers import Peer
from meshvpn.node.silence import EndpointsStale, RelaySilent
from meshvpn.wire import Endpoint

WATCH_INTERVAL = 0.1
"""Seconds between the core's looks at the data path's traffic times once a silence rule could act."""
WATCH_IDLE = 10.0
"""Seconds after the last traffic of any peer during which the core keeps looking."""
DISCOVER_INTERVAL = 1.0
"""Least seconds between two ``DiscoverEndpoints`` requests."""


class Recovery:
    """The roaming and silence methods of the node core (which provides every attribute used here)."""

    check_relays: bool = False
    """The relay links should check themselves (a relay path went silent, or a path died); the node clears it."""
    _watched_at: float = float("-inf")
    relays_to_check: frozenset[str] = frozenset()
    """Relays a peer stopped reporting: our links to them check themselves once; the node clears it."""
    _discover_at: float = float("-inf")
    _discover_tcp: bool = False
    """Whether the round asked for at `_discover_at` reconnects the coord link too."""

    def roamed(self, peer: Peer, src: Endpoint, now: float) -> None:
        """The newest authenticated data of the peer's current session came straight from ``src``."""
        peer.paths.roamed(src, now)
        self._drain_paths(peer, now)

    def relay_heard(self, peer: Peer, now: float) -> None:
        """The peer's traffic moved from the direct path to a relay: judge the direct path's silence
        now (the peer gave up on it if it went silent), not at the next look at the traffic times."""
        self.sync_traffic(peer)
        peer.paths.handle_timer(now)
        self._drain_paths(peer, now)

    def peer_reported(self, old: m.PeerInfo, new: m.PeerInfo) -> None:
        """The coord has news of a peer: the relays it no longer reports are checked (``relays_to_check``)."""
        left = relays_left(old, new)
        if left:
            self.relays_to_check = self.relays_to_check | left

    def sync_traffic(self, peer: Peer) -> None:
        """Tell the path finder about traffic the data path saw since the last call."""
        paths = peer.paths
        paths.traffic_sent(peer.last_tx)
        paths.relay_traffic_received(peer.last_relay_rx)
        if peer.last_rx > peer.synced_rx and peer.last_rx_src is not None:
            peer.synced_rx = peer.last_rx
            paths.traffic_received(peer.last_rx_src, peer.last_rx)

    def endpoints_refreshed(self, now: float) -> None:
        """The coord has our current endpoints (the shell re-discovered them, or we registered): re-punch what fell back."""
        for peer in self.peers:
            if peer.paths.recovering(now):
                self.punching.seek_path(peer, now, 0.0)
        self.punching.resample(now)

    def _watch_deadline(self) -> Optional[float]:
        """The next look at the traffic times: the earliest a silence rule could act, or, once that
        has passed for a peer that carried traffic recently, `WATCH_INTERVAL` after the last look."""
        look = self.timers.next_look(self._watched_at)
        if look is None:
            return None
        return look if look > self._watched_at else self._watched_at + WATCH_INTERVAL

    @staticmethod
    def _busy_until(peer: Peer) -> Optional[float]:
        """Until when the peer's traffic keeps the core looking (None: it has no route)."""
        return None if peer.route is None else max(peer.last_tx, peer.last_rx, peer.last_relay_rx) + WATCH_IDLE

    def _look_at(self, peer: Peer) -> Optional[float]:
        """The peer's next look at its traffic times (None: none while its traffic keeps the core looking)."""
        busy_until, look = self._busy_until(peer), peer.paths.silence_look()
        return look if busy_until is not None and look is not None and look < busy_until else None

    def _path_news(self, action: object, now: float) -> None:
        """A path finder's request other than a probe or a path change."""
        if isinstance(action, RelaySilent):
            self.check_relays = True
        elif isinstance(action, EndpointsStale):
            self.endpoints_stale(action, now)

    def endpoints_stale(self, stale: EndpointsStale, now: float) -> None:
        """A path died: ask for an endpoint round, at most one per `DISCOVER_INTERVAL`. A TCP path's
        wish for a new coord connection is never lost to that limit: the coord sees our punch port's
        new mapping only on a new connection, so it joins the round already asked for (the request
        still queued becomes one that reconnects; else a reconnecting request follows, and the shell
        runs no second round while the first is under way)."""
        if now >= self._discover_at + DISCOVER_INTERVAL:
            self._discover_at, self._discover_tcp = now, stale.tcp
            self.check_relays = True
            self._events.append(DiscoverEndpoints(stale.tcp))
        elif stale.tcp and not self._discover_tcp:
            self._discover_tcp = True
            queued = [i for i, event in enumerate(self._events) if isinstance(event, DiscoverEndpoints)]
            if queued:
                self._events[queued[-1]] = DiscoverEndpoints(True)
            else:
                self._events.append(DiscoverEndpoints(True))


class NodeRecovery:
    """The node's side of recovery: inputs from the data path and the shell, and relay checks
    (:class:`~meshvpn.node.node.Node` provides ``core``, ``relays``, ``turn`` and ``_settle``)."""

    def roamed(self, peer: Peer, src: Endpoint, now: float) -> None:
        """The data path saw the newest data of the peer's current session arrive from a new ``src``."""
        self.core.roamed(peer, src, now)
        self._settle(now)

    def endpoints_refreshed(self, now: float) -> None:
        """The shell's endpoint round that ``DiscoverEndpoints`` asked for reported (to the coord too)."""
        self.core.endpoints_refreshed(now)
        self._settle(now)

    def relayed_on_direct(self, peer: Peer, now: float) -> None:
        """The peer's traffic came through a relay after coming straight, while our route to it is
        direct: if that path went silent the peer gave up on it, and both ends fall back together at
        once (the core's next look may come up to `silence_after` later)."""
        self.core.relay_heard(peer, now)
        self._settle(now)

    def relay_moved(self, peer: Peer, src: Endpoint, now: float) -> None:
        """The peer's relayed traffic now comes through relay `src`, not the one our route to it takes:
        the peer may have left ours because it died, and our traffic to it would go unanswered
        without our noticing (its traffic still arrives), so the relay links check themselves once."""
        route = peer.route
        if route is not None and route.path == RELAY_PATH and route.endpoint != src:
            self.relays.check(now)
            self._settle(now)

    def _check_relays(self, now: float) -> bool:
        """Have the relay links check themselves if the core asked (a relay path went silent or a
        direct path died: our mapping may have moved), or the links to relays a peer stopped
        reporting (our mapping did not move); True if any did."""
        named, self.core.relays_to_check = self.core.relays_to_check, frozenset()
        if named:
            self.relays.check(now, names=named)
        if not self.core.check_relays:
            return bool(named)
        self.core.check_relays = False
        self.relays.check(now, moved=True)
        self.turn.check(now)
        return True
