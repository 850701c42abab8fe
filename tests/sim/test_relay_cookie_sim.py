"""A relay under a flood of costly hellos asks every new node for a cookie, and nodes still register over UDP.

The nodes are the real `Node` (the harness's `MemoryNode` on simulated hosts behind random-port
NATs, so only the relay joins them); the relay is the real `RelayCore`. From the start, hellos of
fresh keys with valid tokens arrive from spoofed sources: a burst of `DH_BURST`, then four times
the rate of Diffie-Hellmans the relay allows (`DH_RATE`). Every one is a new registration from an
address that has not proven itself, so the relay answers each with a RELAY_COOKIE and spends no
Diffie-Hellman on it, as it answers every new node's first hello (issue 13, findings 3 and 5).
The registrations then carry a packet between the nodes (hellos of registered nodes need no
proof). Every run is seeded.
"""

import random
from dataclasses import replace

from meshvpn.control import messages as m
from meshvpn.lab.flood import costly_hello
from meshvpn.relay.core import DH_BURST, DH_RATE
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim import SYMMETRIC_RANDOM, Host, Nat, Network, Scheduler
from meshvpn.wire import Endpoint
from test_node_sim import NETWORK, FakeCoord, SimNode
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.sim.relays import COORD, SimRelay, relay_tokens

FLOOD_RATE = 4 * DH_RATE
"""Costly hellos a second, one at a time: a new node's hello finds a Diffie-Hellman to spare one time in eight."""
FLOOD_SECONDS = 1.0
ASKED = "unproven hello: new or moved registration"


class RelayingCoord(FakeCoord):
    """The fake coord, whose welcome also names the relays and carries a token for each."""

    def __init__(self, net, nodes, relays, minter):
        self.relays, self.minter = relays, minter
        super().__init__(net, nodes)

    def _send(self, node, msg):
        if isinstance(msg, m.Registered):
            infos = tuple(r.info for r in self.relays)
            tokens = relay_tokens(self.minter, infos, node.public, self.net.scheduler.now)
            msg = replace(msg, relays=infos, relay_tokens=tokens)
        super()._send(node, msg)


def behind_random_nats(net, seed, node_class=SimNode):
    """Two nodes, each behind its own random-port NAT, so only a relay joins them."""
    nodes = []
    for i, site in enumerate(("192.0.2.10", "198.51.100.30")):
        nat = Nat(net, site, SYMMETRIC_RANDOM)
        host = Host(net, f"10.{i + 1}.0.11", realm=nat.lan)
        nodes.append(node_class(net, seed + i, f"node{i}", f"100.64.0.{i + 1}", host, nat))
    return nodes


class Flood:
    """Costly hellos into the relay's socket from spoofed 192.0.2.0/24 sources: a burst of
    `DH_BURST`, then one every 1/`FLOOD_RATE` seconds for `FLOOD_SECONDS`."""

    def __init__(self, scheduler, relay, minter, rng):
        self.scheduler, self.relay = scheduler, relay
        now = WALL_OFFSET + scheduler.now
        count = int(DH_BURST + FLOOD_RATE * FLOOD_SECONDS)
        self.hellos = [costly_hello(minter, relay.info.public_key, rng.randbytes, now) for _ in range(count)]
        self.sent = 0
        for _ in range(int(DH_BURST)):
            self._send()
        for n in range(count - self.sent):
            scheduler.call_later((n + 1) / FLOOD_RATE, self._send)

    def _send(self):
        n = self.sent
        self.relay._on_datagram(self.hellos[n], Endpoint(f"192.0.2.{1 + n % 250}", 1024 + n % 60000))
        self.sent += 1


def test_under_a_hello_flood_new_nodes_register_over_udp_and_talk_through_the_relay():
    rng = random.Random(13)
    net = Network(Scheduler(), rng)
    relay = SimRelay(net.scheduler, net, "relay", "203.0.113.20", 0.005, rng)
    minter = TokenMinter(COORD, rng.randbytes)
    Flood(net.scheduler, relay, minter, random.Random(14))
    net.scheduler.run_for(0.2)
    assert relay.core.drops[ASKED] > 500, "the flood is on before the nodes come"
    nodes = behind_random_nats(net, 300)
    a, b = nodes
    refused_before = relay.core.drops[ASKED]
    RelayingCoord(net, nodes, (relay,), minter)
    net.scheduler.run_for(0.5)
    for node in nodes:
        [link] = node.mem.node.relays.links.values()
        assert link.ready and link.transport.value == "udp", f"{node.name} registered over UDP at once"
        assert relay.core.registered_link(node.public).host == node.nat.ip
    assert relay.core.drops[ASKED] - refused_before >= 2, "each new node was asked for a cookie"
    assert net.scheduler.now < FLOOD_SECONDS, "the flood went on all along"
    a.send_ip(b, b"through the relay")
    net.scheduler.run_for(3.0)  # punching between random-port NATs gives up, the relay path carries it
    assert [p[20:] for p in b.tun] == [b"through the relay"]
    assert a.path_to(b).kind.value == "relay"
