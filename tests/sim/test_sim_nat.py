"""The simulated network and its RFC 4787 NATs, property by property."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.sim import (
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    RESTRICTED_CONE,
    SYMMETRIC_RANDOM,
    SYMMETRIC_SEQUENTIAL,
    Dependence,
    Host,
    Link,
    LinkDirection,
    Nat,
    NatBehavior,
    Network,
    PortAllocation,
    Scheduler,
)

SERVER_1 = "198.51.100.1"
SERVER_2 = "198.51.100.2"
NAT_IP = "203.0.113.1"


class World:
    """Two public servers that record what they receive, and a NAT with one LAN host."""

    def __init__(self, behavior=PORT_RESTRICTED_CONE, seed=1, lan_port=1414):
        self.scheduler = Scheduler()
        self.net = Network(self.scheduler, random.Random(seed))
        self.received = []
        self.servers = {}
        for ip in (SERVER_1, SERVER_2):
            host = Host(self.net, ip)
            for port in (3478, 3479):
                self.servers[(ip, port)] = host.bind(port, self._record((ip, port)))
        self.nat = Nat(self.net, NAT_IP, behavior)
        self.client = Host(self.net, "10.0.0.2", self.nat.lan)
        self.client_rx = []
        self.sock = self.client.bind(lan_port, lambda data, src: self.client_rx.append((data, src)))

    def _record(self, at):
        return lambda data, src: self.received.append((at, data, src))

    def send_out(self, server, data=b"out"):
        """Client -> server; returns the public endpoint the server saw."""
        before = len(self.received)
        self.sock.sendto(data, server)
        self.scheduler.run_for(0.1)
        assert len(self.received) == before + 1, "outbound datagram was lost"
        return self.received[-1][2]

    def send_in(self, server, public, data=b"in"):
        """Server -> the client's public endpoint; True if the client got it."""
        before = len(self.client_rx)
        self.servers[server].sendto(data, public)
        self.scheduler.run_for(0.1)
        return len(self.client_rx) > before


@pytest.mark.parametrize("mapping, same_for_other_port, same_for_other_ip", [
    (Dependence.ENDPOINT_INDEPENDENT, True, True),
    (Dependence.ADDRESS_DEPENDENT, True, False),
    (Dependence.ADDRESS_AND_PORT_DEPENDENT, False, False),
])
def test_mapping_behaviour(mapping, same_for_other_port, same_for_other_ip):
    world = World(NatBehavior(mapping=mapping))
    first = world.send_out((SERVER_1, 3478))
    assert (world.send_out((SERVER_1, 3479)) == first) is same_for_other_port
    assert (world.send_out((SERVER_2, 3478)) == first) is same_for_other_ip
    assert world.send_out((SERVER_1, 3478)) == first


@pytest.mark.parametrize("behavior, from_other_port, from_other_ip", [
    (FULL_CONE, True, True),
    (RESTRICTED_CONE, True, False),
    (PORT_RESTRICTED_CONE, False, False),
])
def test_filtering_behaviour(behavior, from_other_port, from_other_ip):
    world = World(behavior)
    public = world.send_out((SERVER_1, 3478))
    assert world.send_in((SERVER_1, 3478), public)
    assert world.send_in((SERVER_1, 3479), public) is from_other_port
    assert world.send_in((SERVER_2, 3478), public) is from_other_ip
    dropped = (not from_other_port) + (not from_other_ip)
    assert world.net.drops["filtered"] == dropped


def test_unsolicited_inbound_is_dropped_even_by_a_full_cone():
    world = World(FULL_CONE)
    assert not world.send_in((SERVER_1, 3478), (NAT_IP, 1414))
    assert world.net.drops["no mapping"] == 1


def test_port_preservation_and_collision():
    world = World(PORT_RESTRICTED_CONE)
    assert world.send_out((SERVER_1, 3478)) == (NAT_IP, 1414)
    other = Host(world.net, "10.0.0.3", world.nat.lan).bind(1414, lambda d, s: None)
    other.sendto(b"x", (SERVER_1, 3478))
    world.scheduler.run_for(0.1)
    assert world.received[-1][2] == (NAT_IP, 1415)


