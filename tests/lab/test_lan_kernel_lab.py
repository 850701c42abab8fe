"""What the Linux kernel does on a meshvpn-style TUN, checked in a namespace with the LAN cores.

One namespace holds a TUN `meshvpn0` (100.64.0.1/24, set up as the daemon sets it up) and a
veth pair that carries the default route, as a machine's LAN would. A script inside it:

* writes broadcasts and a unicast into the TUN, as the node delivers them from peers, and
  checks that a socket bound to 0.0.0.0 with SO_BROADCAST receives each;
* joins, is queried about and leaves a group, and feeds what the kernel writes to the TUN to
  `meshvpn.lan.igmp` and `LocalGroups`;
* sends limited broadcasts and multicasts in each style an application may use and records
  which of them the kernel writes to the TUN (so which can reach the mesh: docs/lan-party.md),
  then again with the host routes docs/lan-party.md offers for the styles that do not.
"""

from __future__ import annotations

import json
import sys

import pytest

from meshvpn.lab import Lab

SCRIPT = r"""
import ipaddress, json, os, select, socket, sys, time
import pytun
from meshvpn.lan import igmp, packets
from meshvpn.lan.groups import LocalGroups
from meshvpn.sim.packets import ip, udp

tun = pytun.TunTapDevice(name="meshvpn0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
tun.addr, tun.netmask = "100.64.0.1", "255.255.255.0"
tun.up()
fd, out = tun.fileno(), {}

def read_ipv4(seconds, proto):
    found, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        packet = os.read(fd, 65535)
        if packet[0] >> 4 == 4 and packet[9] == proto:
            found.append(packet)
    return found

receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
receiver.bind(("0.0.0.0", 27015))
receiver.settimeout(1.0)
out["delivered"] = {}
for dst in ("100.64.0.255", "255.255.255.255", "100.64.0.1"):
    os.write(fd, udp("100.64.0.2", dst, 5000, 27015, dst.encode()))
    try:
        data, source = receiver.recvfrom(100)
        out["delivered"][dst] = [data.decode(), source[0]]
    except socket.timeout:
        out["delivered"][dst] = None

local = LocalGroups(now=time.monotonic())
def learn(seconds):
    for packet in read_ipv4(seconds, packets.PROTO_IGMP):
        report = igmp.parse_report(packet)
        if report is not None:
            local.report(report, time.monotonic())
    return sorted(str(ipaddress.IPv4Address(g)) for g in local.groups)

member = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
mreq = socket.inet_aton("224.0.2.60") + socket.inet_aton("100.64.0.1")
member.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
out["after_join"] = learn(1.5)
local.report(igmp.Report(3, left=frozenset({ip("224.0.2.60")})), time.monotonic())  # as if a leave came
for query in local.packets_to_send(time.monotonic()):
    os.write(fd, query)
out["after_query"] = learn(1.5)
local.handle_timer(time.monotonic() + igmp.LAST_MEMBER_QUERY_TIME)
out["still_joined"] = sorted(str(ipaddress.IPv4Address(g)) for g in local.groups)
member.close()
out["after_leave"] = learn(1.5)
local.handle_timer(time.monotonic() + igmp.LAST_MEMBER_QUERY_TIME)
out["expired"] = sorted(local.groups)

for argv in (["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
             ["ip", "addr", "add", "192.168.7.2/24", "dev", "lan0"], ["ip", "link", "set", "lan0", "up"],
             ["ip", "link", "set", "lan1", "up"], ["ip", "route", "add", "default", "via", "192.168.7.1"]):
    os.spawnvp(os.P_WAIT, argv[0], argv)
read_ipv4(0.3, packets.PROTO_UDP)

def style(dst, bind=None, device=None, multicast_if=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if device:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device)
    if multicast_if:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(multicast_if))
    if bind:
        sock.bind((bind, 0))
    sock.sendto(b"discover", (dst, 27015))
    sock.close()
    return len(read_ipv4(0.3, packets.PROTO_UDP))

out["to_tun"] = {
    "limited, unbound": style("255.255.255.255"),
    "limited, bound to 0.0.0.0": style("255.255.255.255", bind="0.0.0.0"),
    "limited, bound to the overlay address": style("255.255.255.255", bind="100.64.0.1"),
    "limited, SO_BINDTODEVICE meshvpn0": style("255.255.255.255", device=b"meshvpn0"),
    "network broadcast, unbound": style("100.64.0.255"),
    "multicast, unbound": style("224.0.2.60"),
    "multicast, bound to the overlay address": style("224.0.2.60", bind="100.64.0.1"),
    "multicast, IP_MULTICAST_IF overlay address": style("224.0.2.60", multicast_if="100.64.0.1"),
}
for argv in (["ip", "route", "add", "255.255.255.255/32", "dev", "meshvpn0"],
             ["ip", "route", "add", "224.0.0.0/4", "dev", "meshvpn0"]):
    os.spawnvp(os.P_WAIT, argv[0], argv)
out["to_tun_with_routes"] = {
    "limited, unbound": style("255.255.255.255"),
    "multicast, unbound": style("224.0.2.60"),
}
print(json.dumps(out))
"""


@pytest.mark.lab
@pytest.mark.timeout(60)
def test_kernel_delivers_broadcasts_reports_groups_and_routes_each_sending_style() -> None:
    with Lab() as lab:
        ns = lab.namespace("lan")
        done = ns.run([sys.executable, "-c", SCRIPT], timeout=40)
    out = json.loads(done.stdout)
    assert out["delivered"] == {
        "100.64.0.255": ["100.64.0.255", "100.64.0.2"],
        "255.255.255.255": ["255.255.255.255", "100.64.0.2"],
        "100.64.0.1": ["100.64.0.1", "100.64.0.2"],
    }
    assert out["after_join"] == ["224.0.2.60"]
    assert out["after_query"] == ["224.0.2.60"]
    assert out["still_joined"] == ["224.0.2.60"], "the kernel's answer to the group query kept the group"
    assert out["after_leave"] == ["224.0.2.60"] and out["expired"] == []
    assert out["to_tun"] == {
        "limited, unbound": 0,
        "limited, bound to 0.0.0.0": 0,
        "limited, bound to the overlay address": 1,
        "limited, SO_BINDTODEVICE meshvpn0": 1,
        "network broadcast, unbound": 1,
        "multicast, unbound": 0,
        "multicast, bound to the overlay address": 1,
        "multicast, IP_MULTICAST_IF overlay address": 1,
    }
    assert out["to_tun_with_routes"] == {"limited, unbound": 1, "multicast, unbound": 1}
