"""A node under a flood of initiations asks its peers for cookies and still comes up at once.

Two real nodes behind NATs (`test_node_sim.build`); from the start, initiations with a valid
mac1 for node1 (its public key is no secret) and garbage inside reach node1's socket from
spoofed 192.0.2.0/24 sources at four times the rate of Diffie-Hellmans a node allows
(`DH_RATE`), so it is under load all along (issue 13, finding 3). node0's first packet still
arrives within the time it takes when calm: its initiation is answered with a cookie, sent again
stamped at once, and answered. Every run is seeded.
"""

import random

from meshvpn.lab.flood import forged_initiation
from meshvpn.node.handshake_cookies import DH_BURST, DH_RATE
from meshvpn.node.pathfinder import PathKind
from meshvpn.wire import Endpoint
from test_node_sim import build

FLOOD_RATE = 4 * DH_RATE
FLOOD_SECONDS = 3.0


class Flood:
    """Forged initiations into `node`'s socket: a burst of `DH_BURST`, then `FLOOD_RATE` a second."""

    def __init__(self, node, rng: random.Random):
        self.node = node
        self.initiations = [forged_initiation(node.public, rng.randbytes) for _ in range(256)]
        self.sent = 0
        count = int(DH_BURST + FLOOD_RATE * FLOOD_SECONDS)
        for n in range(count):
            delay = 0.0 if n < DH_BURST else (n - DH_BURST + 1) / FLOOD_RATE
            node.net.scheduler.call_later(delay, self._send)

    def _send(self):
        n = self.sent
        self.sent += 1
        self.node._on_datagram(self.initiations[n % 256], Endpoint(f"192.0.2.{1 + n % 250}", 1024 + n % 60000))


def first_packet_time(flooded: bool) -> tuple[float, object, object]:
    net, (a, b), _ = build(31, ["home", "office"])
    if flooded:
        Flood(b, random.Random(32))
        net.scheduler.run_for(0.2)
    start = net.scheduler.now
    a.send_ip(b, b"through the flood")
    while not b.tun and net.scheduler.now - start < 3.0:
        net.scheduler.run_for(0.01)
    assert [p[20:] for p in b.tun] == [b"through the flood"]
    assert a.path_to(b).kind is PathKind.DIRECT
    return net.scheduler.now - start, a, b


def test_under_an_initiation_flood_a_peer_comes_up_as_fast_as_when_calm():
    calm, _, _ = first_packet_time(flooded=False)
    flooded, a, b = first_packet_time(flooded=True)
    refused = b.core.drops["initiation under load: cookie sent"]
    assert refused > 0.9 * FLOOD_RATE * 0.2, f"node1 was under load before node0 spoke ({refused})"
    assert b.public in a.core.handshakes.cookies, "node0 was asked for a cookie and took it"
    assert b.core.drops["rejected initiation"] <= DH_BURST + DH_RATE * 3.0, "the flood's Diffie-Hellmans stay bounded"
    assert flooded < calm + 0.1, f"first packet after {flooded:.3f} s flooded, {calm:.3f} s calm"