def test_sequential_allocation_takes_the_next_free_port():
    world = World(SYMMETRIC_SEQUENTIAL)
    seen = [world.send_out(server)[1] for server in world.servers]
    assert seen == [30001, 30002, 30003, 30004]


def test_range_offset_allocation():
    world = World(NatBehavior(ports=PortAllocation.RANGE_OFFSET))
    assert world.send_out((SERVER_1, 3478)) == (NAT_IP, 31414)


def test_random_allocation_is_seeded_and_in_range():
    behavior = NatBehavior(mapping=Dependence.ADDRESS_AND_PORT_DEPENDENT,
                           ports=PortAllocation.RANDOM)
    def ports(seed):
        world = World(behavior, seed=seed)
        return [world.send_out(server)[1] for server in world.servers]

    seen = ports(7)
    assert ports(7) == seen and ports(8) != seen
    assert len(set(seen)) == 4 and all(1024 <= p <= 65535 for p in seen)


def test_mapping_expires_without_outbound_traffic():
    world = World(NatBehavior(mapping_timeout=30.0))
    public = world.send_out((SERVER_1, 3478))
    world.scheduler.run_for(20.0)
    assert world.send_in((SERVER_1, 3478), public)  # inbound does not refresh...
    world.scheduler.run_for(10.0)
    assert not world.send_in((SERVER_1, 3478), public)  # ...so 30 s after the send it is gone
    assert world.nat.active_mappings() == []


def test_outbound_traffic_refreshes_the_mapping():
    world = World(NatBehavior(mapping_timeout=30.0))
    public = world.send_out((SERVER_1, 3478))
    for _ in range(3):
        world.scheduler.run_for(20.0)
        assert world.send_out((SERVER_1, 3478)) == public
    assert world.send_in((SERVER_1, 3478), public)


def test_expired_sequential_port_is_not_reused_before_the_others():
    world = World(NatBehavior(ports=PortAllocation.SEQUENTIAL, mapping_timeout=5.0))
    assert world.send_out((SERVER_1, 3478))[1] == 30001
    world.scheduler.run_for(6.0)
    assert world.send_out((SERVER_1, 3478))[1] == 30002


def test_flush_forgets_every_mapping():
    world = World(PORT_RESTRICTED_CONE)
    public = world.send_out((SERVER_1, 3478))
    world.nat.flush()
    assert not world.send_in((SERVER_1, 3478), public)


FORWARDED = (NAT_IP, 50000)
"""The port the NAT forwards to the client (a UPnP IGD, NAT-PMP or PCP mapping)."""


def forwarded_world(seed=1):
    """A random-port NAT, as the lab's miniupnpd router, forwarding `FORWARDED` to the client,
    which answered `SERVER_1` through it; then the NAT forgets every flow."""
    world = World(SYMMETRIC_RANDOM, seed)
    world.nat.forward(FORWARDED[1], ("10.0.0.2", 1414))
    assert world.send_in((SERVER_1, 3478), FORWARDED)
    assert world.client_rx[-1][1] == (SERVER_1, 3478)
    assert world.send_out((SERVER_1, 3478)) == FORWARDED, "the answer leaves from the forwarded port"
    world.nat.flush()
    return world


def test_after_a_flush_a_forwarded_flow_that_comes_in_first_keeps_the_remotes_port():
    world = forwarded_world()
    assert world.send_in((SERVER_1, 3478), FORWARDED)
    assert world.client_rx[-1][1] == (SERVER_1, 3478)
    assert world.send_out((SERVER_1, 3478)) == FORWARDED


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_a_flush_a_forwarded_flow_that_clashes_with_an_outbound_one_comes_in_from_another_port(seed):
    """Linux conntrack (tests/lab/test_portmap_remap_lab.py): the client's own packet made a new
    random flow to the remote first, so the remote's packets to the forward reach it from another
    port, and its answers to that port leave from the forwarded port to the remote's real one."""
    world = forwarded_world(seed)
    flow = world.send_out((SERVER_1, 3478))
    assert flow != FORWARDED
    assert world.send_in((SERVER_1, 3478), FORWARDED)
    seen = world.client_rx[-1][1]
    assert seen[0] == SERVER_1 and seen[1] != 3478
    assert world.send_out(seen) == FORWARDED and world.received[-1][0] == (SERVER_1, 3478)
    assert world.send_out((SERVER_1, 3478)) == flow, "the outbound flow keeps its own port"
    assert world.send_in((SERVER_1, 3478), FORWARDED) and world.client_rx[-1][1] == seen
    assert world.send_in((SERVER_1, 3478), flow) and world.client_rx[-1][1] == (SERVER_1, 3478)


