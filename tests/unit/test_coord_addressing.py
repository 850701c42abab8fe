"""Overlay address allocation and node naming."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.coord.addressing import AddressPoolExhausted, allocate_address, dns_label, unique_name


def test_first_address_skips_network_and_dot_one():
    assert allocate_address("10.77.0.0/24", []) == "10.77.0.2"


def test_first_free_is_deterministic_and_fills_gaps():
    assert allocate_address("10.77.0.0/24", ["10.77.0.2", "10.77.0.4"]) == "10.77.0.3"


def test_broadcast_is_never_allocated_and_full_pool_raises():
    taken = [f"10.77.0.{i}" for i in range(2, 6)]
    assert allocate_address("10.77.0.0/29", taken) == "10.77.0.6"
    with pytest.raises(AddressPoolExhausted):
        allocate_address("10.77.0.0/29", taken + ["10.77.0.6"])


def test_ipv6_prefix():
    assert allocate_address("fd7a:115c:a1e0::/120", ["fd7a:115c:a1e0::2"]) == "fd7a:115c:a1e0::3"


@pytest.mark.parametrize(
    "hostname, label",
    [
        ("Laptop", "laptop"),
        ("alice's MacBook Pro", "alice-s-macbook-pro"),
        ("web_01.example.com", "web-01-example-com"),
        ("--x--", "x"),
        ("Müller", "m-ller"),
        ("", "node"),
        ("!!!", "node"),
        ("a" * 80, "a" * 63),
    ],
)
def test_dns_label(hostname, label):
    assert dns_label(hostname) == label


def test_unique_name_suffixes():
    assert unique_name("pc", {"laptop"}) == "pc"
    assert unique_name("PC", {"pc", "pc-2"}) == "pc-3"
    long = "b" * 63
    assert unique_name(long, {long}) == "b" * 61 + "-2"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100), st.sets(st.text(max_size=8), max_size=5))
def test_names_are_always_valid_unused_labels(hostname, taken):
    name = unique_name(hostname, taken)
    assert name not in taken
    assert 1 <= len(name) <= 63
    assert name[0] != "-" and name[-1] != "-"
    assert all(c.isascii() and (c.isalnum() or c == "-") and not c.isupper() for c in name)
