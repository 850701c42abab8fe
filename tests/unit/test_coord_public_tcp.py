"""The coord reports a node's public TCP endpoint (its punch port's NAT mapping) only when asked to."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.coord.membership import Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network

NOW = 1_700_000_000.0
LAN = (m.Endpoint("10.1.0.11", 41641),)


def _peer_infos(core: Membership, conn: int) -> list[m.PeerInfo]:
    infos = []
    for action in core.actions():
        if isinstance(action, Send) and action.conn_id == conn:
            if isinstance(action.message, m.PeerMap):
                infos += action.message.peers
            elif isinstance(action.message, m.PeerUpdate):
                infos.append(action.message.peer)
    return infos


@pytest.mark.parametrize("tcp_punch, expected", [(True, m.Endpoint("198.51.100.1", 41641)), (None, None)])
def test_public_tcp_is_the_connection_source_of_a_node_that_connects_from_its_punch_port(tcp_punch, expected):
    core = Membership(MemoryStore(), MembershipSettings((Network("home", "10.77.0.0/24"),), keepalive=15.0), NOW)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    core.node_connected(1, b"\x01" * 32, "203.0.113.7", NOW, observed_port=50000)
    core.receive(1, m.encode(m.Register("b1", "0.1", LAN, token)), NOW)
    core.actions()
    core.node_connected(2, b"\x02" * 32, "198.51.100.1", NOW, observed_port=41641)
    core.receive(2, m.encode(m.Register("a1", "0.1", LAN, token, tcp_punch=tcp_punch)), NOW)
    assert [info.public_tcp for info in _peer_infos(core, 1)] == [expected], "b1 hears of a1 at once"
    core.node_connected(3, b"\x03" * 32, "192.0.2.3", NOW + 2, observed_port=1234)
    core.receive(3, m.encode(m.Register("c1", "0.1", LAN, token)), NOW + 2)
    by_name = {info.name: info for info in _peer_infos(core, 3)}
    assert by_name["a1"].public_tcp == expected
    assert by_name["b1"].public_tcp is None, "b1 did not say it connects from a punch port"


@settings(max_examples=100, deadline=None)
@given(port=st.integers(min_value=1, max_value=65535), flag=st.sampled_from([True, False, None]))
def test_the_new_fields_round_trip(port: int, flag) -> None:
    info = m.PeerInfo(b"\x01" * 32, "a1", "10.77.0.2", True, public_tcp=m.Endpoint("203.0.113.9", port))
    assert m.decode(m.encode(m.PeerUpdate(info))) == m.PeerUpdate(info)
    register = m.Register("a1", "0.1", LAN, tcp_punch=flag)
    assert m.decode(m.encode(register)) == register


@pytest.mark.parametrize("bad", ['"yes"', "1", '"203.0.113.9"'])
def test_malformed_tcp_punch_is_a_remote_error(bad: str) -> None:
    with pytest.raises(m.MalformedMessage):
        m.decode('{"type":"register","hostname":"a","version":"1","local_endpoints":[],"tcp_punch":%s}' % bad)
