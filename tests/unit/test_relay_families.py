"""A relay named with AAAA and A records: the link races its addresses, IPv6 first (Happy Eyeballs)."""

import ipaddress

from hypothesis import given, strategies as st

from meshvpn import keys, wire
from meshvpn.config import RelayLimits
from meshvpn.control import messages as m
from meshvpn.node.eyeballs import STAGGER
from meshvpn.node.relay.addresses import RelayAddresses
from meshvpn.node.relay.core import RelaySet
from meshvpn.node.relay.link import ReadyChanged, RelayLink, RelayLinkConfig, SendTcp, SendUdp, Transport
from meshvpn.node.streamdial import StreamTarget
from meshvpn.relay.core import RelayCore
from meshvpn.relaytoken import TokenMinter
from meshvpn.wire import Endpoint

from test_relaylink import COORD, NODE, RELAY, WALL, Harness, counting_random

V6, V4 = Endpoint("2001:db8:2::2", 7500), Endpoint("203.0.113.2", 7500)
NODE_V6, NODE_V4 = Endpoint("2001:db8:1::3", 4000), Endpoint("198.51.100.3", 4000)
TICK = 0.05


class TwoFamilies:
    """A link to a relay at `V6` and `V4`, and the relay; `works` says which of its addresses
    answer (a packet to the other is lost, as on a blackholed route or a network without UDP)."""

    def __init__(self, works=(V6, V4)):
        self.relay = RelayCore(RELAY, keys.public_key(COORD), RelayLimits(), counting_random(), WALL)
        info = m.RelayInfo("r1", V4.host, V4.port, keys.public_key(RELAY))
        self.link = RelayLink(info, NODE, keys.public_key(NODE), counting_random(), WALL, RelayLinkConfig(),
                              addresses=(V4, V6))
        self.works = set(works)
        self.sent: list[tuple[float, Endpoint]] = []
        self.ready_at = None
        token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL)
        self.link.set_token(token, expires, 0.0)

    def run(self, until, now=0.0):
        while now <= until + 1e-9:
            self.step(now)
            now = round(now + TICK, 6)

    def step(self, now):
        self.link.handle_timer(now)
        while actions := self.link.next_actions():
            for action in actions:
                if isinstance(action, ReadyChanged) and action.ready and self.ready_at is None:
                    self.ready_at = now
                if not isinstance(action, SendUdp):
                    continue
                self.sent.append((now, action.endpoint))
                if action.endpoint not in self.works:
                    continue
                self.relay.receive(action.data, NODE_V6 if ":" in action.endpoint.host else NODE_V4, WALL + now)
                for _, answer in self.relay.datagrams_to_send():
                    assert self.link.receive(answer, Transport.UDP, now + 0.01, src=action.endpoint)

    def to(self, endpoint):
        return [t for t, dst in self.sent if dst == endpoint]


def test_ipv6_goes_first_and_alone_when_it_answers():
    h = TwoFamilies()
    h.run(6.0)
    assert h.sent[0] == (0.0, V6)
    assert h.ready_at == 0.0 and h.link.endpoint == V6 and h.link.transport is Transport.UDP
    assert h.to(V4) == [], "the IPv4 hello waits for the stagger, and the ack came first"


def test_silent_ipv6_costs_the_stagger_then_ipv4_is_the_relays_address():
    h = TwoFamilies(works=(V4,))
    h.run(6.0)
    assert h.to(V4)[0] <= 0.3 and h.to(V4)[0] == STAGGER
    assert h.ready_at is not None and h.ready_at <= 0.3
    assert h.link.endpoint == V4 and h.link.addresses.locked
    assert h.to(V6) == [0.0], "once IPv4 answered, hellos go there alone"
    assert not h.link.stream.wanted


def test_both_silent_fall_back_to_the_stream_when_a_single_address_link_does():
    def fallback_time(link, step):
        t = 0.0
        while step(t) or not link.stream.wanted:
            t = round(t + TICK, 6)
            assert t < 5
        return t

    h = TwoFamilies(works=())
    one = Harness(udp_works=False)
    one.token(0.0)
    assert fallback_time(h.link, h.step) == fallback_time(one.link, one.step) == RelayLinkConfig().stream_after
    assert h.to(V6) == [0.0, 0.5] and h.to(V4) == [STAGGER], "a round, IPv6 then IPv4, before the stream"


def test_a_failing_address_makes_the_other_family_go_first_before_any_stream():
    h = TwoFamilies()
    h.run(3.0)
    assert h.link.endpoint == V6
    h.works = {V4}  # the IPv6 route breaks
    h.link.check(3.0)
    h.run(6.0, now=3.0)
    assert h.link.ready and h.link.endpoint == V4 and not h.link.stream.wanted
    first_v4 = h.to(V4)[0]
    assert first_v4 == 3.0 + h.link.config.check_timeout, "at once when IPv6 failed its check"
    assert h.to(V6)[-1] == 3.0 + h.link.config.late_after, "one retry, then IPv4 answered before IPv6 was due again"


