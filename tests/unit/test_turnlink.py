"""The node's TURN links (meshvpn.node.turn.core): coord messages in, routes, framing and envelopes out.

The TURN server is scripted as in test_turn.py: 401 to the first Allocate, then success.
"""

import itertools
import random

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.node.eyeballs import STAGGER
from meshvpn.node.turn.core import TurnLinks
from meshvpn.node.turn.server import CHECK_TIMEOUT, STREAM_AFTER
from meshvpn.sim.turnserver import REALM, turn_answer
from meshvpn.turn_codec import frame_run
from meshvpn.stun_codec import Attr, StunClass, StunMessage, StunMethod, decode, encode, long_term_key
from meshvpn.node.events import TurnStream
from meshvpn.node.streamdial import StreamTarget
from meshvpn.turn import AllocationLost, AllocationReady, ChannelBound
from meshvpn.turn_codec import decode_channel_data
from meshvpn.wire import Endpoint, MessageType

SERVER = Endpoint("203.0.113.30", 3478)
OURS = Endpoint("203.0.113.30", 50001)
THEIRS = Endpoint("203.0.113.30", 50002)
PEER_KEY = bytes(range(32))


def turn_server(username="100:me", password="pw"):
    return m.TurnServer("turn-1", SERVER.host, SERVER.port, username, password, 100.0)


def registered(*servers):
    return m.Registered(node_key=bytes(32), name="me", address="100.64.0.1",
                        network=m.NetworkInfo("home", "100.64.0.0/24"), turn=servers)


def peer(online=True, relayed=(THEIRS,)):
    return m.PeerInfo(key=PEER_KEY, name="b", address="100.64.0.2", online=online,
                      turn_relayed=tuple(m.Endpoint(*e) for e in relayed))


def answer(link: TurnLinks, now: float, password="pw", username="100:me", **success) -> list:
    """Answer every request the link sent: 401 to unsigned ones, success to signed ones."""
    methods = []
    for dst, data in link.datagrams_to_send():
        assert dst == SERVER
        method, reply = turn_answer(data, OURS, username, password)
        methods.append(method)
        assert link.receive(reply, SERVER, now)
    return methods


def linked() -> TurnLinks:
    counter = itertools.count(1)
    link = TurnLinks(lambda n: next(counter).to_bytes(n, "big"))
    link.coord_message(registered(turn_server()), 0.0)
    answer(link, 0.0)
    answer(link, 0.0)
    link.coord_message(m.PeerMap((peer(),)), 1.0)
    assert answer(link, 1.0) == [StunMethod.CREATE_PERMISSION, StunMethod.CHANNEL_BIND]
    return link


def test_allocates_reports_its_relayed_address_and_routes_a_peer_once_its_channel_is_bound():
    link = linked()
    assert link.relayed == (m.Endpoint(*OURS),) and link.relayed_changed() and not link.relayed_changed()
    assert link.routes == {PEER_KEY: THEIRS} and link.routes_changed()
    assert link.outbound(THEIRS) == (SERVER, 0x4000, None) and link.outbound(OURS) is None
    assert [type(e) for _, e in link.events()] == [AllocationReady, ChannelBound]
    assert link.status()[0] | {"failure": None} == {
        "name": "turn-1", "kind": "turn", "address": "203.0.113.30:3478", "transport": "udp", "ready": True,
        "state": "ready",
        "relayed": "203.0.113.30:50001", "channels": 1, "failure": None,
    }  # fmt: skip


def test_channel_data_in_becomes_a_relay_envelope_from_the_peer():
    link = linked()
    inner = wire.header(MessageType.DATA) + b"sealed"
    assert link.unwrap(b"\x40\x00\x00\x0a" + inner + b"\x00\x00", SERVER) == wire.header(MessageType.RELAY) + PEER_KEY + inner
    assert link.unwrap(b"\x40\x01\x00\x00", SERVER) is None
    assert link.unwrap(b"\x40\x00\x00\x0b" + inner, SERVER) is None
    assert link.unwrap(b"\x40\x00\x00\x0a" + inner, Endpoint("192.0.2.1", 3478)) is None
    assert link.drops == 3


