"""A TURN allocation on a TCP stream whose network is dead for 5 s, then back: the pair carries again fast.

Two random-port sites meet only through coturn (`test_turn_lab.py`); site a lets no UDP out, so a1's
allocation lives on a TCP stream, b1's on UDP. Everything a1 sends or receives is dropped at a's
router for 5 s (a dead access point), then a1's interface is flapped as a driver reports the
reassociation (`test_tcp_resume_lab.py`'s `upstream`): what went out and was lost waits for TCP's
backed-off retransmission timer, SYNs too, and the stream checks for that when netlink says the
network is back (`meshvpn.node.turn.server`).

Two runs: `busy`, UDP trickles both ways through the tunnel running through the outage, and `idle`,
the trickles started once the link is back. A busy allocation does not outlive the outage: its check
gives it up after about 1.5 s, and a new stream is raced into the dead network, whose SYNs back off
(1 s, then 2 s); at the link's return that race is raced again at once. Target: traffic back both
ways within 2 s of the link (the failover target), plus 0.5 s for a loaded 2-core machine. Measured
on a 2-core machine shared with other suites (2026-12-05, load average 2-5): busy 0.28-0.41 s, idle
0.32-0.74 s (seven runs each); before the stream was checked and raced again at the link's return,
busy 0.30-0.64 s (four runs) and idle 0.42-0.81 s (two), and 0.92-0.97 s idle where the new race
waited for its next SYN. Figures in
docs/paths.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for

from test_tcp_resume_lab import outage
from test_turn_lab import coturn, mesh  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

BACK_WITHIN = 2.5
"""Seconds from the link's return to traffic again, either way (2 s target, 0.5 s for load)."""


@pytest.mark.parametrize("idle", [False, True], ids=["busy", "idle"])
@pytest.mark.parametrize("mesh", [NatKind.UDP_BLOCKED], indirect=True, ids=["udp-blocked"])
def test_a_turn_stream_offline_for_5s_carries_again_within_2s(mesh: Mesh, topo: Topology,  # noqa: F811
                                                               tmp_path: Path, idle: bool) -> None:
    wait_for(lambda: all(t["ready"] for n in ("a1", "b1") for t in mesh.status(n)["self"]["turn"]), 30,
             "both nodes to allocate on coturn")
    assert mesh.status("a1")["self"]["turn"][0]["transport"] == "tcp"
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=20)
    _, back = outage(mesh, topo, "upstream", idle)
    log = mesh.nodes["a1"].log.read_text()
    lost = [line.split("no allocation: ", 1)[1] for line in log.splitlines() if "turn coturn: no allocation" in line]
    print(f"turn stream lost, {'idle' if idle else 'busy'}: traffic back a1->b1 {back['b1']}, "
          f"b1->a1 {back['a1']} s after the link; allocations lost: {lost}; now {mesh.peer('a1', 'b1')['path']} "
          f"over {mesh.status('a1')['self']['turn'][0]['transport']}")
    assert back["b1"] is not None and back["b1"] < BACK_WITHIN, mesh.logs()
    assert back["a1"] is not None and back["a1"] < BACK_WITHIN, mesh.logs()
