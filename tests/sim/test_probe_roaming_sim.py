"""A silent direct path moves on the peer's newest authenticated probe from a new source, and on nothing older.

The lab's mapped site (`tests/lab/test_portmap_remap_lab.py`, `docs/paths.md`; here `a` is behind a
full cone, so `b`'s packets from anywhere reach it, as through the lab's forward): after `b`'s NAT
re-maps it, `b`'s data no longer reaches `a` (here a tap on the internet drops it), so all `a`
hears of `b`'s new endpoint are `b`'s probes once its own path went silent. Such a probe has the
newest stamp `a` took from `b` and moves `a`'s suspect path there at once, instead of after
`silence_after` plus two unanswered probes and a punch. A probe replayed from an attacker's
address has a stamp `a` took before and moves nothing (`docs/security.md`).
"""

import random

from test_node_sim import PORT, FakeCoord, SimNode
from test_probe_replay_sim import ATTACKER, Attacker

from meshvpn.node.pathfinder import PathKind
from meshvpn.sim import FULL_CONE, PORT_RESTRICTED_CONE, Host, Nat, Network, Scheduler
from meshvpn.wire import MessageType

GAP = 0.05
SILENT_PATH_MOVED = 0.5
"""Seconds after the re-mapping by which `a`'s path is on `b`'s new endpoint (silence_after 0.3 s,
then the probe that `b` sends once its own path is silent)."""


def flows(net, a, b, until: float) -> None:
    """Both ways, a packet every `GAP` until `until`."""
    def tick():
        if net.scheduler.now < until:
            a.send_ip(b, b"a to b")
            b.send_ip(a, b"b to a")
            net.scheduler.call_later(GAP, tick)
    tick()


def remapped_pair(seed: int, drop_probes: bool = False):
    """`a` and `b` direct with flows going; then `b`'s NAT re-maps it and `b`'s data (and, if told,
    its probes) from the new mapping no longer reaches anyone."""
    net = Network(Scheduler(), random.Random(seed))
    nat_a, nat_b = Nat(net, "203.0.113.1", FULL_CONE), Nat(net, "203.0.113.2", PORT_RESTRICTED_CONE)
    a = SimNode(net, seed * 100, "a", "100.64.0.1", Host(net, "192.168.1.10", realm=nat_a.lan), nat_a)
    b = SimNode(net, seed * 100 + 1, "b", "100.64.0.2", Host(net, "192.168.2.11", realm=nat_b.lan), nat_b)
    FakeCoord(net, [a, b])
    net.scheduler.run_for(0.5)
    flows(net, a, b, net.scheduler.now + 4.0)
    net.scheduler.run_for(1.0)
    assert a.path_to(b).kind is PathKind.DIRECT and a.path_to(b).endpoint == (b.nat.ip, PORT)
    attacker = Attacker(net)
    route = net.internet.route
    dropped = {MessageType.DATA, MessageType.KEEPALIVE} | ({MessageType.PROBE} if drop_probes else set())

    def tap(dgram):
        if dgram.src[0] == b.nat.ip and dgram.src[1] != PORT and len(dgram.data) > 1 and dgram.data[1] in dropped:
            return
        route(dgram)

    net.internet.route = tap
    net.scheduler.run_for(0.3)
    remapped = net.scheduler.now
    b.nat.rebind()
    return net, a, b, attacker, remapped


def paths_until(net, a, b, until: float) -> list[tuple[float, object]]:
    seen = []
    while net.scheduler.now < until:
        net.scheduler.run_for(0.01)
        path = a.path_to(b)
        if not seen or seen[-1][1] != path:
            seen.append((net.scheduler.now, path))
    return seen


def test_the_peers_probe_from_its_new_mapping_moves_the_silent_path():
    net, a, b, _, remapped = remapped_pair(7)
    seen = paths_until(net, a, b, remapped + 1.0)
    assert all(path is not None for _, path in seen), "never without a path"
    moved = [(when, path) for when, path in seen if path.endpoint[1] != PORT]
    assert moved and moved[0][1].endpoint[0] == b.nat.ip and moved[0][0] - remapped < SILENT_PATH_MOVED, seen
    assert a.path_to(b) == moved[0][1]


def test_without_the_probes_the_path_is_left_only_when_it_is_dead():
    net, a, b, _, remapped = remapped_pair(7, drop_probes=True)
    seen = paths_until(net, a, b, remapped + 1.0)
    assert any(path is None for _, path in seen), "no relay in this harness: the silent path ends"
    before_gone = seen[:next(i for i, (_, path) in enumerate(seen) if path is None)]
    assert all(path.endpoint[1] == PORT for _, path in before_gone), "nothing else moved it"


def test_a_replayed_probe_from_an_attackers_address_does_not_move_the_silent_path():
    net, a, b, attacker, remapped = remapped_pair(8, drop_probes=True)
    captured = [data for src, data in attacker.captured if src[0] == b.nat.ip]
    assert captured, "b's probes before the re-mapping, taken by a"
    for delay in (0.3, 0.35, 0.4, 0.45):
        net.scheduler.call_at(remapped + delay, attacker.replay, captured[-1], (a.nat.ip, PORT))
    seen = paths_until(net, a, b, remapped + 1.0)
    assert all(path is None or path.endpoint[0] != ATTACKER for _, path in seen)
    assert a.core.peers.by_key[b.public].counters.drops["replayed probe"] == 4
