"""The native thread's flow cache (meshvpn/_fastpath_flows.c): it serves only what the access filter decided.

Real parts as in ``test_native_loop``: the thread on a loopback UDP socket, an AF_UNIX socket
for the TUN.  The C flow key is checked against ``meshvpn.lan.flowcache.flow_key`` of the
parsed header on random and mangled packets.  Waits are bounded.
"""

import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.lan import flowcache, packets
from meshvpn.lan.packets6 import parse_any
from meshvpn.sim.packets import icmp6_echo, icmp_echo, ipv6, tcp, tcp6, udp, udp6
from tests.unit.test_fastpath import ACCEPT4, BROADCAST4, NATIVE_MODULE, sessions
from tests.unit.test_native_loop import FAR, PEER_KEY, install_sender, peer_socket, received_datagrams, rig, \
    sealed, tun_read  # noqa: F401 (fixtures)

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
ME, PEER = "100.64.0.2", "100.64.0.1"
ME6, PEER6 = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"


def python_key(packet: bytes, outbound: bool):
    try:
        header = parse_any(packet)
    except packets.BadPacket:
        return None
    return flowcache.flow_key(header, flowcache.OUTBOUND if outbound else flowcache.INBOUND)


def some_packet(proto: int, sport: int, dport: int, flags: int, payload: bytes) -> bytes:
    if proto == 6:
        packet = bytearray(tcp(PEER, ME, sport, dport))
    elif proto == 17:
        packet = bytearray(udp(PEER, ME, sport, dport, payload))
    else:
        packet = bytearray(icmp_echo(PEER, ME, reply=bool(sport & 1)))
        packet[9] = proto
    packet[6:8] = flags.to_bytes(2, "big")
    return bytes(packet)


def mangled(packet: bytes, mangle: list[tuple[int, int]], cut: int) -> bytes:
    """`packet` with the bytes at the `mangle` offsets set, then `cut` bytes shorter (unless that is all of it)."""
    packet = bytearray(packet)
    for at, value in mangle:
        if at < len(packet):
            packet[at] = value
    return bytes(packet[: len(packet) - cut] if cut < len(packet) else packet)


@settings(max_examples=400, deadline=None)
@given(proto=st.sampled_from([1, 6, 17, 47]), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       flags=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x2005]), payload=st.binary(max_size=8),
       cut=st.integers(0, 40), mangle=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=3),
       outbound=st.booleans())
def test_the_thread_keys_a_packet_as_the_filter_does(proto, sport, dport, flags, payload, cut, mangle, outbound):
    packet = mangled(some_packet(proto, sport, dport, flags, payload), mangle, cut)
    assert NATIVE_MODULE.flow_key(packet, outbound) == python_key(packet, outbound)


_SKIPPED = st.tuples(st.sampled_from([0, 43, 60]), st.binary(max_size=14))
_FRAGMENT = st.one_of(st.binary(min_size=6, max_size=6),
                      st.tuples(st.integers(0, 8191), st.booleans()).map(lambda f: (f[0] << 3 | f[1]).to_bytes(2, "big")
                                                                          + b"\0\0\0\1"))
EXTENSIONS = st.tuples(st.lists(_SKIPPED, max_size=10), st.none() | _FRAGMENT, st.integers(0, 10)).map(
    lambda c: c[0][: c[2]] + ([] if c[1] is None else [(44, c[1])]) + c[0][c[2]:])
"""Hop-by-Hop, Routing and Destination Options headers (up to 10: past the 8 walked), and at most one
fragment header anywhere among them (the first fragment, a later one, or an atomic one)."""


def some_packet6(proto: int, sport: int, dport: int, extensions, payload: bytes) -> bytes:
    if proto == 6:
        return tcp6(PEER6, ME6, sport, dport, extensions=tuple(extensions))
    if proto == 17:
        return udp6(PEER6, ME6, sport, dport, payload, extensions=tuple(extensions))
    if proto == 58:
        return icmp6_echo(PEER6, ME6, reply=bool(sport & 1), extensions=tuple(extensions))
    return ipv6(PEER6, ME6, proto, payload, extensions=tuple(extensions))


