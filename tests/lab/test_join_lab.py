"""A newcomer's journey: three friends join with `meshvpn join` alone, and one leaves.

Stage 1: a coord on the simulated internet prints a join string (`meshvpn coord key create`).
Three machines, each behind its own NAT, run `meshvpn join --key STRING --name NAME` (no YAML
written by hand, no key copied) and start the daemon the way join says to. Stage 2: they
reach each other through the tunnel. Stage 3: running join again on a joined machine changes
no file and leaves its daemon as it was. Stage 4: `meshvpn leave` (the daemon stopped first)
has the coord forget the node, removes its config and key, and its peers see it go.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshvpn import timestamps
from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

COORD_ADDR = "203.0.113.10"
NAMES = ("a1", "b1", "c1")


def joins_files(root: Path) -> list[Path]:
    """The files under a joined machine's `root` but the running daemon's record of initiation
    timestamps, which it writes whenever a handshake changed it (at most every 10 s), join or not."""
    return sorted(path for path in root.rglob("*") if path.is_file() and path.name != timestamps.FILE_NAME)


def test_three_friends_join_with_one_command_each_and_one_leaves(topo: Topology, tmp_path: Path,
                                                                   meshes: list[Mesh]) -> None:
    for site in ("a", "b", "c"):
        topo.add_site(site)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.start_coord()
    join, printed = mesh.create_join_string()
    assert "meshvpn join" in printed.stdout

    for name in NAMES:
        done = mesh.join_node(name, topo.host(name), join)
        assert f"coordination server {COORD_ADDR}:7400 answered with the pinned key" in done.stdout
    mesh.wait_registered()
    for src, dst in (("a1", "b1"), ("b1", "c1"), ("c1", "a1")):
        assert any(mesh.nudge(src, dst) for _ in range(5)), f"{src} cannot reach {dst}\n{mesh.logs()}"

    root = tmp_path / "a1-root"
    files = joins_files(root)
    before = [(path, path.read_bytes(), path.stat().st_mtime_ns) for path in files]
    overlay = mesh.overlay("a1")
    again = mesh.join_again("a1", topo.host("a1"), join)
    assert "nothing changed" in again.stdout
    assert [(path, path.read_bytes(), path.stat().st_mtime_ns) for path in files] == before
    assert joins_files(root) == files
    assert mesh.overlay("a1") == overlay and mesh.nodes["a1"].proc.poll() is None

    left = mesh.leave_node("c1")
    assert f"the coordination server at {COORD_ADDR}:7400 forgot this node" in left.stdout
    assert "left: removed" in left.stdout
    assert not (tmp_path / "c1-root/etc/meshvpn/node.yaml").exists()
    assert not (tmp_path / "c1-root/etc/meshvpn/node.key").exists()
    wait_for(lambda: "c1" not in [p["name"] for p in mesh.status("a1")["peers"]], 20, "a1 to forget c1")
    listed = json.loads(mesh.admin("nodes", "list", "--json").stdout)["nodes"]
    assert sorted(node["name"] for node in listed) == ["a1", "b1"]
    assert any(mesh.nudge("a1", "b1") for _ in range(5)), "a1 lost b1 when c1 left"