def test_a_remapped_forwarded_flow_expires_like_a_mapping():
    world = forwarded_world()
    world.send_out((SERVER_1, 3478))
    world.send_in((SERVER_1, 3478), FORWARDED)
    seen = world.client_rx[-1][1]
    world.scheduler.run_for(PORT_RESTRICTED_CONE.mapping_timeout)
    assert world.send_in((SERVER_1, 3478), FORWARDED)
    assert world.client_rx[-1][1] == (SERVER_1, 3478), "nothing left to clash with"
    received = len(world.received)
    world.sock.sendto(b"late", seen)
    world.scheduler.run_for(0.1)
    assert len(world.received) == received, "the remote's other port leads nowhere now"


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(hairpinning):
    world = World(NatBehavior(filtering=Dependence.ENDPOINT_INDEPENDENT, hairpinning=hairpinning))
    public = world.send_out((SERVER_1, 3478))
    got = []
    neighbour = Host(world.net, "10.0.0.3", world.nat.lan).bind(5000, lambda d, s: got.append(s))
    neighbour.sendto(b"via public address", public)
    world.scheduler.run_for(0.1)
    assert bool(world.client_rx) is hairpinning
    assert world.net.drops["no hairpinning"] == (not hairpinning)
    if hairpinning:
        assert world.client_rx[0][1] == (NAT_IP, 5000)


def test_lan_hosts_reach_each_other_without_the_nat():
    world = World()
    got = []
    Host(world.net, "10.0.0.3", world.nat.lan).bind(5000, lambda d, s: got.append(s))
    world.sock.sendto(b"hi", ("10.0.0.3", 5000))
    world.scheduler.run_for(0.1)
    assert got == [("10.0.0.2", 1414)] and world.nat.active_mappings() == []


def test_nested_nats_carrier_grade():
    scheduler = Scheduler()
    net = Network(scheduler, random.Random(1))
    seen = []
    server = Host(net, SERVER_1).bind(3478, lambda d, s: seen.append(s))
    cgn = Nat(net, NAT_IP, SYMMETRIC_SEQUENTIAL)
    home = Nat(net, "10.64.0.5", PORT_RESTRICTED_CONE, realm=cgn.lan)
    got = []
    sock = Host(net, "192.168.1.10", home.lan).bind(1414, lambda d, s: got.append(s))
    sock.sendto(b"x", (SERVER_1, 3478))
    scheduler.run_for(0.1)
    assert seen == [(NAT_IP, 30001)]
    server.sendto(b"reply", seen[0])
    scheduler.run_for(0.1)
    assert got == [(SERVER_1, 3478)]
    assert [m.public for m in home.active_mappings()] == [("10.64.0.5", 1414)]


def test_background_traffic_steals_sequential_ports():
    world = World(SYMMETRIC_SEQUENTIAL)
    first = world.send_out((SERVER_1, 3478))[1]
    world.nat.set_background_traffic(flows_per_second=50.0)
    world.scheduler.run_for(1.0)
    world.nat.set_background_traffic(0.0)
    stolen = len(world.nat.active_mappings()) - 1
    assert 25 <= stolen <= 80
    assert world.send_out((SERVER_1, 3479))[1] == first + stolen + 1
    world.scheduler.run_for(5.0)
    assert len(world.nat.active_mappings()) == stolen + 2


