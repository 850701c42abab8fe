"""The product end to end: real daemons behind nftables NATs in namespaces, a real coord.

Stage 1: a coord on the simulated internet, three sites each behind a port-preserving NAT
with one node, and a fourth site with two nodes behind one NAT.  Every daemon joins with a
pre-auth key.  Stage 2: they ping and copy a file over direct paths, and the two neighbours
use the LAN.  Stage 3: a capture on a site's internet link never shows the plaintext.
Stage 4: the coord stops, tunnels keep working; it comes back and every node re-registers.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from meshvpn.lab import Topology, python_command
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.netns import _child_env
from meshvpn.timestamps import FILE_NAME, WRITE_INTERVAL, TimestampFile

from test_relay_lab import capture_marker, copy_a1_to_b1

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

COORD_ADDR = "203.0.113.10"
NAMES = ("a1", "b1", "c1", "d1", "d2")
MARKER = b"MESHVPN-PLAINTEXT-MARKER-7f3a"

@pytest.fixture
def mesh(topo: Topology, tmp_path: Path, meshes: list[Mesh]) -> Mesh:
    for site in ("a", "b", "c"):
        topo.add_site(site)
    topo.add_site("d", hosts=2)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name in NAMES:
        mesh.start_node(name, topo.host(name), key)
    mesh.wait_registered()
    return mesh


def ping_over(mesh: Mesh, src: str, dst: str) -> bool:
    return any(mesh.nudge(src, dst) for _ in range(5))


def test_three_nats_direct_paths_file_transfer_status_and_lan(mesh: Mesh, topo: Topology) -> None:
    for src, dst in (("a1", "b1"), ("b1", "c1"), ("c1", "a1")):
        assert ping_over(mesh, src, dst), f"{src} cannot reach {dst}\n{mesh.logs()}"
    for src, dst in (("a1", "b1"), ("b1", "a1"), ("b1", "c1"), ("c1", "a1")):
        wait_for(lambda: mesh.peer(src, dst)["path"] == "direct", 10, f"direct path {src} -> {dst}")
        assert mesh.peer(src, dst)["endpoint"].startswith(topo.addr(dst[0]) + ":")

    status = mesh.status("a1")
    b1 = next(p for p in status["peers"] if p["name"] == "b1")
    assert b1["path"] == "direct" and b1["rx_bytes"] > 0 and b1["tx_bytes"] > 0
    assert b1["last_handshake"] is not None
    text = mesh.cli("a1", "status").stdout
    assert "b1" in text and "direct" in text
    listed = mesh.cli("a1", "peers").stdout.splitlines()
    assert sorted(line.split()[1] for line in listed) == sorted(set(NAMES) - {"a1"})
    assert any(line.split()[0] == mesh.overlay("b1") for line in listed)

    copy_a1_to_b1(mesh, 4 << 20)
    if mesh.status("b1")["self"]["data_path"] == "native":  # the native threads sealed it, opened it and counted it
        # a status folds the thread's counts in first: they are there at once, not a timer later
        assert mesh.status("a1")["self"]["native_loop"]["sealed natively"] > 3000
        assert mesh.status("b1")["self"]["native_loop"]["opened natively"] > 3000
        assert mesh.peer("b1", "a1")["rx_bytes"] > 4 << 20
        assert mesh.peer("a1", "b1")["tx_bytes"] > 4 << 20

    pong = mesh.cli("a1", "ping", "c1", "-c", "2").stdout
    assert "pong from c1" in pong and "via direct" in pong

    assert ping_over(mesh, "d1", "d2")
    wait_for(lambda: mesh.peer("d1", "d2")["path"] == "lan", 10, "LAN path between neighbours")
    assert mesh.peer("d1", "d2")["endpoint"].startswith(topo.addr("d2") + ":")


def test_internet_link_never_carries_plaintext(mesh: Mesh, topo: Topology) -> None:
    assert ping_over(mesh, "a1", "b1")
    data = capture_marker(topo.host("a"), "wan0", ["udp"], mesh, MARKER, mesh.dir / "wan.pcap")
    assert len(data) > 20 * len(MARKER), "the capture saw the tunnel traffic"
    assert MARKER not in data


def test_tunnels_survive_the_coord_and_nodes_reregister(mesh: Mesh) -> None:
    assert ping_over(mesh, "a1", "b1")
    mesh.stop_coord()
    wait_for(lambda: mesh.status("a1")["self"]["coord"] == "disconnected", 60, "a1 to notice the coord is gone")
    assert ping_over(mesh, "a1", "b1") and ping_over(mesh, "b1", "a1")
    assert len(mesh.status("a1")["peers"]) == 4, "peers kept while the coord is away"
    mesh.start_coord()
    for name in ("a1", "b1", "c1"):
        wait_for(lambda n=name: mesh.status(n)["self"]["coord"] == "connected", 45, f"{name} to re-register")
    assert ping_over(mesh, "c1", "b1")
    records = [mesh.dir / f"{name}-state" / FILE_NAME for name in ("a1", "b1", "c1")]
    wait_for(lambda: any(TimestampFile(path.parent).load() for path in records), 2 * WRITE_INTERVAL + 5,
             "the responders to keep their newest initiation timestamps in their state directories")
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in records if path.exists())
    assert ping_over(mesh, "a1", "b1") and ping_over(mesh, "b1", "c1"), "tunnels carry on after the writes"


def test_client_verbs_fail_clearly_without_a_daemon(tmp_path: Path) -> None:
    done = subprocess.run(python_command("meshvpn", "status", "--socket", str(tmp_path / "none.sock")),
                          capture_output=True, text=True, timeout=20, env=_child_env())
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "not running" in done.stderr
