"""The destinations a node accepts from its peers: its overlay address first, then the broadcasts,
all-hosts and the groups it joined (the destination rule of meshvpn.lan.packets.inbound)."""

import ipaddress

import pytest

from meshvpn.lan.packets import Drop, Header, Overlay, inbound
from meshvpn.node.destinations import LocalDestinations

packed = lambda *texts: b"".join(ipaddress.ip_address(t).packed for t in texts)


def test_nothing_is_accepted_before_registration():
    assert LocalDestinations().accepted(4) == b"" and LocalDestinations().accepted(16) == b""


def test_own_address_comes_first_then_the_network_broadcast():
    dests = LocalDestinations()
    dests.set_overlay("100.64.3.7", "100.64.0.0/10")
    assert dests.accepted(4) == packed("100.64.3.7", "100.127.255.255", "255.255.255.255", "224.0.0.1")
    assert dests.accepted(16) == b""
    dests.set_overlay("100.64.0.9", "100.64.0.0/24")
    assert dests.accepted(4)[:8] == packed("100.64.0.9", "100.64.0.255"), "a new registration replaces the old"


def test_point_to_point_networks_have_no_broadcast():
    dests = LocalDestinations()
    dests.set_overlay("100.64.0.1", "100.64.0.0/31")
    assert dests.accepted(4) == packed("100.64.0.1", "255.255.255.255", "224.0.0.1")


def test_an_ipv6_overlay_takes_all_nodes_as_ipv4_takes_all_hosts():
    dests = LocalDestinations()
    dests.set_overlay("fd7a:115c:a1e0::5", "fd7a:115c:a1e0::/64")
    dests.join("ff02::fb")
    assert dests.accepted(16) == packed("fd7a:115c:a1e0::5", "ff02::1", "ff02::fb")
    assert dests.accepted(4) == b""


def test_joined_groups_follow_and_can_be_left():
    dests = LocalDestinations()
    dests.set_overlay("100.64.0.1", "100.64.0.0/24")
    dests.join("239.255.0.1")
    dests.join("ff02::1")
    dests.join("224.0.0.1")
    link_wide = packed("255.255.255.255", "224.0.0.1")
    assert dests.accepted(4) == packed("100.64.0.1", "100.64.0.255") + link_wide + packed("239.255.0.1")
    assert dests.accepted(16) == packed("ff02::1")
    dests.leave("239.255.0.1")
    dests.leave("224.0.0.1")
    assert dests.accepted(4) == packed("100.64.0.1", "100.64.0.255") + link_wide, "all-hosts is always taken"
    with pytest.raises(ValueError):
        dests.join("10.0.0.1")


def test_the_rule_agrees_with_the_lan_party_classifier():
    """Every destination meshvpn.lan.packets.inbound delivers is accepted here, and nothing else."""
    dests = LocalDestinations()
    dests.set_overlay("100.64.0.1", "100.64.0.0/24")
    dests.join("239.1.2.3")
    overlay = Overlay.of("100.64.0.1", "100.64.0.0/24")
    accepted = dests.accepted(4)
    accepted = {accepted[i:i + 4] for i in range(0, len(accepted), 4)}
    joined = {int(ipaddress.ip_address("239.1.2.3"))}
    for text in ("100.64.0.1", "100.64.0.255", "255.255.255.255", "224.0.0.1", "239.1.2.3", "239.1.2.4",
                 "100.64.0.7", "192.168.1.1", "172.17.0.1", "10.0.0.1"):
        dst = ipaddress.ip_address(text)
        header = Header(src=int(ipaddress.ip_address("100.64.0.2")), dst=int(dst), proto=17, ttl=64, length=28,
                        first_fragment=True, fragmented=False, ident=0)
        delivered = not isinstance(inbound(header, overlay, joined, header.src), Drop)
        assert delivered == (dst.packed in accepted), text
