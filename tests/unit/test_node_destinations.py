"""The destinations a node accepts from its peers: its overlay address first, then broadcast and joined groups."""

import ipaddress

import pytest

from meshvpn.node.destinations import LocalDestinations

packed = lambda *texts: b"".join(ipaddress.ip_address(t).packed for t in texts)


def test_nothing_is_accepted_before_registration():
    assert LocalDestinations().accepted(4) == b"" and LocalDestinations().accepted(16) == b""


def test_own_address_comes_first_then_the_network_broadcast():
    dests = LocalDestinations()
    dests.set_overlay("100.64.3.7", "100.64.0.0/10")
    assert dests.accepted(4) == packed("100.64.3.7", "100.127.255.255")
    assert dests.accepted(16) == b""
    dests.set_overlay("100.64.0.9", "100.64.0.0/24")
    assert dests.accepted(4) == packed("100.64.0.9", "100.64.0.255"), "a new registration replaces the old"


def test_point_to_point_networks_have_no_broadcast():
    dests = LocalDestinations()
    dests.set_overlay("100.64.0.1", "100.64.0.0/31")
    assert dests.accepted(4) == packed("100.64.0.1")


def test_joined_groups_follow_and_can_be_left():
    dests = LocalDestinations()
    dests.set_overlay("100.64.0.1", "100.64.0.0/24")
    dests.join("239.255.0.1")
    dests.join("ff02::1")
    assert dests.accepted(4) == packed("100.64.0.1", "100.64.0.255", "239.255.0.1")
    assert dests.accepted(16) == packed("ff02::1")
    dests.leave("239.255.0.1")
    assert dests.accepted(4) == packed("100.64.0.1", "100.64.0.255")
    with pytest.raises(ValueError):
        dests.join("10.0.0.1")
