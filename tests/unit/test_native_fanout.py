"""The fan-out hold (meshvpn/_fastpath_fanout.c): while the LAN party's budget is spent, the thread
drops broadcast and multicast TUN reads itself instead of waking Python for each.

Real parts as in ``test_native_loop``: the thread on a loopback UDP socket, an AF_UNIX socket for
the TUN.  Python's side is ``meshvpn.lan.fanout.Fanout.held_until``.  Waits are bounded.
"""

import time

import pytest

from meshvpn.config import FanoutConfig
from meshvpn.lan import igmp
from meshvpn.lan.fanout import RATE_BYTES, RATE_PACKETS, Fanout
from meshvpn.sim.packets import icmp6_echo, igmp_v2, mld_v1, udp, udp6
from tests.unit.test_fastpath import ACCEPT4, NATIVE_MODULE
from tests.unit.test_native_flows import wait_taken
from tests.unit.test_native_loop import rig, tun_read  # noqa: F401 (fixture)

pytestmark = pytest.mark.needs(NATIVE_MODULE is None, "meshvpn._fastpath was not built (make setup builds it)")
ME, ME6 = "100.64.0.2", "fd7a:115c:a1e0::2"
FANNED_OUT = [udp(ME, "100.64.0.255", 5000, 9, b"network broadcast"), udp(ME, "255.255.255.255", 5000, 9, b"limited"),
              udp(ME, "224.0.2.60", 5000, 4445, b"group"), udp6(ME6, "ff02::fb", 5353, 5353, b"mdns")]
"""What the LAN party would copy to peers: held while the budget is spent."""
OWN_BUSINESS = [igmp_v2(ME, igmp.V2_REPORT, "224.0.2.60"), mld_v1(ME6, 131, "ff02::fb"),
                icmp6_echo(ME6, "ff02::1"), udp(ME, "100.64.0.9", 5000, 9, b"no such peer")]
"""IGMP, MLD and ICMPv6 are the node's own, and unicast never waits on the budget: always handed over."""


def test_while_held_the_thread_drops_fanned_out_reads_and_counts_them(rig):
    rig.loop.replace([], [], ACCEPT4, b"", [])
    rig.loop.start()
    assert rig.loop.hold_fanout(time.monotonic() + 60) == 0
    for packet in FANNED_OUT + OWN_BUSINESS:
        rig.tun_peer.send(tun_read(packet))
    taken = wait_taken(rig, len(OWN_BUSINESS))
    assert [message for message, *_ in taken] == [tun_read(packet) for packet in OWN_BUSINESS]
    assert rig.loop.hold_fanout(0.0) == len(FANNED_OUT), "each dropped read counted once"
    assert rig.loop.hold_fanout(0.0) == 0
    for packet in FANNED_OUT:
        rig.tun_peer.send(tun_read(packet))
    assert [message for message, *_ in wait_taken(rig, len(FANNED_OUT))] == [tun_read(p) for p in FANNED_OUT], \
        "released: Python decides again"


def test_the_hold_lasts_until_the_buckets_could_pay_for_another_fan_out_like_the_last():
    fanout = Fanout(FanoutConfig(packets_per_second=500, bytes_per_second=1 << 20, burst=1.0), now=0.0)
    peers = ["b", "c", "d"]
    while fanout.admit(100, peers, 0.0):
        assert fanout.held_until <= 0.0 or fanout.packets.tokens < 3
    assert fanout.held_until == pytest.approx(0.0 + (3 - fanout.packets.tokens) / 500)
    assert fanout.dropped == {RATE_PACKETS: 1}
    fanout.held(40)
    assert fanout.dropped == {RATE_PACKETS: 41}, "the thread's drops count as the budget's"
    assert fanout.admit(100, peers, fanout.held_until) == peers, "paid for at the time it named"
    small = Fanout(FanoutConfig(packets_per_second=500, bytes_per_second=1000, burst=1.0), now=0.0)
    assert small.admit(600, ["b"], 0.0) == ["b"] and not small.admit(600, ["b"], 0.0)
    assert small.held_until == pytest.approx(0.2) and small.dropped == {RATE_BYTES: 1}
    small.held(2)
    assert small.dropped == {RATE_BYTES: 3}
    crowd = Fanout(FanoutConfig(packets_per_second=10, bytes_per_second=1 << 20, burst=1.0), now=0.0)
    assert not crowd.admit(10, list(range(20)), 0.0), "more copies than the bucket holds"
    assert crowd.held_until == 0.0, "never held longer than until the bucket is full"
