"""The coord comes and goes under traffic, with real daemons behind NATs (issues 12 and 16).

Stage 1: the coord is killed (SIGKILL) while a1 sends b1 a checksummed TCP stream; ten
seconds later it is started again. Every node is back on it within 5 s of it answering, and c1,
started during the outage, joins as soon. Stage 2: two coord instances share a throwaway
PostgreSQL, a1 and b1 know them as [coord, coord2] and register on instance 1 (the pre-auth key
made there), c1 as [coord2, coord]; instance 1 is killed under traffic and a1 and b1 register on
instance 2 within seconds, while the a1-b1 tunnel stays direct and the stream arrives intact.
Before that, a1 (on instance 1) and c1 (on instance 2) punch a direct path to each other: punches
cross instances. Each test prints its figures (`docs/coordination.md`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.transfer import transfer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD, COORD2 = "203.0.113.10", "203.0.113.12"
ONE, TWO = f"{COORD}:7400", f"{COORD2}:7400"
BACK_WITHIN = 5.0
"""Seconds from the coord answering again until every node is registered (issue 12's target)."""
MOVED_WITHIN = 10.0
"""Seconds from an instance's death until its nodes are registered on the other (issue 16 says 30;
the link passes to the next address at once, about a second here, so 10 leaves a loaded
machine's margin while still failing a link that waits for a backoff or a silence timeout)."""
OUTAGE = 10.0
STREAM = 8 << 20
"""Bytes a1 sends b1, paced over the event (`over`), so that it is under way throughout."""
POLL = 0.05


def on_coord(mesh: Mesh, name: str, address: str | None = None) -> bool:
    me = mesh.status(name)["self"]
    return me["coord"] == "connected" and bool(me["overlay"]) and (
        address is None or me.get("coord_address") == address)


def stream_a1_to_b1(mesh: Mesh, seconds: float, during: Callable[[], None]) -> None:
    sent, received = transfer(mesh.nodes["a1"].ns, mesh.nodes["b1"].ns, mesh.overlay("b1"), size=STREAM,
                              over=seconds, during=during)
    assert received.same_data(sent) and sent.bytes == STREAM, f"sent {sent}, received {received}"


def direct(mesh: Mesh, source: str = "a1", peer: str = "b1") -> None:
    assert any(mesh.nudge(source, peer) for _ in range(5)), mesh.logs()
    wait_for(lambda: mesh.peer(source, peer)["path"] == "direct", 15, f"a direct path {source} -> {peer}")


def coord_and_sites(topo: Topology, tmp_path: Path, meshes: list[Mesh],
                    database: str | None = None) -> tuple[Mesh, str]:
    """Sites a, b and c behind port-preserving NATs, the coord (and coord2 on a shared `database`),
    and a reusable pre-auth key made on the first instance."""
    for site in ("a", "b", "c"):
        topo.add_site(site)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD, log_level="info")
    meshes.append(mesh)
    mesh.database = database
    mesh.start_coord()
    if database is not None:
        topo.add_server("coord2", addrs=[COORD2])
        mesh.start_coord_instance("coord2", topo.host("coord2"), COORD2)
    return mesh, mesh.create_auth_key()[0]


def test_nodes_are_back_within_5s_of_the_coord_restarting_under_traffic(topo: Topology, tmp_path: Path,
                                                                         meshes: list[Mesh]) -> None:
    mesh, key = coord_and_sites(topo, tmp_path, meshes)
    for name in ("a1", "b1"):
        mesh.start_node(name, topo.host(name), key)
    mesh.wait_registered()
    direct(mesh)
    figures: dict[str, float] = {}

    def outage() -> None:
        mesh.kill_coord()
        killed = time.monotonic()
        for name in ("a1", "b1"):
            wait_for(lambda n=name: mesh.status(n)["self"]["coord"] == "disconnected", 5, f"{name} to see it")
        mesh.start_node("c1", topo.host("c1"), key)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed)))
        spawned = time.monotonic()
        mesh.start_coord()  # returns once the coord answers on its admin socket (it listens before)
        answering = time.monotonic()
        figures["coord start-up"] = answering - spawned
        while len(figures) < 4 and time.monotonic() - answering < BACK_WITHIN + 10:
            for name in ("a1", "b1", "c1"):
                if name not in figures and on_coord(mesh, name):
                    figures[name] = time.monotonic() - answering
            time.sleep(POLL)

    stream_a1_to_b1(mesh, OUTAGE + 8, outage)
    print(f"coord killed, restarted after {OUTAGE:.0f} s; from its admin socket answering, back after: "
          + ", ".join(f"{name} {took:.2f} s" for name, took in figures.items()))
    assert len(figures) == 4 and max(figures[n] for n in ("a1", "b1", "c1")) < BACK_WITHIN, \
        f"{figures}\n{mesh.logs()}"
    wait_for(lambda: len(mesh.status("c1")["peers"]) == 2, 10, "c1 to learn its peers")
    assert mesh.peer("a1", "b1")["path"] == "direct"


def test_nodes_move_to_the_other_instance_when_theirs_is_killed_under_traffic(
        topo: Topology, tmp_path: Path, meshes: list[Mesh], postgres_dsn: str) -> None:
    mesh, key = coord_and_sites(topo, tmp_path, meshes, postgres_dsn)  # c1 joins with the key on instance 2
    mesh.start_node("a1", topo.host("a1"), key, coords=[COORD, COORD2])
    mesh.start_node("b1", topo.host("b1"), key, coords=[COORD, COORD2])
    mesh.start_node("c1", topo.host("c1"), key, coords=[COORD2, COORD])
    mesh.wait_registered()
    assert on_coord(mesh, "a1", ONE) and on_coord(mesh, "b1", ONE) and on_coord(mesh, "c1", TWO)
    direct(mesh)
    started = time.monotonic()
    direct(mesh, "a1", "c1")  # a punch across instances
    print(f"a1 (instance 1) -> c1 (instance 2) direct after {time.monotonic() - started:.2f} s")
    paths: list[str | None] = []
    figures: dict[str, float] = {}

    def kill_instance_one() -> None:
        time.sleep(2.0)
        mesh.kill_coord()
        moving = time.monotonic()
        while time.monotonic() - moving < MOVED_WITHIN + 10:
            paths.append(mesh.peer("a1", "b1")["path"])
            for name in ("a1", "b1"):
                if name not in figures and on_coord(mesh, name, TWO):
                    figures[name] = time.monotonic() - moving
            if len(figures) == 2:
                break
            time.sleep(POLL)
        for _ in range(40):
            paths.append(mesh.peer("a1", "b1")["path"])
            time.sleep(0.1)

    stream_a1_to_b1(mesh, 10, kill_instance_one)
    print(f"instance 1 killed: registered on instance 2 after "
          + ", ".join(f"{name} {took:.2f} s" for name, took in figures.items())
          + f"; a1 -> b1 path polled {len(paths)} times: {sorted(set(map(str, paths)))}")
    assert set(figures) == {"a1", "b1"} and max(figures.values()) < MOVED_WITHIN, f"{figures}\n{mesh.logs()}"
    assert set(paths) == {"direct"}, "the tunnel never left its direct path"
    assert on_coord(mesh, "c1", TWO), "c1's instance was never touched"
    for name in ("a1", "b1"):
        wait_for(lambda n=name: mesh.peer("c1", n)["online"], 5, f"c1 to see {name} online on its instance")
