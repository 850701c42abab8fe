"""Mesh names end to end: real daemons in namespaces answer `dig` for their peers from the peer map.

Three sites behind NATs, one node each (alice, bob, carol) in network `lab`. alice's responder
on her overlay address answers bob's long and short names, to a `dig` on her own machine and
to one across the mesh from bob; an unknown name gets NXDOMAIN, a name outside the mesh is
refused. Once the coord revokes carol, her name stops answering within two seconds.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
NODES = {"alice": "a1", "bob": "b1", "carol": "c1"}
LEAVE_WITHIN = 2.0
"""Seconds a revoked node's name may keep answering."""


@pytest.fixture
def mesh(topo: Topology, tmp_path: Path, meshes: list[Mesh]) -> Mesh:
    for site in ("a", "b", "c"):
        topo.add_site(site)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name, host in NODES.items():
        mesh.start_node(name, topo.host(host), key)
    mesh.wait_registered()
    return mesh


def dig(topo: Topology, host: str, server: str, name: str) -> tuple[str, list[str]]:
    """`dig @server name A` run on `host`: (status, addresses in the answer section)."""
    done = topo.host(host).run(["dig", "+tries=3", "+time=1", f"@{server}", name, "A"], timeout=15)
    status = re.search(r"status: ([A-Z]+)", done.stdout)
    assert status is not None, done.stdout
    answers = re.findall(r"^\S+\s+\d+\s+IN\s+A\s+(\S+)$", done.stdout, re.MULTILINE)
    return status.group(1), answers


def test_dig_answers_peer_names_and_forgets_a_revoked_node(mesh: Mesh, topo: Topology) -> None:
    alice = mesh.overlay("alice")
    wait_for(lambda: mesh.status("alice")["self"]["dns"] == f"{alice}:53", 10, "alice to answer DNS")
    wait_for(lambda: len(mesh.status("alice")["peers"]) == 2, 10, "alice to know both peers")
    bob, carol = mesh.overlay("bob"), mesh.overlay("carol")

    assert dig(topo, "a1", alice, f"bob.{mesh.network}.mesh") == ("NOERROR", [bob]), mesh.logs()
    assert dig(topo, "a1", alice, "bob") == ("NOERROR", [bob])
    assert dig(topo, "a1", alice, "alice") == ("NOERROR", [alice])
    assert dig(topo, "a1", alice, f"carol.{mesh.network}.mesh") == ("NOERROR", [carol])
    assert dig(topo, "a1", alice, f"dave.{mesh.network}.mesh") == ("NXDOMAIN", [])
    assert dig(topo, "a1", alice, "example.com")[0] == "REFUSED"

    assert any(mesh.nudge("bob", "alice") for _ in range(5)), mesh.logs()
    assert dig(topo, "b1", alice, f"carol.{mesh.network}.mesh") == ("NOERROR", [carol]), "across the mesh"

    mesh.admin("nodes", "revoke", "carol")
    revoked = time.monotonic()
    wait_for(lambda: dig(topo, "a1", alice, f"carol.{mesh.network}.mesh")[0] == "NXDOMAIN",
             LEAVE_WITHIN, "carol's name to stop answering", poll=0.1)
    gone = time.monotonic() - revoked
    assert gone <= LEAVE_WITHIN + 0.5, f"carol answered for {gone:.1f}s after the revocation"
    assert dig(topo, "a1", alice, "carol")[0] == "REFUSED"
    assert dig(topo, "a1", alice, "bob") == ("NOERROR", [bob]), "the others keep their names"
