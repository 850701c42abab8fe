"""A pair whose path ends on a pinned socket is carried by the native thread, both ways.

Site `a` is behind a sequential NAT, site `b` behind a port-preserving one: `a1` samples its NAT's
next port from an extra socket and punches from that socket, so its path to `b1` ends there (a
pinned socket, `meshvpn/node/mappings.py`). The native thread serves it as it serves the main
socket (`docs/dataplane.md`, "Pinned sockets"): a checksummed transfer each way is sealed and
opened by `a1`'s thread, not handed to Python, which would see every datagram.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.transfer import transfer

from test_relay_lab import two_site_mesh

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

SIZE = 1 << 20
"""Bytes each way: about 750 datagrams of the tunnel's MTU."""
NATIVE = 600
"""Datagrams `a1`'s thread must seal (and open) itself for the transfer, of the ~750 it takes."""


def native_totals(mesh: Mesh) -> dict:
    return mesh.status("a1")["self"]["native_loop"]


def test_a_pinned_path_is_sealed_and_opened_by_the_native_thread(topo: Topology, tmp_path: Path,
                                                                 meshes: list[Mesh]) -> None:
    mesh = two_site_mesh(topo, tmp_path, NatKind.SEQUENTIAL, NatKind.PORT_PRESERVING)
    meshes.append(mesh)
    found = mesh.wait_for_paths({("a1", "b1"): ("direct",), ("b1", "a1"): ("direct",)}, timeout=30)
    assert len(found) == 2, "the pair went direct"
    wait_for(lambda: (mesh.peer("a1", "b1")["socket"] or "").startswith("pinned"), 10,
             "a1's path to b1 on the socket it punched from")
    if "native_loop" not in mesh.status("a1")["self"]:
        pytest.skip("meshvpn._fastpath was not built: no native thread")
    before = native_totals(mesh)
    sent, received = transfer(mesh.nodes["a1"].ns, mesh.nodes["b1"].ns, mesh.overlay("b1"), size=SIZE)
    assert received.same_data(sent) and sent.bytes == SIZE, f"a1 → b1: sent {sent}, received {received}"
    sent, received = transfer(mesh.nodes["b1"].ns, mesh.nodes["a1"].ns, mesh.overlay("a1"), size=SIZE)
    assert received.same_data(sent) and sent.bytes == SIZE, f"b1 → a1: sent {sent}, received {received}"
    after = native_totals(mesh)
    grew = {name: after.get(name, 0) - before.get(name, 0)
            for name in ("sealed natively", "opened natively", "handed to python")}
    assert (mesh.peer("a1", "b1")["socket"] or "").startswith("pinned"), "the path stayed on the pinned socket"
    assert grew["sealed natively"] >= NATIVE and grew["opened natively"] >= NATIVE, grew
    assert grew["handed to python"] < NATIVE // 4, f"Python sees a few probes and keepalives, not the data: {grew}"
