"""The console with real daemons: the paths they find are the paths the host sees.

A coord with its console on (inside its namespace, on 127.0.0.1), node a1 behind one NAT and
the neighbours d1 and d2 behind another. Once the daemons have their paths (direct across the
internet, lan between the neighbours), `meshvpn coord nodes list` (and `--json`) and the console's
nodes page, fetched after a login from inside the coord's namespace, show each node's path to
each peer exactly as the node itself reports it in `meshvpn status`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

COORD_ADDR = "203.0.113.10"
NAMES = ("a1", "d1", "d2")
CONSOLE = "127.0.0.1:7480"
PASSWORD = "lab console password"

FETCH = r"""
import http.cookiejar, sys, urllib.parse, urllib.request
base, password = sys.argv[1], sys.argv[2]
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
opener.open(base + "/login", urllib.parse.urlencode({"password": password}).encode(), timeout=10)
print(opener.open(base + "/live/nodes", timeout=10).read().decode())
"""


def own_paths(mesh: Mesh, name: str) -> dict[str, str]:
    return {peer["name"]: peer["path"] for peer in mesh.status(name)["peers"]}


def coord_paths(mesh: Mesh) -> dict[str, dict[str, str]]:
    nodes = json.loads(mesh.admin("nodes", "list", "--json").stdout)["nodes"]
    return {node["name"]: node["paths"] for node in nodes}


def test_console_shows_the_paths_the_daemons_report(topo: Topology, tmp_path: Path, meshes: list[Mesh]) -> None:
    topo.add_site("a")
    topo.add_site("d", hosts=2)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    password_file = tmp_path / "console.password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    mesh.console = {"enabled": True, "listen": CONSOLE, "password_file": str(password_file)}
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name in NAMES:
        mesh.start_node(name, topo.host(name), key)
    mesh.wait_registered()

    for src, dst in (("a1", "d1"), ("a1", "d2"), ("d1", "d2")):
        assert any(mesh.nudge(src, dst) for _ in range(5)), f"{src} cannot reach {dst}"
    wait_for(lambda: all("-" not in own_paths(mesh, n).values() for n in NAMES), 15, "every path up")
    wait_for(lambda: own_paths(mesh, "d1")["d2"] == "lan" and own_paths(mesh, "a1")["d1"] == "direct",
             15, "lan between the neighbours, direct across the internet")
    expected = {name: own_paths(mesh, name) for name in NAMES}
    wait_for(lambda: coord_paths(mesh) == expected, 10, f"the coord to hold the nodes' own paths {expected}")

    table = {line.split()[0]: line for line in mesh.admin("nodes", "list").stdout.splitlines()}
    assert "d2:lan" in table["d1"] and "a1:direct" in table["d1"], table

    page = mesh.coord_ns.run([sys.executable, "-c", FETCH, f"http://{CONSOLE}", PASSWORD], timeout=20).stdout
    for name, paths in expected.items():
        row = page.split(f'data-node="{name}"')[1].split("</tr>")[0]
        assert ">online<" in row
        for peer, kind in paths.items():
            assert f"{peer}: {kind}" in row, f"{name}'s row lacks {peer}: {kind}:\n{row}"