@settings(max_examples=600, deadline=None)
@given(proto=st.sampled_from([6, 17, 58, 1, 47, 59]), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       extensions=EXTENSIONS,
       payload=st.binary(max_size=8), cut=st.one_of(st.just(0), st.integers(0, 48)),
       mangle=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3), outbound=st.booleans())
def test_the_thread_keys_an_ipv6_packet_as_the_filter_does(proto, sport, dport, extensions, payload, cut, mangle,
                                                           outbound):
    """Extension headers walked to the upper layer (or not: fragments, too many, past the payload), ICMPv6."""
    packet = mangled(some_packet6(proto, sport, dport, extensions, payload), mangle, cut)
    assert NATIVE_MODULE.flow_key(packet, outbound) == python_key(packet, outbound)


def test_a_flow_key_names_the_peer_and_the_ports_from_this_nodes_side():
    assert NATIVE_MODULE.flow_key(udp(PEER, ME, 1234, 5000), False) == struct.pack("!BBBx16sHH", 0, 17, 4,
                                                                                  bytes([100, 64, 0, 1]), 1234, 5000)
    assert NATIVE_MODULE.flow_key(udp(ME, PEER, 5000, 1234), True)[4:20] == bytes([100, 64, 0, 1]) + bytes(12)
    assert NATIVE_MODULE.flow_key(icmp_echo(PEER, ME, reply=True), False)[20:] == bytes(4)
    peer6 = bytes.fromhex("fd7a115ca1e0") + bytes(9) + b"\1"
    behind = udp6(PEER6, ME6, 1234, 5000, extensions=((0, b""), (60, b"x" * 9)))
    assert NATIVE_MODULE.flow_key(behind, False) == struct.pack("!BBBx16sHH", 0, 17, 6, peer6, 1234, 5000)
    assert NATIVE_MODULE.flow_key(icmp6_echo(ME6, PEER6), True)[20:] == bytes([0, 128, 0, 0])
    assert NATIVE_MODULE.flow_key(udp6(PEER6, ME6, 1, 2, extensions=((44, b"\0\1\0\0\0\7"),)), False) is None, \
        "a fragment: Python's"
    eight, nine = (udp6(PEER6, ME6, 1, 2, extensions=((60, b""),) * n) for n in (8, 9))
    assert NATIVE_MODULE.flow_key(eight, False) == python_key(eight, False) is not None
    assert NATIVE_MODULE.flow_key(nine, False) is None and python_key(nine, False) is None, "past MAX_EXTENSIONS"


def wait_taken(rig, count: int, seconds: float = 5.0) -> list:
    deadline = time.monotonic() + seconds
    taken = []
    while len(taken) < count and time.monotonic() < deadline:
        taken += rig.loop.take()
        time.sleep(0.002)
    return taken


FAMILIES = {
    4: (bytes([100, 64, 0, 1]), lambda sport, body: udp(ME, PEER, sport, 1234, body)),
    6: (bytes.fromhex("fd7a115ca1e0") + bytes(9) + b"\1",
        lambda sport, body: udp6(ME6, PEER6, sport, 1234, body, extensions=((0, b""),))),
}


