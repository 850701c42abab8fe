"""A node on a network that lets nothing out but TCP to port 443 still reaches its peers, fast.

Hotel and office networks often drop UDP and every TCP port but 443. Here site `a` is such a
network (nftables on its router). The relay offers TLS on port 443 beside its usual UDP/TCP
port 7500: a1's relay link gets no answer over UDP and races a stream over plain TCP and TLS
beside it (`meshvpn.node.streamdial`); TLS wins, and a1 and b1 talk through the relay. The coord
either listens on port 443 itself, or on its usual port with a TLS listener on 443 that a1's
coord link races its plain port against.

The target is a relay path within 3 s of the node's start, or of a move onto such a network.
Measured on a 2-core machine under load average 13-17 (2026-12-05, eight runs from start, four
moves): 0.9-2.0 s from the daemon's first log line to its relay link up over TLS, 1.1-1.6 s from
the move; the interpreter's own start-up before the first line took 0.9-4.3 s more at that load,
and is not counted. The tests assert the 3 s target: the worst figure seen times 1.5.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.timing import logged_at
from meshvpn.lab.transfer import transfer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
TLS_PORT = 443
RELAY_WITHIN = 3.0
"""Seconds from the node's start (or its move) to a ready relay link: the project's target."""
POLL = 0.05


RELAYED_OVER = "home relay: relay over {}"
"""What the daemon logs when its relay link comes up over a transport (`meshvpn.node.relay`)."""


def relay_link(mesh: Mesh, name: str, transport: str | None = None) -> dict | None:
    """`name`'s first ready relay link (over `transport`, if given), or None."""
    return next((r for r in mesh.status(name)["self"]["relays"]
                 if r["ready"] and transport in (None, r["transport"])), None)


def relayed_after(mesh: Mesh, name: str, since: float, transport: str) -> float:
    """Wait for `name`'s relay link over `transport`; the seconds from `since` (wall clock) to the
    daemon's log line saying so (status is polled, so it would add up to a poll of delay)."""
    wait_for(lambda: relay_link(mesh, name, transport), 25, f"{name}'s relay link over {transport}", poll=POLL)
    up = logged_at(mesh.nodes[name].log, re.compile(re.escape(RELAYED_OVER.format(transport))), since)
    assert up is not None, f"{name} logged no relay link over {transport}"
    return up - since


@pytest.mark.parametrize("coord_over", ["port-443", "tls"])
def test_a_site_that_lets_out_only_port_443_is_relayed_over_tls(topo: Topology, tmp_path: Path,
                                                                 meshes: list[Mesh], coord_over: str) -> None:
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=NatKind.PORT_443_ONLY)
    topo.add_site("b", nat=NatKind.RANDOM_PORTS)
    if coord_over == "tls":
        mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
        mesh.coord_tls_port = TLS_PORT
    else:
        mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR, coord_port=TLS_PORT)
    meshes.append(mesh)
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, tls_port=TLS_PORT)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    spawned = time.time()
    mesh.start_node("a1", topo.host("a1"), key)
    # UDP gets no ack within 0.5 s: plain TCP to 7500 and, 0.25 s later, TLS on 443 race; TLS wins.
    wait_for(lambda: mesh.nodes["a1"].log.stat().st_size, 25, "a1's first log line", poll=POLL)
    started = logged_at(mesh.nodes["a1"].log, re.compile("."), spawned)
    took = relayed_after(mesh, "a1", started, "tls")
    print(f"a1's relay link up over TLS {took:.2f} s after the daemon started "
          f"({started - spawned:.2f} s after it was spawned: the interpreter's start-up)")
    assert took < RELAY_WITHIN, f"relayed {took:.2f} s after start"
    mesh.start_node("b1", topo.host("b1"), key)
    mesh.wait_registered()
    assert mesh.status("b1")["self"]["relays"][0]["transport"] == "udp"
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=20)
    assert len(found) == 2
    sent, received = transfer(mesh.nodes["a1"].ns, mesh.nodes["b1"].ns, mesh.overlay("b1"), size=1 << 20, over=1.0)
    assert received.same_data(sent) and sent.bytes == 1 << 20, f"sent {sent}, received {received}"
    assert "TLS connected" in mesh.nodes["a1"].log.read_text()
    checked = mesh.nodes["a1"].ns.run([sys.executable, "-m", "meshvpn", "netcheck", "-c", str(mesh.nodes["a1"].config)],
                                      check=False, timeout=60).stdout
    assert "relay relay: udp unreachable, tcp unreachable, tls " in checked and "tls unreachable" not in checked, checked
    expected = f"{COORD_ADDR}:{TLS_PORT}"
    assert mesh.status("a1")["self"]["coord_address"] == expected, mesh.status("a1")["self"]["coord_address"]


def test_a_node_on_udp_stays_on_udp_and_a_move_to_a_port_443_only_network_is_relayed_within_3s(
        topo: Topology, tmp_path: Path, meshes: list[Mesh]) -> None:
    """a1 starts where UDP works: its relay link is on UDP and opens no stream. It moves to a
    network that lets only port 443 out: relayed over TLS within 3 s. It moves back: UDP again."""
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=NatKind.PORT_PRESERVING)
    topo.add_site("h", nat=NatKind.PORT_443_ONLY, hosts=0)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR, coord_port=TLS_PORT)
    meshes.append(mesh)
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, tls_port=TLS_PORT)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    mesh.start_node("a1", topo.host("a1"), key)
    wait_for(lambda: relay_link(mesh, "a1", "udp"), 20, "a1's relay link over UDP", poll=POLL)
    time.sleep(2.0)  # hellos every 2 s: a second one answered, still no stream
    assert relay_link(mesh, "a1", "udp") is not None, mesh.status("a1")["self"]["relays"]
    log = mesh.nodes["a1"].log
    assert "relay relay: no answer over UDP" not in log.read_text(), "a link whose UDP works raced a stream"

    moved = time.time()
    topo.move_host("a1", "h")
    took = relayed_after(mesh, "a1", moved, "tls")
    print(f"a1's relay link up over TLS {took:.2f} s after its move to a port-443-only network")
    assert took < RELAY_WITHIN, f"relayed {took:.2f} s after the move"

    moved = time.time()
    topo.move_host("a1", "a")
    took = relayed_after(mesh, "a1", moved, "udp")
    print(f"a1's relay link back on UDP {took:.2f} s after its move back")
    assert took < RELAY_WITHIN, f"back on UDP {took:.2f} s after the move"
