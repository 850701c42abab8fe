"""Local endpoint selection: no loopback, no link-local, no TUN; a bound address wins."""

from meshvpn.control.messages import MAX_ENDPOINTS, Endpoint
from meshvpn.node.endpoints import select_endpoints

ADDRESSES = [
    ("lo", "127.0.0.1"), ("eth0", "192.168.1.20"), ("meshvpn0", "100.64.0.1"),
    ("wlan0", "169.254.3.4"), ("eth1", "10.0.0.5"), ("eth2", "10.0.0.5"),
]


def test_usable_interfaces_only():
    assert select_endpoints(ADDRESSES, 41641, ("meshvpn0",), "0.0.0.0") == (
        Endpoint("192.168.1.20", 41641), Endpoint("10.0.0.5", 41641),
    )


def test_a_socket_bound_to_one_address_reports_only_it():
    assert select_endpoints(ADDRESSES, 5000, ("meshvpn0",), "10.0.0.5") == (Endpoint("10.0.0.5", 5000),)


def test_at_most_the_schema_limit():
    many = [(f"eth{i}", f"10.0.{i}.1") for i in range(20)]
    assert len(select_endpoints(many, 1, (), "0.0.0.0")) == MAX_ENDPOINTS
