"""The core looks at the data path's traffic times when a silence rule could first act, not every
`WATCH_INTERVAL` while traffic flows; silence is found no later than by looking that often.

Real parts: two nodes with their data paths (``meshvpn.sim.nodes``), a fake clock; the test runs
each node's one timer as the shell does, and counts alice's looks (timer firings).
"""

import random

from meshvpn.node.pathfinder import PathKind
from meshvpn.node.recovery import WATCH_INTERVAL
from meshvpn.sim.nodes import alice_and_bob, ip_packet

SILENCE_AFTER = 0.3
"""The default `paths.silence_after`."""
EVERY = 0.01
"""Seconds between alice's packets (bob answers each)."""


class Flow:
    """Alice sends every `EVERY` seconds; bob answers while `answers`; both nodes' timers run when due."""

    def __init__(self) -> None:
        self.alice, self.bob, self.wire = alice_and_bob(random.Random)
        self.now = 0.0
        self.looks: list[float] = []
        self.suspected: list[float] = []
        """When alice's path finder found the path silent (and probed it)."""
        self.answers = True
        self.sending = True
        self._send(0.0)
        assert self.peer.route.path.kind is PathKind.DIRECT

    @property
    def peer(self):
        return self.alice.peers.by_key[self.bob.public]

    def _send(self, now: float) -> None:
        alice, bob = self.alice, self.bob
        alice.send(ip_packet(alice.address, bob.address, b"ping"), now)
        self.wire.pump(now)
        if self.answers:
            bob.send(ip_packet(bob.address, alice.address, b"pong"), now)
            self.wire.pump(now)
        else:
            bob.collect()

    def run(self, until: float) -> None:
        """Traffic every `EVERY` s (while `sending`) and the timers, in time order, up to `until`."""
        next_send = self.now + EVERY
        while True:
            timers = {node: node.node.get_timer() for node in (self.alice, self.bob)}
            due = min([t for t in timers.values() if t is not None] + [next_send if self.sending else until + 1])
            if due > until:
                break
            self.now = max(self.now, due)
            for node, at in timers.items():
                if at is not None and at <= self.now:
                    if node is self.alice:
                        self.looks.append(self.now)
                    node.tick(self.now)
                    self.wire.pump(self.now)
            if self.sending and next_send <= self.now:
                self._send(self.now)
                next_send += EVERY
            suspect = self.peer.paths._silence.suspect_at
            if suspect is not None and suspect not in self.suspected:
                self.suspected.append(suspect)
        self.now = until


def test_steady_answered_traffic_has_the_core_look_about_every_silence_after():
    flow = Flow()
    flow.run(1.0)
    flow.looks.clear()
    flow.run(11.0)
    per_second = len(flow.looks) / 10.0
    print(f"{per_second:.1f} looks a second under steady traffic")
    assert per_second <= 1.2 / SILENCE_AFTER, "about one look per silence_after, not one per WATCH_INTERVAL"
    assert per_second >= 0.8 / SILENCE_AFTER
    assert flow.peer.route.path.kind is PathKind.DIRECT


def test_a_path_that_goes_silent_under_traffic_is_probed_at_silence_after():
    flow = Flow()
    flow.run(2.0)
    flow.answers = False
    flow.run(2.005)
    last_heard = flow.peer.last_rx
    flow.run(3.0)
    found = flow.suspected[0]
    print(f"silent {found - last_heard:.3f} s after the last answer")
    assert found - last_heard <= SILENCE_AFTER + 1e-9, "at the earliest the rule can act: no later than before"


def test_a_send_after_a_pause_into_a_silent_path_is_found_within_a_watch_interval():
    """Nothing goes out for a while after the last answer (the look's time passes with nothing to
    find); the next send goes unanswered: the core keeps looking every WATCH_INTERVAL meanwhile."""
    flow = Flow()
    flow.run(2.0)
    flow.sending = False
    flow.run(3.5)  # before the path's own liveness probe (2 s after the last thing heard)
    flow.answers, flow.sending = False, True
    resumed = flow.now
    flow.run(4.0)
    found = flow.suspected[0]
    print(f"silent {found - resumed:.3f} s after the first unanswered send")
    assert found - resumed <= EVERY + WATCH_INTERVAL + 1e-9
