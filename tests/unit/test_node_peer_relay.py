"""A node's part as a peer relay: started and stopped by the coord, fed only what is the relay's,
and never its own relay; a member's link to a peer relay never falls back to a stream."""

import random

from meshvpn import keys, wire
from meshvpn.config import ForwardLimits
from meshvpn.control import messages as m
from meshvpn.node.peerrelay import PeerRelay
from meshvpn.node.relay.link import RelayLink
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim.nodes import WALL_OFFSET, MemoryNode
from meshvpn.wire import Endpoint, MessageType
from test_relay_core import ALICE, A_EP, BOB, B_EP, NOW, RELAY, counting_random, envelope, register
from test_relay_core import COORD as RELAY_COORD

COORD = bytes([7]) * 32
NETWORK = m.NetworkInfo("party", "100.64.0.0/24")
MEMBER = Endpoint("198.51.100.7", 41641)


def node(seed: int, coord_public: bytes | None = keys.public_key(COORD)) -> MemoryNode:
    rng = random.Random(seed)
    return MemoryNode(rng.randbytes(32), rng.randbytes, "host", "100.64.0.9", Endpoint("10.0.0.9", 41641),
                      coord_public=coord_public)


def registered(mem: MemoryNode, **fields) -> m.Registered:
    return m.Registered(mem.public, "host", "100.64.0.9", NETWORK, **fields)


def test_the_coord_starts_and_stops_the_relay_and_only_the_relay_s_datagrams_go_to_it() -> None:
    host = node(1)
    host.from_coord(registered(host), 0.0)
    hello = wire.header(MessageType.RELAY_HELLO) + bytes(200)
    assert host.node.peer_relay.core is None and not host.node.peer_relay.takes(hello, MEMBER)
    host.from_coord(m.Relays((), (), relaying=True), 1.0)
    relay = host.node.peer_relay
    assert relay.relaying and relay.takes(hello, MEMBER)
    envelope = wire.header(MessageType.RELAY) + bytes(32) + wire.header(MessageType.DATA) + bytes(40)
    assert not relay.takes(envelope, MEMBER)  # not registered: relayed traffic for us, from a relay
    host.receive([(hello, MEMBER)], 1.5)
    assert relay.core.drops["token is not 80 bytes"] == 1 and host.node.status(1.5)["self"]["relaying"]["nodes"] == 0
    assert relay.get_timer() is not None and relay.get_timer() < 1e6  # the node's clock, not the wall's
    host.from_coord(m.Relays((), (), relaying=False), 2.0)
    assert relay.core is None and host.node.status(2.0)["self"]["relaying"] is None


def test_without_the_coord_s_key_a_node_never_relays() -> None:
    host = node(2, coord_public=None)
    host.from_coord(registered(host, relaying=True), 0.0)
    assert host.node.peer_relay.core is None


def test_a_node_offered_itself_as_a_relay_skips_it_and_links_to_the_others_over_udp_only() -> None:
    guest = node(3)
    minter = TokenMinter(COORD, random.Random(4).randbytes)
    me = m.RelayInfo("host", "203.0.113.50", 41641, guest.public, peer=True)
    other = m.RelayInfo("desk", "203.0.113.51", 41641, keys.public_key(bytes([9]) * 32), peer=True)
    token, expires = minter.mint(other.public_key, guest.public, WALL_OFFSET)
    guest.from_coord(registered(guest), 0.0)
    guest.from_coord(m.Relays((me, other), (m.RelayToken("desk", token, float(expires)),)), 0.0)
    assert list(guest.node.relays.links) == ["desk"]
    link: RelayLink = guest.node.relays.links["desk"]
    for second in range(10):
        guest.tick(float(second))
    assert link.transport_name == "udp" and not link.stream.wanted
    assert sum(dst == Endpoint("203.0.113.51", 41641) for dst, _ in guest.collect()) >= 10


def test_the_config_s_peer_relay_limits_bound_each_member_and_a_reload_applies_them_at_once() -> None:
    """`peer_relay` in the node's config: the rates of `meshvpn relay`'s limits, per member."""
    serving = PeerRelay(RELAY, counting_random(), 0.0, keys.public_key(RELAY_COORD),
                        ForwardLimits(packets_per_second=100, burst=10))
    serving.coord_message(m.Relays((), (), relaying=True), NOW)
    register(serving, ALICE, A_EP)
    register(serving, BOB, B_EP)
    for _ in range(15):
        serving.receive(envelope(BOB), A_EP, NOW)
    assert len(serving.datagrams_to_send()) == 10 and serving.core.drops["rate limited"] == 5
    serving.set_limits(ForwardLimits(packets_per_second=1, burst=2))
    for _ in range(4):
        serving.receive(envelope(BOB), A_EP, NOW + 10)
    assert len(serving.datagrams_to_send()) == 2, "ten seconds at 1/s, but no more than the new burst"