def test_core_messages_to_the_route_or_replies_in_an_envelope_leave_as_channel_data():
    link = linked()
    assert link.wrap(b"probe", THEIRS) == (SERVER, b"\x40\x00\x00\x05probe", None)
    envelope = wire.header(MessageType.RELAY) + PEER_KEY + b"reply"
    server, datagram, stream = link.wrap(envelope, SERVER)
    assert stream is None
    assert server == SERVER and decode_channel_data(datagram) == (0x4000, b"reply")
    assert link.wrap(b"probe", Endpoint("192.0.2.1", 1)) is None


def test_the_peer_going_offline_or_away_removes_its_route():
    link = linked()
    link.routes_changed()
    link.coord_message(m.PeerUpdate(peer(online=False)), 2.0)
    assert link.routes == {} and link.routes_changed()
    link.coord_message(m.PeerUpdate(peer()), 3.0)
    bind = [decode(data) for _, data in link.datagrams_to_send()][-1]
    assert bind.attributes[Attr.CHANNEL_NUMBER] == 0x4000, "a returning peer keeps its channel number"
    link.receive(encode(StunMessage(bind.method, StunClass.SUCCESS, bind.transaction_id),
                        key=long_term_key("100:me", REALM, "pw")), SERVER, 3.0)
    assert link.routes == {PEER_KEY: THEIRS}
    link.coord_message(m.PeerRemove(PEER_KEY), 4.0)
    assert link.routes == {} and link.unwrap(b"\x40\x00\x00\x00", SERVER) is None


def test_fresh_credentials_sign_the_next_allocation_and_the_live_one_keeps_its_username():
    """RFC 8656 §5: a request on an allocation with another username is refused (coturn: 441)."""
    link = linked()
    fresh = turn_server(username="700:me", password="pw2")
    link.coord_message(m.RelayTokens((), turn=(fresh,)), 10.0)
    link.handle_timer(241.0)
    assert answer(link, 241.0) == [StunMethod.CREATE_PERMISSION], "the allocation's own username"
    link.network_changed(300.0)
    assert answer(link, 300.0, password="pw2", username="700:me") == [StunMethod.ALLOCATE]
    assert answer(link, 300.0, password="pw2", username="700:me") == [StunMethod.ALLOCATE]
    assert link.status()[0]["ready"]


def test_a_gso_run_becomes_a_run_of_channel_data_with_the_same_boundaries():
    run = memoryview(b"a" * 10 + b"b" * 10 + b"c" * 3)
    framed = frame_run(0x4001, run, 10)
    assert bytes(framed) == (b"\x40\x01\x00\x0a" + b"a" * 10 + b"\x40\x01\x00\x0a" + b"b" * 10
                             + b"\x40\x01\x00\x03" + b"c" * 3)
    assert [decode_channel_data(framed[i:i + 14]) for i in range(0, 28, 14)] == [(0x4001, b"a" * 10), (0x4001, b"b" * 10)]


def test_status_names_the_turn_server_of_a_route():
    link = linked()
    assert link.server_for(THEIRS) == "turn-1" and link.server_for(OURS) is None


# ---- over a stream, when UDP to the server gets no answer


def server_replies(requests: list[bytes], password="pw", username="100:me") -> bytes:
    """The scripted server's answers to `requests` (STUN), as the bytes of its stream."""
    return b"".join(turn_answer(data, OURS, username, password)[1] for data in requests)


