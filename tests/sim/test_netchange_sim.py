"""A node moves to another network (new LAN address, new NAT, new public address) in the simulated network.

The nodes and the fake coord are those of `test_node_sim`; the move is what `netwatch` sees on a
real host: the node's socket is gone from the old LAN and bound on the new one, and the daemon
calls `Node.network_changed` once it has told the node its new endpoints.
"""

from meshvpn.node.pathfinder import Path, PathKind
from meshvpn.sim import PORT_RESTRICTED_CONE, Host, Nat
from meshvpn.wire import Endpoint

from test_node_sim import PORT, SimNode, build

STEP = 0.05


def move(node: SimNode, nat: Nat, ip: str) -> None:
    """The node's host leaves its LAN and comes up behind `nat` at `ip`."""
    node.sock.close()
    node.host, node.nat = Host(node.net, ip, realm=nat.lan), nat
    node.sock = node.host.bind(PORT, node._on_datagram)
    node.mem.node.set_own_endpoints([Endpoint(ip, PORT)], Endpoint(nat.ip, PORT))


def first_arrivals(net, a: SimNode, b: SimNode, seconds: float) -> dict[str, float]:
    """Send a packet each way every STEP; seconds until the first one arrived at each end."""
    start, seen = net.scheduler.now, {}
    a.tun.clear()
    b.tun.clear()
    while net.scheduler.now - start < seconds and len(seen) < 2:
        a.send_ip(b, b"to b")
        b.send_ip(a, b"to a")
        net.scheduler.run_for(STEP)
        for name, node in (("b", b), ("a", a)):
            if node.tun and name not in seen:
                seen[name] = net.scheduler.now - start
    return seen


def test_a_moved_node_is_heard_by_its_peer_within_a_round_trip_of_saying_so():
    net, (a, b), coord = build(7, ["home", "office"])
    a.send_ip(b, b"hello")
    net.scheduler.run_for(1.0)
    assert a.path_to(b).kind is PathKind.DIRECT and b.path_to(a).kind is PathKind.DIRECT
    punches = coord.punches

    move(a, Nat(net, "203.0.113.9", PORT_RESTRICTED_CONE), "192.168.9.10")
    a.mem.node.network_changed(net.scheduler.now)
    a._transmit()
    arrived = first_arrivals(net, a, b, 15.0)
    print(f"after the move: a->b back in {arrived['b']:.2f} s, b->a in {arrived['a']:.2f} s")

    assert coord.punches == punches + 1, "one punch request for the one peer in use"
    assert arrived["b"] < 0.3, "b's punch towards a's new address opened its NAT for a's traffic"
    # b roams to a's new address with a's first authenticated packet from there
    assert arrived["a"] < 1.0
    assert b.path_to(a) == Path(PathKind.DIRECT, ("203.0.113.9", PORT))


def test_without_being_told_the_moved_node_is_back_once_its_busy_path_goes_silent():
    """b's NAT filters a's new address until b sends there; without `network_changed`, the silence
    on the busy path (`meshvpn.node.silence`) ends it, a's next packet seeks a path and asks the
    coord for a punch, and b punches towards a's new address."""
    net, (a, b), _ = build(8, ["home", "office"])
    a.send_ip(b, b"hello")
    net.scheduler.run_for(1.0)
    move(a, Nat(net, "203.0.113.9", PORT_RESTRICTED_CONE), "192.168.9.10")
    arrived = first_arrivals(net, a, b, 3.0)
    assert arrived["b"] < 1.0 and arrived["a"] < 1.0
    assert b.path_to(a) == Path(PathKind.DIRECT, ("203.0.113.9", PORT))
