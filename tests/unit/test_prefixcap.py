"""Connection caps per source prefix: neither a single host nor a whole subnet gets past them."""

from meshvpn.prefixcap import PrefixCaps, PrefixLimits, prefixes


def test_an_ipv6_host_cannot_sidestep_the_cap_with_new_addresses():
    caps = PrefixCaps(PrefixLimits(per_host=2, per_subnet=8))
    assert caps.admit("2001:db8:0:1::1") is None and caps.admit("2001:db8:0:1::2") is None
    assert caps.admit("2001:db8:0:1::3") == "2001:db8:0:1::/64"
    assert caps.admit("2001:db8:0:2::1") is None


def test_a_subnet_is_capped_across_its_hosts():
    caps = PrefixCaps(PrefixLimits(per_host=2, per_subnet=3))
    assert [caps.admit(f"198.51.100.{n}") for n in range(1, 4)] == [None, None, None]
    assert caps.admit("198.51.100.4") == "198.51.100.0/24"
    caps.release("198.51.100.1")
    assert caps.admit("198.51.100.4") is None and caps.count("198.51.100.4") == 1


def test_a_refused_connection_counts_nowhere():
    caps = PrefixCaps(PrefixLimits(per_host=1, per_subnet=1))
    assert caps.admit("203.0.113.1") is None
    assert caps.admit("203.0.113.2") == "203.0.113.0/24"
    assert caps.count("203.0.113.2") == 0


def test_mapped_ipv4_counts_as_ipv4():
    assert prefixes("::ffff:203.0.113.9") == prefixes("203.0.113.9") == ("203.0.113.9/32", "203.0.113.0/24")