def on_stream(tls_port=None) -> TurnLinks:
    """A link whose server never answered over UDP, now with its stream connected and allocated."""
    counter = itertools.count(1)
    link = TurnLinks(lambda n: next(counter).to_bytes(n, "big"))
    server = turn_server()
    link.coord_message(registered(m.TurnServer(*list(server.__dict__.values())[:6], tls_port)), 0.0)
    assert [dst for dst, _ in link.datagrams_to_send()] == [SERVER], "UDP first"
    link.handle_timer(STREAM_AFTER - 0.01)
    assert link.get_timer() == STREAM_AFTER and link.stream_wishes(0.49) == []
    link.handle_timer(STREAM_AFTER)
    tls = () if tls_port is None else (StreamTarget(SERVER._replace(port=tls_port), True),)
    assert link.stream_wishes(STREAM_AFTER) == [TurnStream("turn-1", (StreamTarget(SERVER), *tls))]
    assert link.status()[0]["transport"] == "tcp"
    assert [decode(data).method for _, data in link.datagrams_to_send()] == [StunMethod.ALLOCATE], "UDP goes on beside"
    link.stream_up("turn-1", 0.6)
    for _ in range(2):
        link.receive_stream("turn-1", server_replies([data for _, data in link.stream_frames()]), 0.7)
    link.servers["turn-1"].stream.draw = lambda: 0.5  # the backoff's waits unspread
    return link


def settle(link: TurnLinks, until: float) -> list:
    """Run the link's timers up to `until` as the node does (streams it wishes are left connecting);
    the datagrams it sent meanwhile."""
    sent = []
    while (timer := link.get_timer()) is not None and timer < until:
        link.handle_timer(timer)
        link.stream_wishes(timer)
        sent += link.datagrams_to_send()
    return sent


def test_a_server_silent_over_udp_is_used_over_tcp_and_allocates_there():
    link = on_stream()
    assert link.relayed == (m.Endpoint(*OURS),)
    link.coord_message(m.PeerMap((peer(),)), 4.0)
    frames = link.stream_frames()
    assert [decode(data).method for _, data in frames] == [StunMethod.CREATE_PERMISSION, StunMethod.CHANNEL_BIND]
    link.receive_stream("turn-1", server_replies([data for _, data in frames]), 4.1)
    assert link.outbound(THEIRS) == (SERVER, 0x4000, "turn-1")
    assert link.wrap(b"probe", THEIRS) == (SERVER, b"\x40\x00\x00\x05probe\0\0\0", "turn-1"), "padded for a stream"
    inner = wire.header(MessageType.DATA) + b"sealed"
    link.receive_stream("turn-1", b"\x40\x00\x00\x0a" + inner[:3], 4.2)
    link.receive_stream("turn-1", inner[3:] + b"\0\0", 4.2)
    assert link.received() == [(wire.header(MessageType.RELAY) + PEER_KEY + inner, SERVER)]


def test_a_lost_stream_loses_the_allocation_and_reconnects_after_a_backoff():
    link = on_stream()
    link.events()
    settle(link, 10.0)
    link.stream_ended("turn-1", 10.0)
    assert link.relayed == () and [type(e) for _, e in link.events()] == [AllocationLost]
    assert link.stream_wishes(10.0) == [] and link.get_timer() == 10.5
    assert link.stream_wishes(10.5) == [TurnStream("turn-1", (StreamTarget(SERVER),))]


def test_a_stream_the_server_reset_after_it_lasted_is_raced_again_at_once():
    """The server no longer knows the allocation's connection (it restarted, or our NAT re-mapped us):
    a new stream at once, as a relay link's; one reset soon after it came up waits the backoff."""
    link = on_stream()
    settle(link, 10.0)
    link.stream_ended("turn-1", 10.0, reset=True)
    assert link.stream_wishes(10.0) == [TurnStream("turn-1", (StreamTarget(SERVER),))]
    link.stream_up("turn-1", 10.1)
    link.stream_ended("turn-1", 10.4, reset=True)
    assert link.stream_wishes(10.4) == [] and link.servers["turn-1"].stream.retry_at == 10.9


