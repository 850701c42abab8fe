"""The coord passes a node's fresh TCP port sample on in its peer's punch, only at the node's own address."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.coord.candidates import SAMPLE_LIFETIME
from meshvpn.coord.membership import Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network

NOW = 1_700_000_000.0
LAN = (m.Endpoint("10.1.0.11", 41641),)
HARD = "203.0.113.7"


def _pair() -> Membership:
    core = Membership(MemoryStore(), MembershipSettings((Network("home", "10.77.0.0/24"),), keepalive=15.0), NOW)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    core.node_connected(1, b"\x01" * 32, HARD, NOW, observed_port=50000)
    core.receive(1, m.encode(m.Register("hard", "0.1", LAN, token, tcp_punch=True)), NOW)
    core.node_connected(2, b"\x02" * 32, "198.51.100.1", NOW, observed_port=41641)
    core.receive(2, m.encode(m.Register("easy", "0.1", LAN, token, tcp_punch=True)), NOW)
    core.actions()
    return core


def _punches(core: Membership) -> dict[int, m.Punch]:
    return {a.conn_id: a.message for a in core.actions() if isinstance(a, Send) and isinstance(a.message, m.Punch)}


@pytest.mark.parametrize("host, passed", [(HARD, True), ("192.0.2.99", False)])
def test_a_tcp_sample_reaches_the_peer_s_punch_only_at_the_node_s_own_address(host, passed):
    core = _pair()
    sample = m.Endpoint(host, 40001)
    core.receive(1, m.encode(m.PunchRequest(b"\x02" * 32, tcp_sample=sample)), NOW + 1)
    punches = _punches(core)
    assert punches[2].tcp_sample == (sample if passed else None), "the easy side connects above it"
    assert punches[1].tcp_sample is None, "the sampling side gets no sample of its own"
    assert punches[2].sample is None, "a TCP sample is no UDP candidate"
    assert sample not in punches[2].endpoints


def test_a_tcp_sample_goes_stale_after_the_sample_lifetime():
    core = _pair()
    sample = m.Endpoint(HARD, 40001)
    core.receive(1, m.encode(m.PunchRequest(b"\x02" * 32, tcp_sample=sample)), NOW + 1)
    core.actions()
    core.receive(2, m.encode(m.PunchRequest(b"\x01" * 32)), NOW + 1 + SAMPLE_LIFETIME / 2)
    assert _punches(core)[2].tcp_sample == sample, "the peer's own request within the lifetime carries it"
    core.receive(2, m.encode(m.PunchRequest(b"\x01" * 32)), NOW + 1.5 + SAMPLE_LIFETIME)
    assert _punches(core)[2].tcp_sample is None


@settings(max_examples=100, deadline=None)
@given(port=st.integers(min_value=1, max_value=65535))
def test_the_tcp_sample_fields_round_trip(port: int) -> None:
    sample = m.Endpoint("203.0.113.9", port)
    for message in (m.PunchRequest(b"\x01" * 32, tcp_sample=sample), m.Punch(b"\x01" * 32, (), tcp_sample=sample)):
        assert m.decode(m.encode(message)) == message


def test_a_node_on_ipv6_may_send_a_tcp_sample_at_its_public_ipv4_address():
    core = Membership(MemoryStore(), MembershipSettings((Network("home", "10.77.0.0/24"),), keepalive=15.0), NOW)
    token = core.create_auth_key("home", secret=bytes(32), now=NOW, reusable=True)[0]
    public = m.Endpoint(HARD, 41641)
    core.node_connected(1, b"\x01" * 32, "2001:db8:1:1::b", NOW, observed_port=50000)
    core.receive(1, m.encode(m.Register("hard", "0.1", LAN, token, public_endpoint=public)), NOW)
    core.node_connected(2, b"\x02" * 32, "198.51.100.1", NOW, observed_port=41641)
    core.receive(2, m.encode(m.Register("easy", "0.1", LAN, token, tcp_punch=True)), NOW)
    core.actions()
    for host, passed in ((HARD, True), ("192.0.2.99", False)):
        sample = m.Endpoint(host, 40001)
        core.receive(1, m.encode(m.PunchRequest(b"\x02" * 32, tcp_sample=sample)), NOW + 1)
        assert _punches(core)[2].tcp_sample == (sample if passed else None)
