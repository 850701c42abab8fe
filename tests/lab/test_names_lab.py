"""A relay announced by DNS name: the node resolves it with its own resolver and uses it.

The lab's namespaces share the host's /etc/hosts, so the only name that can be told apart
without touching the host is `localhost`, which each namespace resolves to its own loopback.
The relay therefore runs in a1's namespace, and the coord announces it as `localhost:7500`:
a1 must resolve that name itself (the coord never does) and get its relay ready over it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

COORD_ADDR = "203.0.113.10"


def test_a_relay_announced_by_name_is_resolved_by_the_node(topo: Topology, tmp_path: Path,
                                                             meshes: list[Mesh]) -> None:
    topo.add_site("a")
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.start_relay("byname", topo.host("a1"), "0.0.0.0", announce="localhost")
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    mesh.start_node("a1", topo.host("a1"), key)
    mesh.wait_registered()

    def relay():
        [entry] = mesh.status("a1")["self"]["relays"]
        return entry if entry["ready"] else None

    entry = wait_for(relay, 20, "a1's relay announced as localhost to be ready")
    assert entry["name"] == "byname" and entry["address"] == "127.0.0.1:7500"
    assert "byname (localhost) resolves to 127.0.0.1" in (tmp_path / "a1.log").read_text()
