"""TCP on the simulated network and the NATs' TCP side (RFC 5382), property by property."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.sim import PORT_RESTRICTED_CONE, SYMMETRIC_RANDOM, Host, Link, LinkDirection, Nat, Network, Scheduler
from meshvpn.sim.nat import NatBehavior
from meshvpn.sim.tcp import SYN_RTO, Flags, Segment, TcpStack
from meshvpn.sim.tcpnat import PORT_443_ONLY, TcpBehavior, TcpNat, Unsolicited

SERVER = ("198.51.100.1", 443)
PUNCH = 41641


class App:
    """A handler that records what its connections saw."""

    def __init__(self):
        self.up, self.data, self.ended = [], [], []

    def connected(self, conn):
        self.up.append(conn)

    def received(self, conn, data):
        self.data.append(data)

    def closed(self, conn, reason):
        self.ended.append(reason)


class World:
    """A public server and two sites, each a host behind a NAT with a TCP side."""

    def __init__(self, behavior=PORT_RESTRICTED_CONE, tcp=TcpBehavior(), seed=1, link=None):
        self.scheduler = Scheduler()
        self.net = Network(self.scheduler, random.Random(seed))
        self.server = TcpStack(Host(self.net, SERVER[0]))
        self.server_app = App()
        self.server.listen(SERVER[1], lambda conn: self.server_app)
        self.nats, self.hosts = [], []
        for n in (1, 2):
            nat = Nat(self.net, f"203.0.113.{n}", behavior, link=link() if link else None)
            TcpNat(nat, tcp)
            self.nats.append(nat)
            self.hosts.append(TcpStack(Host(self.net, f"192.168.{n}.10", nat.lan)))

    def run(self, seconds):
        self.scheduler.run_for(seconds)


def test_a_connection_carries_data_both_ways_and_a_close_is_seen_as_eof():
    world = World()
    client = App()
    conn = world.hosts[0].connect(0, SERVER, client)
    world.run(0.1)
    assert client.up == [conn] and len(world.server_app.up) == 1
    served = world.server_app.up[0]
    assert served.remote == ("203.0.113.1", conn.port), "the server sees the NAT's port-preserving mapping"
    conn.write(b"hello")
    served.write(b"world")
    world.run(0.1)
    assert world.server_app.data == [b"hello"] and client.data == [b"world"]
    conn.close()
    world.run(0.1)
    assert world.server_app.ended == ["eof"] and client.ended == ["eof"]
    assert not world.hosts[0].conns and not world.server.conns


def test_a_syn_to_a_port_nobody_listens_on_is_refused_with_a_reset():
    world = World()
    client = App()
    world.hosts[0].connect(0, ("198.51.100.1", 80), client)
    world.run(0.1)
    assert client.ended == ["refused"] and world.net.drops["tcp reset"] == 1


def test_an_unsolicited_syn_dies_silently_at_a_nat_and_the_connect_times_out():
    world = World()
    client = App()
    world.server.connect(0, ("203.0.113.2", PUNCH), client)
    world.run(10.0)
    assert client.ended == [] and world.net.drops["tcp no mapping"] == 4, "SYN at 0, 1, 3 and 7 s, all dropped"
    world.run(200.0)
    assert client.ended == ["timed out"]


def test_a_nat_that_resets_unsolicited_syns_refuses_at_once():
    world = World(tcp=TcpBehavior(unsolicited=Unsolicited.RESET))
    client = App()
    world.server.connect(0, ("203.0.113.2", PUNCH), client)
    world.run(0.1)
    assert client.ended == ["refused"]


def punch(world, stagger=0.0):
    """Both hosts connect from their punch ports to each other's public punch endpoint, `b` `stagger` s later."""
    apps = App(), App()
    for host in world.hosts:
        host.listen(PUNCH, lambda conn: None)
    world.hosts[0].connect(PUNCH, ("203.0.113.2", PUNCH), apps[0])
    world.scheduler.call_later(stagger, world.hosts[1].connect, PUNCH, ("203.0.113.1", PUNCH), apps[1])
    return apps


def test_crossing_syns_make_one_connection_through_two_filtering_nats():
    world = World()
    a, b = punch(world)
    world.run(0.1)
    assert len(a.up) == len(b.up) == 1, "a simultaneous open on the first SYNs"
    a.up[0].write(b"ping")
    b.up[0].write(b"pong")
    world.run(0.1)
    assert (a.data, b.data) == ([b"pong"], [b"ping"])
    assert len(world.hosts[0].conns) == len(world.hosts[1].conns) == 1


def test_a_late_peers_syn_is_answered_by_the_first_side_whose_own_syn_died():
    world = World()
    a, b = punch(world, stagger=0.5)
    world.run(0.45)
    assert world.net.drops["tcp no mapping"] == 1, "a's SYN reached b's NAT before b's SYN opened it"
    world.run(0.2)
    assert len(a.up) == len(b.up) == 1, "b's SYN passes the way a's opened; a answers it with SYN-ACK"


def test_a_lost_syn_is_sent_again_after_one_second():
    world = World()
    a, b = punch(world)
    world.nats[1].link.connected = False
    world.run(0.5)
    world.nats[1].link.connected = True
    world.run(0.4)
    assert a.up == b.up == []
    world.run(0.2)
    assert len(a.up) == len(b.up) == 1


