"""The host's own network changes under a running daemon: a move to another site, a link down for 5 s.

A coord at 203.0.113.10, a relay at 203.0.113.20 and three sites behind port-preserving NATs:
`a1` at site a, `b1` at site b, and site c empty until `a1` moves there. A checksummed TCP
transfer a1 → b1 runs through each event and must arrive intact; UDP trickles both ways,
stamped where they arrive (`meshvpn.lab.timing`), say when traffic came back, and the daemon's
log says when it noticed and when its coord link was up again. Figures in docs/paths.md.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import COORD_PORT, Mesh, wait_for
from meshvpn.lab.timing import TcpPayloads, logged_at, receiver, trickle
from meshvpn.lab.transfer import transfer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
SIZE = 3 << 20
SECONDS = 12.0
"""The transfer is spread over this long, so the event happens while it runs."""
TRICKLE_SECONDS = 26.0
NOTICED = re.compile(r"network changed: ")
COORD_UP = re.compile(r"coord link up")


@pytest.fixture
def mesh(topo: Topology, tmp_path: Path, meshes: list[Mesh]) -> Mesh:
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=NatKind.PORT_PRESERVING)
    topo.add_site("b", nat=NatKind.PORT_PRESERVING)
    topo.add_site("c", nat=NatKind.PORT_PRESERVING, hosts=0)
    built = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(built)
    built.start_relay("relay", topo.host("relay"), RELAY_ADDR)
    built.start_coord()
    key, _ = built.create_auth_key()
    for name in ("a1", "b1"):
        built.start_node(name, topo.host(name), key)
    built.wait_registered()
    found = built.wait_for_paths({("a1", "b1"): ("direct",), ("b1", "a1"): ("direct",)})
    assert len(found) == 2, f"no direct path both ways: {found}"
    return built


class Flows:
    """UDP trickles a1 → b1 and b1 → a1 through the tunnel, each stamped where it arrives."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.procs: list[tuple[object, subprocess.Popen]] = []
        self.receivers: dict[str, subprocess.Popen] = {}
        for src, dst, port in (("a1", "b1", 9002), ("b1", "a1", 9003)):
            dst_ns = mesh.nodes[dst].ns
            self.receivers[dst] = receiver(dst_ns, mesh.overlay(dst), port, TRICKLE_SECONDS)
            self.procs.append((dst_ns, self.receivers[dst]))
            sender, _ = trickle(mesh.nodes[src].ns, mesh.overlay(dst), port, TRICKLE_SECONDS)
            self.procs.append((mesh.nodes[src].ns, sender))

    def back_after(self, since: float) -> dict[str, float | None]:
        """Seconds from `since` to the first arrival after it, at each end (None: nothing came)."""
        out = {}
        for dst, proc in self.receivers.items():
            proc.terminate()
            stamps = [float(line) for line in proc.communicate(timeout=10)[0].split()]
            out[dst] = next((t - since for t in stamps if t > since), None)
        self.stop()
        return out

    def stop(self) -> None:
        for ns, proc in self.procs:
            ns.stop(proc)


def run_through(mesh: Mesh, event) -> tuple[float, dict[str, float | None]]:
    """Run the transfer and the trickles through `event()`, which returns when the new network
    was usable; returns that time and when traffic was back at b1 and at a1."""
    flows = Flows(mesh)
    usable: list[float] = []
    try:
        time.sleep(1.0)

        def during() -> None:
            time.sleep(2.0)
            usable.append(event())

        sent, received = transfer(mesh.nodes["a1"].ns, mesh.nodes["b1"].ns, mesh.overlay("b1"), size=SIZE,
                                  over=SECONDS, during=during)
        assert received.same_data(sent) and sent.bytes == SIZE, f"sent {sent}, received {received}"
        return usable[0], flows.back_after(usable[0])
    finally:
        flows.stop()


def run_hearing_coord(mesh: Mesh, topo: Topology, event) -> tuple[float, dict[str, float | None], float | None]:
    """`run_through`, and when the coord first heard a1 (a TCP segment with data) after the
    network was usable again, seen in the coord's namespace (None: not before the run's end)."""
    with TcpPayloads(topo.host("coord"), topo.addr("a"), COORD_ADDR, COORD_PORT) as coord_heard:
        usable, back = run_through(mesh, event)
    return usable, back, next((t - usable for t in coord_heard.stop() if t >= usable), None)