@pytest.mark.parametrize("version", [4, 6])
def test_with_rules_the_thread_seals_only_flows_python_tracks_and_notes_their_use(rig, peer_socket, version):
    sender, _ = sessions()
    overlay, make = FAMILIES[version]
    install_sender(rig, sender, peer_socket, overlay=overlay)
    tracked, other = make(5000, b"tracked"), make(5001, b"other")
    tracked_key = NATIVE_MODULE.flow_key(tracked, True)
    assert rig.loop.flows(True, False, []) == []
    rig.loop.start()
    rig.tun_peer.send(tun_read(tracked))
    assert wait_taken(rig, 1) == [(tun_read(tracked), None, 0, 0)], "not tracked yet: Python's"
    assert rig.loop.flows(True, False, [(tracked_key, FAR)]) == []
    before = time.monotonic()
    rig.tun_peer.send(tun_read(tracked))
    rig.tun_peer.send(tun_read(other))
    assert len(received_datagrams(peer_socket, 1)[0]) == len(tracked) + 32
    assert wait_taken(rig, 1) == [(tun_read(other), None, 0, 0)]
    [(key, used)] = rig.loop.flows(True, False, [])
    assert key == tracked_key and before <= used <= time.monotonic()
    assert rig.loop.flows(True, False, []) == [], "a use is noted once"
    rig.loop.flows(True, True, [])
    rig.tun_peer.send(tun_read(tracked))
    assert wait_taken(rig, 1) == [(tun_read(tracked), None, 0, 0)], "a reset forgets every flow at once"
    rig.loop.flows(False, False, [])
    rig.tun_peer.send(tun_read(other))
    assert len(received_datagrams(peer_socket, 1)[0]) == len(other) + 32, "without rules everything is the thread's"
    assert sender.shared_counter.value == 2


def test_with_rules_the_thread_delivers_only_flows_python_let_in_and_hands_back_the_rest_opened(rig):
    sender, receiver = sessions()
    window = NATIVE_MODULE.NativeWindow(receiver.window)
    rig.loop.replace([(2, receiver.recv_key, window, bytes([100, 64, 0, 1]), PEER_KEY, FAR)], [], ACCEPT4, b"", [])
    allowed, other = udp(PEER, ME, 1234, 5000, b"allowed"), udp(PEER, ME, 1234, 6000, b"other")
    broadcast = bytearray(udp(PEER, ME, 1234, 5000, b"cast"))
    broadcast[16:20] = BROADCAST4
    broadcast = bytes(broadcast)  # header checksum unchecked on this path
    rig.loop.flows(True, False, [(NATIVE_MODULE.flow_key(allowed, False), FAR)])
    rig.loop.start()
    rig.send(sealed(sender, [allowed, other, broadcast, allowed]))
    taken = wait_taken(rig, 1)
    assert taken == [(other, None, -1 - 2, 0)], "opened, for the filter to judge"
    deadline, rows = time.monotonic() + 5, []
    while sum(row[1] for row in rows) < 4 and time.monotonic() < deadline:
        rows += rig.loop.counts()[0]
        time.sleep(0.002)
    assert sum(row[1] for row in rows) == 4, "every opened packet counts as received"
    # A flow's key names the peer and the ports, not the destination: the rules judge a broadcast of a
    # flow as they judge its unicast (meshvpn.lan.flowcache).
    assert [w[10:] for w in rig.tun_writes()] == [allowed, broadcast, allowed]
    rig.loop.flows(True, True, [])
    rig.send(sealed(sender, [allowed]))
    assert wait_taken(rig, 1) == [(allowed, None, -1 - 2, 0)], "a reset: the cached accept is gone"


def test_a_broadcast_flow_the_filter_let_in_is_the_threads_but_one_out_of_hops_is_judged(rig):
    sender, receiver = sessions()
    window = NATIVE_MODULE.NativeWindow(receiver.window)
    rig.loop.replace([(2, receiver.recv_key, window, bytes([100, 64, 0, 1]), PEER_KEY, FAR)], [], ACCEPT4, b"", [])
    cast, spent = udp(PEER, "100.64.0.255", 1234, 27015, b"cast"), udp(PEER, "100.64.0.255", 1234, 27015, b"x", ttl=0)
    rig.loop.flows(True, False, [(NATIVE_MODULE.flow_key(cast, False), FAR)])
    rig.loop.start()
    rig.send(sealed(sender, [cast, spent, cast]))
    assert wait_taken(rig, 1) == [(spent, None, -1 - 2, 0)], "TTL 0: the LAN party drops and counts it"
    deadline, rows = time.monotonic() + 5, []
    while sum(row[1] for row in rows) < 3 and time.monotonic() < deadline:
        rows += rig.loop.counts()[0]
        time.sleep(0.002)
    assert sum(row[9] for row in rows) == 2, "counted as broadcasts received"
    assert [w[10:] for w in rig.tun_writes()] == [cast, cast]
