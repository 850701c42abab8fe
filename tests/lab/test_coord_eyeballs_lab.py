"""The coord by name, in both families, through the real daemon on a dual-stack lab.

Each node's namespace has its own hosts file (`Namespace.set_hosts`; the machine's stays as it
is). a1 knows the coord by a name with only an AAAA record and registers over IPv6. b1 knows it
by a name with both records while its site's IPv6 is broken (routes present, every packet
dropped): its IPv6 attempt hangs, the IPv4 one starts 250 ms later (RFC 8305) and b1 registers
within 1 s of its first attempt, measured in b1's own log, not after a TCP connect timeout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshvpn.lab import Lab, NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.timing import logged_at

from test_relay_lab import COORD_ADDR

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

REGISTER_LIMIT = 1.0
"""Seconds from b1's first attempt to its registration over IPv4 (issue 17: a short delay, not a timeout)."""


def test_a_coord_named_by_aaaa_only_is_reached_and_broken_ipv6_costs_only_the_stagger(
        lab: Lab, tmp_path: Path, meshes: list[Mesh]) -> None:
    topo = Topology(lab, ipv6=True)
    topo.add_server("coord", addrs=[COORD_ADDR])
    topo.add_site("a", nat=NatKind.PORT_PRESERVING)
    topo.add_site("b", nat=NatKind.PORT_PRESERVING)
    coord6 = topo.addr6("coord")
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.coord_ipv6 = coord6
    mesh.start_coord()
    key, _ = mesh.create_auth_key()

    topo.host("a1").set_hosts({"coord6.meshvpn.test": [coord6]})
    topo.host("b1").set_hosts({"coord.meshvpn.test": [coord6, COORD_ADDR]})
    topo.set_ipv6_broken("b", True)
    mesh.start_node("a1", topo.host("a1"), key, coords=["coord6.meshvpn.test"])
    mesh.start_node("b1", topo.host("b1"), key, coords=["coord.meshvpn.test"])
    mesh.wait_registered(["a1", "b1"])

    assert mesh.status("a1")["self"]["coord_address"] == f"[{coord6}]:{mesh.coord_port}"
    assert mesh.status("b1")["self"]["coord_address"] == f"{COORD_ADDR}:{mesh.coord_port}"
    log = mesh.dir / "b1.log"
    raced = logged_at(log, re.compile(rf"racing for the coord at \[{re.escape(coord6)}\]:\d+, {COORD_ADDR}:"), 0)
    registered = wait_for(lambda: logged_at(log, re.compile(r"registered through the coord at "), 0), 5,
                          "b1's log of its registration")
    assert raced is not None, log.read_text()[-3000:]
    print(f"b1 registered over IPv4 {registered - raced:.3f} s after its first attempt (IPv6 broken)")
    assert registered - raced <= REGISTER_LIMIT
