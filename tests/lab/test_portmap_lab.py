"""Router port mapping through the real daemon, against Debian's miniupnpd (`meshvpn.lab.upnp`).

The world: a coord (with STUN) and a relay, an RFC 5780 STUN server (coturn on two addresses)
that miniupnpd checks its external address with, and two sites behind random-port NATs, the
pair that relays without help. Site `a`'s router also runs miniupnpd, which serves UPnP IGD,
NAT-PMP and PCP; a1 maps its UDP port with one of them, announces the mapped endpoint, and
b1 reaches it directly through the mapping. When the daemon stops the mapping is deleted; when
the router restarts, a1 maps again at once.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import COORD_PORT, Mesh, wait_for
from meshvpn.lab.netns import python_command
from meshvpn.lab.upnp import UPNP_ROUTER, UPNP_TABLE, add_stun_server

from test_relay_lab import COORD_ADDR, RELAY_ADDR

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

DIRECT = ("direct",)
RESTART_AFTER = 4.0
"""Seconds the router runs with a1's mapping before it restarts."""


@pytest.fixture
def world(topo: Topology, tmp_path: Path, meshes: list[Mesh]):
    """Build the world with a1 allowed the given port-mapping protocols; returns the mesh. Site
    a's router maps ports (`nat_a`: `UPNP_ROUTER` or a variant), site b has NAT `nat_b`."""

    def make(protocols: list[str], nat_a=UPNP_ROUTER, nat_b=NatKind.RANDOM_PORTS, hosts_a: int = 1,
             before=None, coord_port: int = COORD_PORT) -> Mesh:
        """`hosts_a` hosts on site a; `before()` runs once the sites are up, before any daemon; the
        coord on `coord_port` (443 for a site that lets out only TCP to port 443)."""
        add_stun_server(topo, tmp_path)
        topo.add_server("relay", addrs=[RELAY_ADDR])
        topo.add_site("a", nat=nat_a, hosts=hosts_a)
        topo.add_site("b", nat=nat_b)
        if before is not None:
            before()
        mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR, coord_port=coord_port)
        meshes.append(mesh)
        mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR)
        mesh.start_coord()
        key, _ = mesh.create_auth_key()
        mesh.start_node("a1", topo.host("a1"), key, sections={"portmap": {"protocols": protocols}})
        mesh.start_node("b1", topo.host("b1"), key)
        mesh.wait_registered()
        return mesh

    return make


def mapping_of(mesh: Mesh) -> dict:
    return mesh.status("a1")["self"]["port_mapping"]


def mapping_and_expiry(mesh: Mesh) -> tuple[dict, float]:
    """a1's mapping, and when it expires on this process's clock (infinity without a lifetime):
    each end of the status request is within its duration of the daemon's `now` (on a loaded
    machine, most of a second), so the middle stands for it and two expiries compare to within a second."""
    asked = time.monotonic()
    mapping = mapping_of(mesh)
    left = mapping["expires_in"]
    return mapping, math.inf if left is None else (asked + time.monotonic()) / 2 + left


def renewed(mesh: Mesh, expired: float) -> dict | None:
    """a1's mapping once a grant made since gave it a lifetime that ends well after `expired`, else None."""
    mapping, expires = mapping_and_expiry(mesh)
    return mapping if mapping["expires_in"] is not None and expires > expired + RESTART_AFTER / 2 else None


def upnp_rules(topo: Topology) -> str:
    return topo.host("a").run(["nft", "list", "chain", "inet", UPNP_TABLE, "prerouting_miniupnpd"]).stdout


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp", "upnp"])
def test_a_mapped_random_port_site_goes_direct_and_deletes_its_mapping_on_exit(world, topo, protocol) -> None:
    mesh = world([protocol])
    wait_for(lambda: mapping_of(mesh)["state"] == "mapped", 10, f"a1 to map its port with {protocol}")
    mapping = mapping_of(mesh)
    assert mapping["protocol"] == protocol
    router = topo.addr("a")
    assert mapping["external"].startswith(router + ":")
    assert "dnat" in upnp_rules(topo)
    wait_for(lambda: any(e.endswith("(mapped)") for p in json.loads(mesh.cli("b1", "peers", "--json").stdout)["peers"]
                         for e in p["endpoints"]), 10, "b1 to learn a1's mapped endpoint")
    found = mesh.wait_for_paths({("a1", "b1"): DIRECT, ("b1", "a1"): DIRECT}, timeout=15)
    assert len(found) == 2, "no direct path through the mapping"
    assert mesh.peer("b1", "a1")["endpoint"] == mapping["external"]
    a1 = mesh.nodes["a1"]
    a1.ns.stop(a1.proc)
    deadline = time.monotonic() + 5
    while "dnat" in upnp_rules(topo) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "dnat" not in upnp_rules(topo), "the mapping outlived the daemon"


def test_netcheck_reports_the_mapping_protocol(world, topo) -> None:
    mesh = world(["pcp", "nat-pmp", "upnp"])
    wait_for(lambda: mapping_of(mesh)["state"] == "mapped", 10, "a1 to map its port")
    assert mapping_of(mesh)["protocol"] == "pcp"
    netcheck = python_command("meshvpn", "netcheck", "-c", str(mesh.dir / "a1.yaml"))
    a1 = mesh.nodes["a1"]
    report = json.loads(a1.ns.run([*netcheck, "--json"], timeout=30).stdout)["port_mapping"]
    assert report["available"] == ["pcp", "nat-pmp", "upnp"] and report["gateway"] == str(topo.site("a").lan.gateway)
    assert report["daemon"]["protocol"] == "pcp"
    text = a1.ns.run(netcheck, timeout=30).stdout
    assert "port mapping: pcp, nat-pmp, upnp" in text
    assert f"port mapping in use: {report['daemon']['external']} via pcp" in text


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp"])
def test_a_router_that_restarts_is_asked_again_at_once(world, topo, protocol) -> None:
    """miniupnpd restarted forgets the mapping; the epoch of its announcement after the restart
    (PCP's ANNOUNCE, NAT-PMP's external address, both to 224.0.0.1:5350) has a1 map again long
    before the renewal (an hour away), with whichever of the two it maps through."""
    mesh = world([protocol])
    wait_for(lambda: mapping_of(mesh)["state"] == "mapped", 10, "a1 to map its port")
    before, expires_before = mapping_and_expiry(mesh)
    assert before["gateway_restarts"] == 0 and "dnat" in upnp_rules(topo)
    # A router that restarts within a second or two of its start sets its epoch back by less than
    # the RFCs' slack, which no client can tell from clock drift: let it run a few seconds first.
    time.sleep(RESTART_AFTER)
    UPNP_ROUTER.restart(topo.host("a"))
    wait_for(lambda: mapping_of(mesh)["gateway_restarts"] == 1, 10, "a1 to see the router's restart")
    wait_for(lambda: "dnat" in upnp_rules(topo), 5, "the mapping to be made again")
    # The router's rule may be there before a1 has read the new grant (a restarted miniupnpd can
    # find its old rule in place): a new lifetime, from the new grant on, ends at least
    # RESTART_AFTER later than the first.
    after = wait_for(lambda: renewed(mesh, expires_before), 5, "a1 to hold the new grant's lifetime")
    assert after["state"] == "mapped" and after["protocol"] == protocol and after["external"] == before["external"]