def test_link_delay_jitter_and_cut():
    scheduler = Scheduler()
    net = Network(scheduler, random.Random(3))
    times = []
    Host(net, SERVER_1, link=Link(down=LinkDirection(delay=0.02))).bind(
        9, lambda d, s: times.append(scheduler.now))
    link = Link(up=LinkDirection(delay=0.01, jitter=0.005))
    sock = Host(net, SERVER_2, link=link).bind(9, lambda d, s: None)
    for _ in range(20):
        sock.sendto(b"x", (SERVER_1, 9))
    scheduler.run_for(1.0)
    assert len(times) == 20 and all(0.03 <= t < 0.035 for t in times) and len(set(times)) > 1
    link.connected = False
    sock.sendto(b"x", (SERVER_1, 9))
    scheduler.run_for(1.0)
    assert len(times) == 20 and net.drops["link down"] == 1


def test_loss_rate_is_seeded():
    def delivered(seed):
        scheduler = Scheduler()
        net = Network(scheduler, random.Random(seed))
        got = []
        Host(net, SERVER_1).bind(9, lambda d, s: got.append(d))
        sock = Host(net, SERVER_2, link=Link(up=LinkDirection(loss=0.2))).bind(9, None)
        for _ in range(1000):
            sock.sendto(b"x", (SERVER_1, 9))
        scheduler.run_for(1.0)
        return len(got)

    assert delivered(11) == delivered(11)
    assert 750 <= delivered(11) <= 850


def test_scheduler_runs_in_time_then_fifo_order_and_honours_cancel():
    scheduler = Scheduler()
    order = []
    scheduler.call_at(2.0, order.append, "c")
    scheduler.call_at(1.0, order.append, "a")
    scheduler.call_at(1.0, order.append, "b")
    scheduler.call_at(1.5, order.append, "x").cancel()
    assert scheduler.run_until(1.5) == 2 and scheduler.now == 1.5
    scheduler.call_later(0.0, order.append, "now")
    scheduler.run_for(1.0)
    assert order == ["a", "b", "now", "c"] and scheduler.now == 2.5
    assert scheduler.next_event_time() is None


def test_runaway_simulation_is_bounded():
    scheduler = Scheduler()

    def again():
        scheduler.call_later(0.0, again)

    scheduler.call_at(0.0, again)
    with pytest.raises(RuntimeError):
        scheduler.run_for(1.0, max_events=1000)


@settings(max_examples=100, deadline=None)
@given(mapping=st.sampled_from(Dependence), filtering=st.sampled_from(Dependence),
       ports=st.sampled_from(PortAllocation),
       flows=st.lists(st.tuples(st.sampled_from(["10.0.0.2", "10.0.0.3"]),
                                st.integers(1024, 1030),
                                st.sampled_from([SERVER_1, SERVER_2]),
                                st.sampled_from([3478, 3479])), min_size=1, max_size=20))
def test_every_mapping_routes_replies_back_and_only_as_filtered(mapping, filtering, ports, flows):
    scheduler = Scheduler()
    net = Network(scheduler, random.Random(0))
    nat = Nat(net, NAT_IP, NatBehavior(mapping=mapping, filtering=filtering, ports=ports))
    servers, seen, got, socks = {}, [], [], {}
    for ip in (SERVER_1, SERVER_2):
        host = Host(net, ip)
        for port in (3478, 3479):
            servers[(ip, port)] = host.bind(port, lambda d, s, at=(ip, port): seen.append((at, s)))
    for ip in ("10.0.0.2", "10.0.0.3"):
        host = Host(net, ip, nat.lan)
        for port in range(1024, 1031):
            socks[(ip, port)] = host.bind(port, lambda d, s, me=(ip, port): got.append((me, s)))
    public_of = {}
    for lan_ip, lan_port, server_ip, server_port in flows:
        socks[(lan_ip, lan_port)].sendto(b"x", (server_ip, server_port))
        scheduler.run_for(0.1)
        public_of[(lan_ip, lan_port), (server_ip, server_port)] = seen[-1][1]
    assert len({v for v in public_of.values()}) == len(nat.active_mappings())
    for (lan, server), public in public_of.items():
        for probe_from in servers:
            got.clear()
            servers[probe_from].sendto(b"y", public)
            scheduler.run_for(0.1)
            sent_to = {s for (l, s), p in public_of.items() if p == public}
            allowed = {filtering.narrow(s) for s in sent_to}
            assert (got == [(lan, probe_from)]) is (filtering.narrow(probe_from) in allowed)
