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
from meshvpn.sim.packets import icmp_echo, tcp, udp
from tests.unit.test_fastpath import ACCEPT4, BROADCAST4, NATIVE_MODULE, sessions
from tests.unit.test_native_loop import FAR, PEER_KEY, install_sender, peer_socket, received_datagrams, rig, \
    sealed, tun_read  # noqa: F401 (fixtures)

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
ME, PEER = "100.64.0.2", "100.64.0.1"


def python_key(packet: bytes, outbound: bool):
    try:
        header = packets.parse(packet)
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


@settings(max_examples=400, deadline=None)
@given(proto=st.sampled_from([1, 6, 17, 47]), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       flags=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x2005]), payload=st.binary(max_size=8),
       cut=st.integers(0, 40), mangle=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=3),
       outbound=st.booleans())
def test_the_thread_keys_a_packet_as_the_filter_does(proto, sport, dport, flags, payload, cut, mangle, outbound):
    packet = bytearray(some_packet(proto, sport, dport, flags, payload))
    for at, value in mangle:
        if at < len(packet):
            packet[at] = value
    packet = bytes(packet[: len(packet) - cut] if cut < len(packet) else packet)
    assert NATIVE_MODULE.flow_key(packet, outbound) == python_key(packet, outbound)


def test_a_flow_key_names_the_peer_and_the_ports_from_this_nodes_side():
    assert NATIVE_MODULE.flow_key(udp(PEER, ME, 1234, 5000), False) == struct.pack("!BB2x4sHH", 0, 17, bytes([100, 64, 0, 1]),
                                                                                  1234, 5000)
    assert NATIVE_MODULE.flow_key(udp(ME, PEER, 5000, 1234), True)[4:8] == bytes([100, 64, 0, 1])
    assert NATIVE_MODULE.flow_key(icmp_echo(PEER, ME, reply=True), False)[8:] == bytes(4)


def wait_taken(rig, count: int, seconds: float = 5.0) -> list:
    deadline = time.monotonic() + seconds
    taken = []
    while len(taken) < count and time.monotonic() < deadline:
        taken += rig.loop.take()
        time.sleep(0.002)
    return taken


def test_with_rules_the_thread_seals_only_flows_python_tracks_and_notes_their_use(rig, peer_socket):
    sender, _ = sessions()
    install_sender(rig, sender, peer_socket, overlay=bytes([100, 64, 0, 1]))
    tracked, other = udp(ME, PEER, 5000, 1234, b"tracked"), udp(ME, PEER, 5001, 1234, b"other")
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
    taken = wait_taken(rig, 2)
    assert taken == [(other, None, -1 - 2, 0), (broadcast, None, -1 - 2, 0)], "opened, for the filter to judge"
    deadline, rows = time.monotonic() + 5, []
    while sum(row[1] for row in rows) < 4 and time.monotonic() < deadline:
        rows += rig.loop.counts()[0]
        time.sleep(0.002)
    assert sum(row[1] for row in rows) == 4, "every opened packet counts as received"
    assert [w[10:] for w in rig.tun_writes()] == [allowed, allowed]
    rig.loop.flows(True, True, [])
    rig.send(sealed(sender, [allowed]))
    assert wait_taken(rig, 1) == [(allowed, None, -1 - 2, 0)], "a reset: the cached accept is gone"