def test_endpoint_dependent_mapping_defeats_a_punch_to_the_port_the_server_saw():
    world = World(behavior=SYMMETRIC_RANDOM)
    seen = []
    for host in world.hosts:
        conn = host.connect(PUNCH, SERVER, App())
        world.run(0.1)
        seen.append(world.server_app.up[-1].remote)
        assert conn.open
    apps = App(), App()
    world.hosts[0].connect(PUNCH, seen[1], apps[0])
    world.hosts[1].connect(PUNCH, seen[0], apps[1])
    world.run(30.0)
    assert apps[0].up == apps[1].up == [], "each SYN leaves from a new port the other NAT does not admit"


def test_an_endpoint_independent_nat_keeps_the_public_port_for_every_remote():
    world = World(behavior=NatBehavior(ports=SYMMETRIC_RANDOM.ports))
    world.hosts[1].listen(PUNCH, lambda conn: None)
    world.hosts[0].connect(PUNCH, SERVER, App())
    world.run(0.1)
    public = world.server_app.up[0].remote
    world.hosts[0].connect(PUNCH, ("203.0.113.2", PUNCH), App())
    world.run(0.05)
    assert [m.public for m in world.nats[0].tcp.table.active()] == [public]
    assert world.nats[0].udp.active() == [], "TCP mappings are not UDP's"


def test_a_port_443_only_site_reaches_443_and_nothing_else_and_no_udp():
    world = World(tcp=PORT_443_ONLY)
    world.nats[0].udp_out = False
    refused, allowed = App(), App()
    world.hosts[0].connect(0, ("198.51.100.1", 80), refused)
    world.hosts[0].connect(0, SERVER, allowed)
    udp = world.hosts[0].host.bind(5000, None)
    udp.sendto(b"x", ("198.51.100.1", 3478))
    world.run(0.5)
    assert len(allowed.up) == 1 and refused.up == refused.ended == []
    assert world.net.drops["tcp port blocked"] >= 1 and world.net.drops["udp blocked"] == 1


def test_connecting_twice_to_one_remote_from_one_port_fails_as_address_in_use():
    world = World()
    first, second = App(), App()
    world.hosts[0].connect(PUNCH, SERVER, first)
    world.hosts[0].connect(PUNCH, SERVER, second)
    world.run(0.1)
    assert len(first.up) == 1 and second.ended == ["address in use"]


def test_an_abort_resets_the_peer_and_a_late_reset_spares_the_next_connection():
    world = World()
    client = App()
    conn = world.hosts[0].connect(PUNCH, SERVER, client)
    world.run(0.1)
    conn.abort()
    world.run(0.1)
    assert world.server_app.ended == ["reset"]
    stale = Segment(SERVER, ("203.0.113.1", PUNCH), Flags.RST | Flags.ACK, 5, 5)
    again = App()
    world.hosts[0].connect(PUNCH, SERVER, again)
    world.nats[0].inbound(stale)
    world.run(0.1)
    assert len(again.up) == 1 and again.ended == []


def test_a_rebinding_nat_breaks_a_connection_with_a_reset_from_the_far_end():
    world = World()
    client = App()
    conn = world.hosts[0].connect(PUNCH, SERVER, client)
    world.run(0.1)
    world.nats[0].rebind()
    conn.write(b"after")
    world.run(0.1)
    assert world.server_app.data == [] and client.ended == ["reset"]


def test_a_connection_survives_a_link_outage_by_retransmitting():
    world = World(link=Link)
    client = App()
    conn = world.hosts[0].connect(0, SERVER, client)
    world.run(0.1)
    world.nats[0].link.connected = False
    conn.write(b"during")
    world.run(5.0)
    world.nats[0].link.connected = True
    world.run(SYN_RTO * 7)
    assert world.server_app.data == [b"during"] and client.ended == []


def test_a_syn_only_mapping_lives_the_transitory_timeout():
    world = World(tcp=TcpBehavior(transitory_timeout=10.0))
    world.hosts[0].connect(PUNCH, ("198.51.100.9", PUNCH), App())
    world.run(0.1)
    assert len(world.nats[0].tcp.table.active()) == 1
    world.run(200.0)
    assert world.nats[0].tcp.table.active() == [], "no SYN after the retries, no mapping"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 0.3), jitter=st.floats(0.0, 0.05))
def test_writes_arrive_whole_and_in_order_over_lossy_reordering_links(seed, loss, jitter):
    def lossy():
        return Link(LinkDirection(0.01, jitter, loss), LinkDirection(0.01, jitter, loss))

    world = World(seed=seed, link=lossy)
    client = App()
    conn = world.hosts[0].connect(0, SERVER, client)
    world.run(60.0)
    if not conn.open:
        return  # every SYN lost: nothing to check
    chunks = [b"%d," % n for n in range(100)]
    for chunk in chunks:
        conn.write(chunk)
    world.run(120.0)
    assert b"".join(world.server_app.data) == b"".join(chunks)


def test_a_syn_that_meets_a_connection_its_peer_forgot_opens_anew_at_the_next_syn():
    """The client lost its connection without a word (its link was down); the server still holds
    it. The new SYN from the same port draws the server's ACK, the client answers RST, and the SYN
    sent again after `SYN_RTO` connects, as the kernel does (RFC 793, RFC 5961's challenge ACK)."""
    world = World()
    old = world.hosts[0].connect(PUNCH, SERVER, App())
    world.run(0.1)
    assert old.open and len(world.server_app.up) == 1
    old.drop("address gone")
    client = App()
    conn = world.hosts[0].connect(PUNCH, SERVER, client)
    world.run(0.5)
    assert not client.up and world.server_app.ended == ["reset"], "the stale connection was reset"
    world.run(SYN_RTO)
    assert client.up == [conn] and len(world.server_app.up) == 2
