"""IPv6 with access rules: the native thread decides as the Python filter does, and carries what it let in.

A node of an IPv6 network (`fd7a:115c:a1e0::/64`) with random rules takes the same random IPv6
datagrams twice, once through a data path with the native thread (`test_native_access.NativeSide`:
a loopback UDP socket, a real ``TunDevice`` over a socket) and once through a Python-only one:
TCP, UDP and ICMPv6 behind extension headers, fragments, packets for a multicast group, ICMPv6
errors about packets of flows the rules let in or not (which the filter lets in as related). The TUN
gets the same packets, the peer and the filter the same counts; the second time, every packet
whose flow the filter let in the first time is delivered by the thread without Python
(its ``handed to python`` count). Waits are bounded.
"""

import ipaddress
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.lan import flowcache, icmperrors
from meshvpn.lan.access import AccessFilter
from meshvpn.lan.packets6 import parse_any
from meshvpn.portspec import parse_service
from meshvpn.sim.packets import icmp6_echo, icmp6_error, ipv6, tcp6, udp6
from tests.unit.test_native_access import PEER_KEY, NativeSide, Sealer, ruled_plane
from tests.unit.test_native_loop import NATIVE_MODULE

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
OWN6, PEER6 = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"
NETWORK6 = m.NetworkInfo(name="access6", cidr="fd7a:115c:a1e0::/64")
PEER_INFO6 = m.PeerInfo(key=PEER_KEY, name="peer", address=PEER6, online=True)

SERVICES = st.lists(st.sampled_from(["any", "icmp", "tcp", "udp", "tcp/22", "udp/5000-5010"]), min_size=1, max_size=2)
RULES = st.tuples(st.sampled_from(["allow", "deny"]),
                  st.lists(st.tuples(st.sampled_from(["allow", "deny"]), st.booleans(), SERVICES), max_size=3)).map(
    lambda r: m.AccessInfo(r[0], tuple(m.RuleInfo(i, action, ("*",) if everyone else ("peer",),
                                                  tuple(parse_service(s) for s in services))
                                       for i, (action, everyone, services) in enumerate(r[1]))))
PORTS = st.sampled_from([22, 53, 5000, 5005, 6000])
EXTENSIONS = st.sampled_from([(), ((0, b""),), ((60, b"opts"), (43, b"\0\0")),
                              ((44, b"\0\0\0\0\0\1"),),  # an atomic fragment: not fragmented
                              ((44, b"\0\1\0\0\0\7"),),  # the first fragment of a datagram
                              ((0, b""), (44, b"\0\x08\0\0\0\7")),  # a later fragment
                              ((44, b"\0\1\0\0\0\6"), (60, b"")),  # a first fragment, options behind it
                              ((44, b"\0\x08\0\0\0\6"), (60, b""))])  # its later one: next header 60
DESTINATIONS = st.sampled_from([OWN6, OWN6, OWN6, "ff02::1"])
PACKET = st.one_of(
    st.builds(lambda sport, dport, ext, dst: udp6(PEER6, dst, sport, dport, b"u", extensions=ext),
              PORTS, PORTS, EXTENSIONS, DESTINATIONS),
    st.builds(lambda sport, dport, ext: tcp6(PEER6, OWN6, sport, dport, extensions=ext), PORTS, PORTS, EXTENSIONS),
    st.builds(lambda reply, ext: icmp6_echo(PEER6, OWN6, reply, extensions=ext), st.booleans(), EXTENSIONS),
    st.builds(lambda kind: ipv6(PEER6, OWN6, 58, bytes([kind, 0]) + bytes(6)), st.sampled_from([1, 2, 135])),
    st.builds(lambda kind, about: icmp6_error(PEER6, OWN6, about, kind=kind), st.sampled_from([1, 2, 3, 4]),
              st.one_of(st.builds(lambda sport, dport, ext: tcp6(OWN6, PEER6, sport, dport, extensions=ext),
                                  PORTS, PORTS, EXTENSIONS),
                        st.builds(lambda sport, dport: udp6(OWN6, PEER6, sport, dport, b"answer"), PORTS, PORTS),
                        st.builds(lambda reply: icmp6_echo(OWN6, PEER6, reply), st.booleans()),
                        st.builds(lambda sport: udp6(PEER6, OWN6, sport, 22), PORTS))),
)
"""From the peer: TCP, UDP, ICMPv6 echo and other messages to this node or a group; ICMPv6 errors
about packets this node sent the peer (answers of flows the rules may let in) or did not send."""


def served_by_thread(packet: bytes, delivered: list[bytes], rules: m.AccessInfo) -> bool:
    """Whether the thread may deliver `packet` once the filter let its flow in: keyed and let in (for this node or a group);
    an ICMPv6 error only if the rules let it in by itself (one let in as related is judged each time)."""
    header = parse_any(packet)
    if icmperrors.is_error(header):
        bare = AccessFilter()
        bare.configure(rules, {"peer": int(ipaddress.IPv6Address(PEER6))})
        if not bare.inbound(header, 0.0):
            return False
    return packet in delivered and flowcache.flow_key(header, flowcache.INBOUND) is not None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=RULES, packets=st.lists(PACKET, min_size=1, max_size=6))
def test_native_and_python_filters_decide_alike_on_ipv6_and_the_thread_serves_what_was_let_in(rules, packets):
    python = ruled_plane(0.0, rules, OWN6, NETWORK6, PEER_INFO6)
    native, sealer = NativeSide(ruled_plane(time.monotonic(), rules, OWN6, NETWORK6, PEER_INFO6)), Sealer()
    try:
        for step in (1, 2):
            messages = sealer.seal(packets)
            delivered = [bytes(p) for p in python.open_messages([(msg, native.source(0)) for msg in messages],
                                                                10.0 * step)]
            handed = native.receiver.totals["handed to python"]
            assert sorted(native.take(messages, len(delivered))) == sorted(delivered)
            py_peer, native_peer = python.core.peers.find("peer"), native.data.core.peers.find("peer")
            assert (native_peer.counters.rx_packets, native_peer.counters.rx_bytes, native_peer.counters.drops) == \
                (py_peer.counters.rx_packets, py_peer.counters.rx_bytes, py_peer.counters.drops)
            assert native.data.lan.access.dropped == python.lan.access.dropped
            handed = native.receiver.totals["handed to python"] - handed
            if step == 2:
                served = sum(served_by_thread(p, delivered, rules) for p in packets)
                # A group's flow is keyed as its unicast (the peer and the ports): once let in, the thread's too.
                assert handed == len(packets) - served, "what the filter let in passes in the thread"
    finally:
        native.close()


def test_ipv6_rules_name_peers_and_icmp_is_icmpv6():
    """The rules' sources resolve to the peers' IPv6 addresses, and `icmp` lets ICMPv6 echo in."""
    rules = m.AccessInfo("deny", (m.RuleInfo(0, "allow", ("peer",), (parse_service("icmp"), parse_service("tcp/22"))),))
    plane, sealer = ruled_plane(0.0, rules, OWN6, NETWORK6, PEER_INFO6), Sealer()
    packets = [icmp6_echo(PEER6, OWN6), tcp6(PEER6, OWN6, 4000, 22), tcp6(PEER6, OWN6, 4000, 23)]
    delivered = plane.open_messages([(msg, ("192.0.2.1", 1)) for msg in sealer.seal(packets)], 1.0)
    assert [bytes(p) for p in delivered] == packets[:2]
    assert plane.lan.access.dropped == {"default": 1}