def test_the_relay_set_races_a_names_addresses_and_sends_relayed_packets_to_the_winner():
    relays = RelaySet(NODE, keys.public_key(NODE), counting_random(), WALL)
    relays.addresses_of[V4.host] = (V4.host, V6.host)
    token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL)
    relays.configure([m.RelayInfo("r1", V4.host, V4.port, keys.public_key(RELAY))],
                     [m.RelayToken("r1", token, expires)], 0.0)
    assert relays.by_endpoint.keys() == {V4, V6}
    assert [dst for dst, _ in relays.datagrams_to_send()] == [V6]
    relays.handle_timer(STAGGER)
    [(dst, hello)] = relays.datagrams_to_send()
    assert dst == V4
    relay = RelayCore(RELAY, keys.public_key(COORD), RelayLimits(), counting_random(), WALL)
    relay.receive(hello, NODE_V4, WALL + STAGGER)
    for _, answer in relay.datagrams_to_send():
        assert relays.receive(answer, V4, Transport.UDP, STAGGER + 0.01)
    relays.handle_timer(STAGGER + 0.01)
    for dst, hello in relays.datagrams_to_send():
        relay.receive(hello, NODE_V4, WALL + STAGGER + 0.01)
        for _, answer in relay.datagrams_to_send():
            relays.receive(answer, V4, Transport.UDP, STAGGER + 0.02)
    assert relays.home is not None and relays.home_endpoint() == V4
    assert relays.ready_endpoints() == {"r1": V4} and relays.status()[0]["address"] == str(V4)


addresses = st.lists(st.builds(lambda six, n: Endpoint(f"2001:db8::{n:x}" if six else f"203.0.113.{n}", 7500),
                               st.booleans(), st.integers(1, 200)), min_size=1, max_size=6)


@given(addresses, st.lists(st.floats(0, 5), max_size=20))
def test_a_round_tries_each_address_once_ipv6_first_a_stagger_apart(found, times):
    race = RelayAddresses(found)
    first = race.round(0.0)
    assert first == race.all[0] and (":" in first.host) == any(":" in a.host for a in found)
    tried = [first]
    for now in sorted(times):
        while (endpoint := race.due(now)) is not None:
            assert now >= STAGGER * len(tried) - 1e-9
            tried.append(endpoint)
    assert len(tried) == len(set(tried)) <= len(set(found))
    assert all(ipaddress.ip_address(e.host) for e in tried)


def test_the_stream_races_both_addresses_the_failed_one_last():
    relays = RelaySet(NODE, keys.public_key(NODE), counting_random(), WALL)
    relays.addresses_of[V4.host] = (V4.host, V6.host)
    token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL)
    relays.configure([m.RelayInfo("r1", V4.host, V4.port, keys.public_key(RELAY), tls_port=443)],
                     [m.RelayToken("r1", token, expires)], 0.0)
    now = 0.0
    while not (wishes := relays.stream_wishes(now)):
        now = round(now + TICK, 6)
        relays.handle_timer(now)
        assert now < 5
    [wish] = wishes
    tls6, tls4 = V6._replace(port=443), V4._replace(port=443)
    assert now == 0.5 and wish.targets == (StreamTarget(V6), StreamTarget(V4), StreamTarget(tls6, True),
                                           StreamTarget(tls4, True)), "plain TCP first, each family in turn"
    link = relays.links["r1"]
    relays.tcp_up("r1", now, StreamTarget(V4))  # the IPv4 attempt won the stream's race
    assert relays.status()[0]["address"] == str(V4) and relays.status()[0]["transport"] == "tcp"
    relays.tcp_down("r1", now)
    assert relays.status()[0]["address"] == str(V6), "no stream: the address the hellos go to first"
    link.addresses.acked(V4)
    link.addresses.failed()
    assert link.addresses.order() == [V6, V4] and link.addresses.round(now) == V6
    link.addresses.acked(V6)
    link.addresses.failed()
    assert link.addresses.order() == [V4, V6], "the family that failed last goes last"


def test_a_peer_relay_is_tried_first_where_our_direct_path_to_its_node_goes():
    """A dual-stack member's path to the node is over IPv6, its public endpoint (IPv4) does not
    answer: the hellos go to the path's endpoint first, it is the relay's once it acks, and a
    newer way replaces it while the node's own address stays."""
    race = RelayAddresses([V4])
    assert race.round(0.0) == V4 and race.due(STAGGER) is None
    assert race.set_way(V6) and not race.set_way(V6)
    assert race.all == (V6, V4) and race.round(1.0) == V6 and race.due(1.0 + STAGGER) == V4
    race.acked(V6)
    assert race.endpoint == V6 and race.locked
    moved = Endpoint("2001:db8:2::9", 7500)
    assert race.set_way(moved)
    assert race.all == (moved, V4) and race.given == (V4,) and not race.locked and race.round(2.0) == moved
    assert race.set_way(V4) and race.all == (V4,), "the way is the node's own address: one address"


def test_the_set_follows_a_way_to_a_peer_relay_and_configure_keeps_it():
    relays = RelaySet(NODE, keys.public_key(NODE), counting_random(), WALL)
    token, expires = TokenMinter(COORD, counting_random()).mint(keys.public_key(RELAY), keys.public_key(NODE), WALL)
    info = m.RelayInfo("h1", V4.host, V4.port, keys.public_key(RELAY), peer=True)
    relays.configure([info], [m.RelayToken("h1", token, expires)], 0.0)
    relays.datagrams_to_send()
    link = relays.links["h1"]
    relays.set_way(link, V6, 0.1)
    assert [dst for dst, _ in relays.datagrams_to_send()] == [V6], "a hello there at once"
    assert relays.by_endpoint == {V6: link, V4: link}
    relays.configure([info], [m.RelayToken("h1", token, expires)], 0.2)
    assert relays.links["h1"] is link, "the same relay: the link and its way stay"