def test_a_node_that_moves_to_another_site_notices_at_once_and_comes_back(mesh: Mesh, topo: Topology) -> None:
    log = mesh.nodes["a1"].log
    moved_at: list[float] = []

    def move() -> float:
        moved_at.append(time.time())
        topo.move_host("a1", "c")
        return time.time()

    usable, back = run_through(mesh, move)
    noticed = logged_at(log, NOTICED, moved_at[0])
    coord_up = logged_at(log, COORD_UP, moved_at[0])
    public = mesh.status("a1")["self"]["public_endpoint"]
    print(f"move: {usable - moved_at[0]:.2f} s to move; noticed after {noticed - moved_at[0]:.2f} s; "
          f"coord link up {coord_up - usable:.2f} s after the new network was usable; "
          f"traffic back a1->b1 {back['b1']}, b1->a1 {back['a1']} s; public endpoint {public}")
    assert noticed - moved_at[0] < 1.0
    assert public.startswith(topo.addr("c") + ":"), "the new public endpoint was not learnt"
    assert coord_up - usable < 3.0
    # 1 s targets, with 0.5 s for a loaded 2-core machine: b1 roams to a1's new address with a1's
    # first authenticated packet from there, so the way back is as quick as the way out
    assert back["b1"] is not None and back["b1"] < 1.5
    assert back["a1"] is not None and back["a1"] < 1.5
    changes = mesh.peer("b1", "a1")["path_changes"]
    print("b1's path changes towards a1:", ", ".join(change["text"] for change in changes))
    # b1 either roams to a1's new address with a1's first packet from there (untimed: one direct
    # path for another), or falls back and punches again: the change that left the relay is timed
    # (it may be a TCP path, then UDP: one direct path for another, untimed)
    last = changes[-1]
    found = [change for change in changes if change["old"] == "relay" and change["new"] in ("direct", "lan", "tcp")]
    assert last["new"] == "direct" and (last["reason"] == "roamed" or (found and found[-1]["took"] is not None))
    [main] = [entry for entry in mesh.status("a1")["self"]["sockets"] if entry["socket"] == "main"]
    print(f"a1's main socket: {main}")
    assert main["rcvbuf"] > 0 and main["drops"] >= 0


class Outage:
    """a1's link taken away for 5 s under the transfer and the trickles (`run_through`), with when
    the coord heard a1 after it (`run_hearing_coord`); `noticed` is how long a1 took to log the
    link down."""

    def __init__(self, mesh: Mesh, topo: Topology, down: Callable[[], float], up: Callable[[], None]) -> None:
        went: list[float] = []

        def event() -> float:
            went.append(down())
            time.sleep(5.0)
            up()
            return time.time()

        self.usable, self.back, self.heard = run_hearing_coord(mesh, topo, event)
        self.log = mesh.nodes["a1"].log
        noticed = logged_at(self.log, re.compile(r"network changed: .*eth0 down"), went[0])
        self.noticed = None if noticed is None else round(noticed - went[0], 2)

    def check(self, mesh: Mesh) -> None:
        """Noticed within 1 s; traffic back both ways within 1 s of the link, and the coord hearing
        a1 within 1.5 s (1 s target, with 0.5 s for a loaded 2-core machine: the coord link does not
        wait for TCP's backed-off timers, node/tcpresume.py), its link connected."""
        assert self.noticed is not None and self.noticed < 1.0
        assert self.back["b1"] is not None and self.back["b1"] < 1.0
        assert self.back["a1"] is not None and self.back["a1"] < 1.0
        assert self.heard is not None and self.heard < 1.5
        assert wait_for(lambda: mesh.status("a1")["self"]["coord"] == "connected", 3.0, "a1's coord link")


def test_a_link_down_for_5s_and_back_keeps_the_transfer(mesh: Mesh, topo: Topology) -> None:
    ns = topo.host("a1")
    gateway = str(topo.site("a").lan.gateway)

    def down() -> float:
        went = time.time()
        ns.ip("link", "set", "eth0", "down")
        return went

    def up() -> None:
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "replace", "default", "via", gateway)  # as DHCP would: down took the route away

    outage = Outage(mesh, topo, down, up)
    noticed_up = logged_at(outage.log, re.compile(r"network changed: .*eth0 up"), outage.usable - 0.5)
    print(f"link flap: noticed down after {outage.noticed} s, up after "
          f"{noticed_up - (outage.usable - 0.5):.2f} s (upper bound); traffic back a1->b1 {outage.back['b1']}, "
          f"b1->a1 {outage.back['a1']} s; the coord heard a1 {outage.heard} s after the link")
    outage.check(mesh)

