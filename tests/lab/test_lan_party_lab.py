"""The LAN party end to end: real daemons behind real NATs play LAN games across the mesh.

One mesh serves every test of this module (each test reads like a stage of one evening): a
coord at 203.0.113.10, a relay at 203.0.113.20, and four sites with one node each: alice and bob
behind port-preserving NATs, carol and dave behind random-port NATs, so carol and dave reach
each other only through the relay and every other pair directly. The network's policy puts
carol (and any node tagged `kid`) in `kids` and bob in `servers`, and denies udp/27015 from
kids to servers. Every node runs a game server on udp/27015 (`meshvpn.lab.lanplay`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from meshvpn.lab import Lab, NatKind, Topology, lab_namespaces
from meshvpn.lab import lanplay
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.rates import alternated
from meshvpn.lab.transfer import transfer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
NODES = {"alice": ("a", NatKind.PORT_PRESERVING), "bob": ("b", NatKind.PORT_PRESERVING),
         "carol": ("c", NatKind.RANDOM_PORTS), "dave": ("d", NatKind.RANDOM_PORTS)}
ANY = ("direct", "relay")
PATHS = {("alice", "bob"): ("direct",), ("alice", "carol"): ANY, ("alice", "dave"): ANY,
         ("bob", "carol"): ANY, ("bob", "dave"): ANY, ("carol", "dave"): ("relay",)}
"""A direct pair and a relayed pair at least; the others may be either (punching a random-port NAT
from a port-preserving one can take a while)."""
BROADCAST = "100.80.0.255"
STORM_BURST = 0.5
"""Seconds of each burst of the storm, and of the calm between two."""
STORM_SECONDS = 12.0
STORM_SETTLE = 0.1
"""Seconds at the start of a burst or a calm stretch that count for neither: the storm's packets
already in the daemons' queues, or not yet there."""
STORM_STRETCHES = 8
"""Stressed and calm stretches the comparison needs at least (a loaded machine may start the
storm late, and stretches the flow did not cover do not count)."""
FLOW_AFTER_STORM = 3.0
"""Seconds the flow goes on beyond the storm's own, for the storm's start-up."""
NO_GAME_FOR_KIDS = {
    "groups": [{"name": "kids", "members": ["carol", "tag:kid"]}, {"name": "servers", "members": ["bob"]}],
    "rules": [{"from": "kids", "to": "servers", "services": ["udp/27015"], "action": "deny"}],
}


@dataclass
class Party:
    topo: Topology
    mesh: Mesh

    def ns(self, name: str):
        return self.mesh.nodes[name].ns

    def ask(self, name: str, target: str, wait: float = 2.0) -> set[str]:
        """The names of the game servers that answer `name`'s query to `target` within `wait`."""
        lines = lanplay.run(self.ns(name), "ask", target, "--bind", self.mesh.overlay(name), "--wait", str(wait))
        return {line.split()[0] for line in lines}

    def lan(self, name: str) -> dict:
        return self.mesh.status(name)["self"]["lan"]

    def native(self, name: str) -> dict:
        """The native thread's totals (`NativeReceiver.totals`); empty when it does not run."""
        return self.mesh.status(name)["self"].get("native_loop", {})


@pytest.fixture(scope="module")
def party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Party]:
    with Lab() as lab:
        topo = Topology(lab)
        topo.add_server("coord", addrs=[COORD_ADDR])
        topo.add_server("relay", addrs=[RELAY_ADDR])
        for site, nat in NODES.values():
            topo.add_site(site, nat=nat)
        mesh = Mesh(tmp_path_factory.mktemp("party"), topo.host("coord"), COORD_ADDR)
        mesh.access = NO_GAME_FOR_KIDS
        try:
            mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR)
            mesh.start_coord()
            key, _ = mesh.create_auth_key()
            for name, (site, _) in NODES.items():
                mesh.start_node(name, topo.host(f"{site}1"), key)
            mesh.wait_registered()
            found = mesh.wait_for_paths({**PATHS, **{(b, a): kinds for (a, b), kinds in PATHS.items()}}, 25)
            assert len(found) == 2 * len(PATHS), f"paths: {sorted(found)}\n{mesh.logs()}"
            for name in NODES:
                lanplay.start(mesh.nodes[name].ns, "serve", name)
            yield Party(topo, mesh)
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.stop_nodes()
    left = [name for name in lab_namespaces() if name.startswith(lab.prefix + "-")]
    assert not left, f"namespaces left behind: {left}"


