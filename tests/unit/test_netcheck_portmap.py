"""netcheck's port-mapping lines: what the gateway speaks, and the running daemon's mapping."""

from meshvpn.node.netcheck import render_port_mapping


def test_protocols_and_the_mapping_in_use() -> None:
    report = {"available": ["pcp", "nat-pmp", "upnp"], "error": None, "gateway": "10.1.0.1",
              "daemon": {"state": "mapped", "protocol": "pcp", "external": "203.0.113.100:41641",
                         "expires_in": 7180.4, "available": ["pcp"], "error": None}}
    assert render_port_mapping(report) == [
        "port mapping: pcp, nat-pmp, upnp",
        "port mapping in use: 203.0.113.100:41641 via pcp, 7180 s left",
    ]


def test_nothing_answered_says_why_and_a_daemon_without_mapping_says_so() -> None:
    report = {"available": [], "error": "the gateway answered none of pcp, nat-pmp, upnp",
              "daemon": {"state": "off"}}
    assert render_port_mapping(report) == [
        "port mapping: none (the gateway answered none of pcp, nat-pmp, upnp)",
        "port mapping in use: none (off)",
    ]
    assert render_port_mapping({"state": "none", "error": "no IPv4 default gateway", "daemon": None}) == [
        "port mapping: none (no IPv4 default gateway)",
    ]


def test_the_tcp_punch_ports_mapping_has_its_own_line() -> None:
    tcp = {"state": "none", "protocol": None, "external": None, "expires_in": None, "error": "pcp: not authorized"}
    report = {"available": ["pcp"], "error": None,
              "daemon": {"state": "mapped", "protocol": "pcp", "external": "203.0.113.100:41641",
                         "expires_in": 60.0, "error": None, "tcp": tcp}}
    assert render_port_mapping(report)[1:] == [
        "port mapping in use: 203.0.113.100:41641 via pcp, 60 s left",
        "tcp port mapping in use: none (pcp: not authorized)",
    ]
    tcp.update(state="mapped", protocol="pcp", external="203.0.113.100:41641", expires_in=59.6, error=None)
    assert render_port_mapping(report)[2] == "tcp port mapping in use: 203.0.113.100:41641 via pcp, 60 s left"