def test_the_streams_backoff_is_spread_by_the_links_random_source():
    waits = set()
    for seed in range(6):
        link = on_stream()
        link.servers["turn-1"].stream.draw = link.servers["turn-1"].draw
        link._random_bytes = random.Random(seed).randbytes
        link.stream_ended("turn-1", 10.0)
        waits.add(link.servers["turn-1"].stream.retry_at - 10.0)
    assert len(waits) == 6 and all(0.25 <= wait < 0.75 for wait in waits)


def test_a_server_with_a_tls_port_is_raced_over_tcp_and_tls_and_the_winner_goes_first_next_time():
    link = on_stream(tls_port=5349)  # races TCP, then TLS; the TCP one won
    assert link.status()[0]["transport"] == "tcp"
    link.stream_ended("turn-1", 10.0)
    [wish] = link.stream_wishes(10.5)
    tcp, tls = StreamTarget(SERVER), StreamTarget(Endpoint(SERVER.host, 5349), True)
    assert wish.targets == (tcp, tls)
    link.stream_up("turn-1", 10.6, tls=True)  # plain TCP is blocked now: TLS won
    assert link.status()[0]["transport"] == "tls"
    link.stream_ended("turn-1", 20.0)
    assert link.stream_wishes(20.5) == [TurnStream("turn-1", (tls, tcp))]


def test_garbage_on_the_stream_closes_it():
    link = on_stream()
    link.receive_stream("turn-1", b"\xff" * 8, 5.0)
    assert link.stream_wishes(5.0) == [TurnStream("turn-1")] and link.drops == 1


def test_a_network_change_makes_every_allocation_anew_over_udp_first():
    link = on_stream()
    link.events()
    link.network_changed(20.0)
    assert link.stream_wishes(20.0) == [TurnStream("turn-1")]
    assert [type(e) for _, e in link.events()] == [AllocationLost] and link.relayed == ()
    assert link.status()[0]["transport"] == "udp"
    assert [decode(data).method for _, data in link.datagrams_to_send()] == [StunMethod.ALLOCATE]
    link.handle_timer(20.0 + STREAM_AFTER)
    assert link.stream_wishes(20.0 + STREAM_AFTER) == [TurnStream("turn-1", (StreamTarget(SERVER),))], "UDP still silent: the stream again"


# ---- a server named with AAAA and A records: its addresses raced, as a relay link's are

SERVER6 = Endpoint("2001:db8:3::30", 3478)


def two_families() -> TurnLinks:
    counter = itertools.count(1)
    link = TurnLinks(lambda n: next(counter).to_bytes(n, "big"), addresses_of={SERVER.host: (SERVER.host, SERVER6.host)})
    link.coord_message(registered(turn_server()), 0.0)
    return link


def test_a_servers_addresses_are_raced_ipv6_first_and_the_first_to_answer_is_kept():
    link = two_families()
    [(dst, allocate)] = link.datagrams_to_send()
    assert dst == SERVER6 and link.get_timer() == STAGGER
    link.handle_timer(STAGGER)
    assert link.datagrams_to_send() == [(SERVER, allocate)], "the same request to IPv4, a stagger later"
    _, challenge = turn_answer(allocate, OURS, "100:me", "pw")
    assert link.receive(challenge, SERVER, 0.3)  # IPv6 is blackholed: IPv4 answered first
    assert answer(link, 0.3) == [StunMethod.ALLOCATE], "the signed Allocate goes to IPv4 alone"
    assert link.relayed == (m.Endpoint(*OURS),) and link.status()[0]["address"] == str(m.Endpoint(*SERVER))
    link.handle_timer(1.0)
    assert all(dst == SERVER for dst, _ in link.datagrams_to_send())


def test_a_server_silent_at_every_address_races_them_all_over_its_stream():
    link = two_families()
    link.handle_timer(STAGGER)
    link.handle_timer(STREAM_AFTER)
    assert link.stream_wishes(STREAM_AFTER) == [TurnStream("turn-1", (StreamTarget(SERVER6), StreamTarget(SERVER)))]