def test_a_server_browser_finds_every_game_by_broadcast(party: Party) -> None:
    # The asking node's own server answers too, as on a LAN: the kernel loops a broadcast back.
    answers = party.ask("alice", BROADCAST)
    assert answers == set(NODES), (answers, {name: party.mesh.status(name)["self"]["lan"] for name in NODES})
    assert party.ask("dave", "255.255.255.255") == set(NODES), "limited broadcast, carol relayed"
    lan = party.lan("alice")
    assert lan["sent"]["broadcast"] >= 1 and lan["sent"]["copies"] >= 3
    assert party.lan("carol")["received"]["broadcast"] >= 2


def test_a_group_two_of_four_joined_reaches_only_those_two(party: Party) -> None:
    group, port = "224.0.2.60", 4445
    listeners = {name: lanplay.start(party.ns(name), "listen", group, str(port), "--bind", party.mesh.overlay(name),
                                     "--seconds", "8") for name in ("bob", "dave")}
    for name in ("alice", "carol"):
        wait_for(lambda: {p["name"]: p["groups"] for p in party.mesh.status(name)["peers"]} ==
                 {**{n: [] for n in NODES if n != name}, "bob": [group], "dave": [group]}, 10,
                 f"{name} to learn who joined {group}")
    before = {name: party.lan(name) for name in NODES}
    party.mesh.nodes["alice"].ns.run([sys.executable, "-c", (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{party.mesh.overlay('alice')}', 0)); s.sendto(b'LAN world', ('{group}', {port}))")])
    heard = {name: proc.communicate(timeout=15)[0].split() for name, proc in listeners.items()}
    assert heard == {"bob": [party.mesh.overlay("alice"), "LAN", "world"],
                     "dave": [party.mesh.overlay("alice"), "LAN", "world"]}
    after = {name: party.lan(name) for name in NODES}
    assert after["alice"]["sent"]["copies"] - before["alice"]["sent"]["copies"] == 2, "one copy per member"
    assert after["carol"]["received"] == before["carol"]["received"]
    assert after["bob"]["received"]["multicast"] == before["bob"]["received"]["multicast"] + 1


def test_an_mdns_service_on_one_node_is_found_by_zeroconf_on_another(party: Party) -> None:
    publisher = lanplay.start(party.ns("carol"), "mdns-publish", "carols-server", party.mesh.overlay("carol"))
    try:
        found = lanplay.run(party.ns("dave"), "mdns-find", party.mesh.overlay("dave"), "--wait", "8", timeout=30)
    finally:
        party.ns("carol").stop(publisher)
    assert f"carols-server {party.mesh.overlay('carol')}:27015" in found, party.mesh.logs()


@pytest.mark.alone  # `make test` runs it after the others, on a mesh of its own
@pytest.mark.timeout(150)  # the module's mesh is built for this test alone: a minute on a loaded machine
def test_a_broadcast_storm_leaves_a_parallel_tcp_flow_its_rate(party: Party) -> None:
    alice, bob, to_bob = party.ns("alice"), party.ns("bob"), party.mesh.overlay("bob")
    storm_rate = 10 * 500 / 3  # 10x the default 500 copies a second, with three peers to copy to
    bursts: list[tuple[float, float]] = []

    def storm() -> None:
        """Bursts of the storm with calm between them, while the flow runs (it outlasts them)."""
        proc = lanplay.start(alice, "storm", BROADCAST, "--bind", party.mesh.overlay("alice"),
                             "--rate", str(storm_rate), "--seconds", str(STORM_SECONDS),
                             "--on", str(STORM_BURST), "--off", str(STORM_BURST),
                             "--port", "9")  # discard: no server answers
        try:
            out, _ = proc.communicate(timeout=STORM_SECONDS + 15)
        finally:
            alice.stop(proc)
        bursts.extend((float(start), float(end)) for word, start, end in
                      (line.split() for line in out.splitlines() if line.startswith("burst ")))

    dropped_before, native_before = party.lan("alice")["dropped"], {name: party.native(name) for name in NODES}
    # The storm goes on and off within one flow, and the flow's rate in the bursts is compared with
    # its rate in the calm between them, so a drift of the machine's load falls on both alike
    # (`meshvpn.lab.rates.alternated`).
    sent, received = transfer(alice, bob, to_bob, duration=STORM_SECONDS + FLOW_AFTER_STORM, during=storm)
    assert sent.same_data(received)
    rates = alternated(received.progress, bursts, STORM_SETTLE)
    dropped = party.lan("alice")["dropped"]
    storm_drops = sum(dropped.get(k, 0) - dropped_before.get(k, 0) for k in ("rate_packets", "rate_bytes"))
    counted = {name: {key: value - native_before[name].get(key, 0) for key, value in party.native(name).items()}
               for name in NODES}
    # bob has access rules (he is in `servers`): the flow is still his native thread's, both ways.
    native = counted["bob"]
    figures = f"TCP flow in the storm: {rates}; alice's drops {dropped}; the native threads {counted}"
    print(figures)
    # alice's native thread drops the storm while the budget is spent, and her Python sees the
    # broadcasts the budget lets through and those that came before it had said so again: about
    # 70 % of the refused ones are the thread's on a quiet machine, 47 % at load 4-5 (Python
    # answers later there). None were before the hold.
    held = counted["alice"].get("fan-out held natively", 0)
    assert held > storm_drops / 4, figures
    # carol has rules too (she is in `kids`): the copies she gets are a flow her filter let in once,
    # which her thread then delivers itself.
    assert counted["carol"].get("handed to python", 0) < counted["carol"].get("opened natively", 0) / 4, figures
    assert native.get("opened natively", 0) > 10_000 and native.get("sealed natively", 0) > 1000, figures
    assert native.get("handed to python", 0) < native["opened natively"] / 10, figures
    assert storm_drops > len(bursts) * storm_rate * STORM_BURST / 2, f"each burst went well over the budget: {figures}"
    assert len(rates.stressed) >= STORM_STRETCHES and len(rates.calm) >= STORM_STRETCHES, figures
    assert rates.ratio > 0.8, figures


def test_an_access_rule_blocks_udp_27015_from_kids_and_a_tag_or_reload_changes_it_live(party: Party) -> None:
    mesh = party.mesh
    assert party.ask("carol", BROADCAST) == {"alice", "carol", "dave"}, "bob's server is denied to kids"
    assert party.ask("dave", mesh.overlay("bob")) == {"bob"}
    assert party.lan("bob")["dropped"].get("access rule 0", 0) >= 1
    handshakes = {p["name"]: p["last_handshake"] for p in mesh.status("bob")["peers"]}
    try:
        mesh.admin("nodes", "tag", "dave", "kid")
        wait_for(lambda: party.ask("dave", mesh.overlay("bob"), wait=0.5) == set(), 5, "dave's tag to deny him")
        mesh.access = {}
        mesh.reload_coord()
        wait_for(lambda: party.ask("carol", mesh.overlay("bob"), wait=0.5) == {"bob"}, 5, "the reload to let carol in")
        assert party.ask("dave", mesh.overlay("bob")) == {"bob"}
        now = {p["name"]: (p["last_handshake"], p["path"]) for p in mesh.status("bob")["peers"]}
        assert all(now[name][0] >= handshakes[name] for name in handshakes), f"a tunnel re-handshook: {now}"
        assert all(path != "-" for _, path in now.values()), f"a peer lost its path: {now}"
        for name in NODES:
            log = mesh.nodes[name].log.read_text()
            assert log.count("coord link up") == 1, f"{name} reconnected to the coord"
    finally:
        mesh.access = NO_GAME_FOR_KIDS
        mesh.reload_coord()
        mesh.admin("nodes", "untag", "dave", "kid")
