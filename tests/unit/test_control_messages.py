"""Control-message schema: exact round trips, strict refusals, and no exception but the remote kind."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.control import schema
from meshvpn.errors import RemoteProtocolError
from meshvpn.portspec import parse_service

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))

PEER = m.PeerInfo(
    key=KEY_B,
    name="laptop",
    address="10.77.0.3",
    online=True,
    local_endpoints=(m.Endpoint("192.168.1.20", 41641),),
    public_endpoint=m.Endpoint("203.0.113.7", 62000),
    observed_host="203.0.113.7",
    home_relay="fra",
    last_seen=1700000000.5,
)

SAMPLES = [
    m.Register("laptop", "0.1.0", (m.Endpoint("192.168.1.20", 41641), m.Endpoint("fd00::1", 41641))),
    m.Register("pc", "0.1.0", (), auth_key="mvk-abc-def", os="linux", public_endpoint=m.Endpoint("198.51.100.9", 1)),
    m.Register("pc", "0.1.0", (), deltas=True),
    m.Endpoints(local=(m.Endpoint("10.1.2.3", 5),), public=None),
    m.Endpoints(local=(), public=m.Endpoint("198.51.100.9", 65535)),
    m.Endpoints(local=(), public=None, nat=m.NatInfo(False, "sequential")),
    m.PunchRequest(KEY_B),
    m.PunchRequest(KEY_B, sample=m.Endpoint("203.0.113.7", 30001)),
    m.Ping(),
    m.Pong(),
    m.Leave(),
    m.RelayHome("fra"),
    m.Paths((m.PeerPath("pc", "direct"), m.PeerPath("phone", None), m.PeerPath("tv", "relay"))),
    m.Registered(
        KEY_A, "laptop", "10.77.0.2", m.NetworkInfo("home", "10.77.0.0/24"),
        (m.RelayInfo("fra", "relay.example.net", 7500, KEY_B),),
    ),
    m.Registered(
        KEY_A, "laptop", "10.77.0.2", m.NetworkInfo("home", "10.77.0.0/24"),
        (m.RelayInfo("fra", "relay.example.net", 7500, KEY_B),), (m.RelayToken("fra", bytes(range(80)), 1.7e9),),
    ),
    m.Registered(KEY_A, "laptop", "10.77.0.2", m.NetworkInfo("home", "10.77.0.0/24"), path_reports=True),
    m.RelayTokens((m.RelayToken("fra", bytes(range(80)), 1.7e9), m.RelayToken("ams", bytes(80), 1.7e9))),
    m.RelayTokens((), turn=(m.TurnServer("turn-1", "203.0.113.30", 3478, "1700000600:node", "pw==", 1.7e9),)),
    m.TurnRelayed((m.Endpoint("203.0.113.30", 50001),)),
    m.PeerUpdate(m.PeerInfo(KEY_A, "pc", "10.77.0.4", True, turn_relayed=(m.Endpoint("203.0.113.30", 50002),))),
    m.PeerMap((PEER, m.PeerInfo(KEY_A, "pc", "10.77.0.4", False))),
    m.PeerMap((PEER,), part=3, last=True),
    m.PeerUpdate(PEER),
    m.PeerRemove(KEY_B),
    m.PeerDelta((PEER,), (KEY_A,)),
    m.PeerDelta(removed=(KEY_A, KEY_B)),
    m.PeerDelta(changed=(m.Patch(KEY_B, (("online", False), ("home_relay", None))), m.Patch(KEY_A))),
    m.Register("pc", "0.1.0", (), deltas=True, delta_version=2),
    m.Punch(KEY_B, (m.Endpoint("203.0.113.7", 62000),), at=None),
    m.Punch(KEY_B, (), at=12.5),
    m.Punch(KEY_B, (m.Endpoint("203.0.113.7", 30001),), nat=m.NatInfo(False, "random"),
            sample=m.Endpoint("203.0.113.7", 30001)),
    m.Error("auth_key_used", "auth key 0123 was already used"),
    m.Register("pc", "0.1.0", (), lan_party=True),
    m.Groups(("224.0.0.251", "239.255.255.250")),
    m.Groups(()),
    m.Registered(KEY_A, "laptop", "10.77.0.2", m.NetworkInfo("home", "10.77.0.0/24"), lan_party=True),
    m.Access(m.AccessInfo("deny", (m.RuleInfo(0, "allow", ("*",), (parse_service("udp/27015"),)),))),
    m.Access(None),
    m.PeerUpdate(m.PeerInfo(KEY_A, "pc", "10.77.0.4", True, groups=("224.0.2.60",))),
    m.Register("pc", "0.1.0", (), peer_relays=True),
    m.Registered(KEY_A, "host", "10.77.0.2", m.NetworkInfo("home", "10.77.0.0/24"), relaying=True),
    m.PeerUpdate(m.PeerInfo(KEY_A, "host", "10.77.0.2", True, peer_relay=True)),
    m.Relays((m.RelayInfo("fra", "relay.example.net", 7500, KEY_B),
              m.RelayInfo("host", "198.51.100.5", 41641, KEY_A, peer=True)),
             (m.RelayToken("host", bytes(range(80)), 1.7e9),), relaying=False),
    m.Relays((), (), relaying=True),
    m.Register("pc", "0.1.0", (), mapped=m.Endpoint("203.0.113.7", 41641), mapped_tcp=m.Endpoint("203.0.113.7", 50000)),
    m.Endpoints(local=(), public=None, mapped_tcp=m.Endpoint("203.0.113.7", 50000)),
    m.PeerUpdate(m.PeerInfo(KEY_A, "pc", "10.77.0.4", True, public_tcp=m.Endpoint("203.0.113.7", 41641),
                            mapped_tcp=m.Endpoint("203.0.113.7", 50000))),
    m.RelayHome("fra", rtts=(m.RelayRtt("fra", 41), m.RelayRtt("host", 3))),
    m.PeerUpdate(m.PeerInfo(KEY_A, "pc", "10.77.0.4", True, home_relay="fra", relay_rtts=(m.RelayRtt("fra", 41),))),
]


@pytest.mark.parametrize("groups, problem", [
    (["10.0.0.1"], "not a multicast group"),
    (["224.0.0.0251"], "224.0.0.0251"),
    (["224.0.0.251"] * (m.MAX_GROUPS + 1), "more than"),
    ([5], "multicast"),
])
def test_groups_take_only_ipv4_multicast_groups(groups, problem):
    with pytest.raises(m.MalformedMessage, match=problem):
        m.decode(json.dumps({"type": "groups", "groups": groups}))


@pytest.mark.parametrize("groups6, problem", [
    (["fd00::1"], "not a multicast group"), (["224.0.0.251"], "not an IPv6 address"),
    (["FF02::FB"], "not a multicast group"), (["ff02::fb"] * (m.MAX_GROUPS + 1), "more than"),
])
def test_groups6_take_only_ipv6_multicast_groups_as_written_out(groups6, problem):
    with pytest.raises(m.MalformedMessage, match=problem):
        m.decode(json.dumps({"type": "groups", "groups": [], "groups6": groups6}))


def test_a_node_or_coord_that_predates_groups6_reads_the_message_without_them():
    """groups6 is a field of its own: an older reader skips it instead of refusing IPv6 in `groups`."""
    sent = m.encode(m.Groups(("224.0.0.251",), ("ff02::fb",)))
    assert m.decode(sent) == m.Groups(("224.0.0.251",), ("ff02::fb",))
    assert json.loads(sent)["groups"] == ["224.0.0.251"]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda msg: msg.TYPE)
def test_round_trip(message):
    assert m.decode(m.encode(message)) == message


def test_every_message_type_is_sampled():
    assert {msg.TYPE for msg in SAMPLES} == set(m.MESSAGE_TYPES)


def test_wire_shape_is_plain_json_with_base64_keys_and_endpoint_strings():
    obj = json.loads(m.encode(m.PeerUpdate(PEER)))
    assert obj == {
        "type": "peer_update",
        "peer": {
            "key": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
            "name": "laptop",
            "address": "10.77.0.3",
            "online": True,
            "local_endpoints": ["192.168.1.20:41641"],
            "public_endpoint": "203.0.113.7:62000",
            "observed_host": "203.0.113.7",
            "home_relay": "fra",
            "last_seen": 1700000000.5,
        },
    }


def test_optional_fields_may_be_absent_or_null():
    absent = m.decode(b'{"type":"endpoints","local":[]}')
    null = m.decode(b'{"type":"endpoints","local":[],"public":null}')
    assert absent == null == m.Endpoints(local=(), public=None)


def test_ipv6_endpoints_are_bracketed():
    assert str(m.Endpoint("2001:db8::1", 53)) == "[2001:db8::1]:53"
    assert m.parse_endpoint("[2001:db8:0::1]:53") == m.Endpoint("2001:db8::1", 53)


REGISTER = {"type": "register", "hostname": "h", "version": "1", "local_endpoints": []}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"hostname": None}, "hostname"),
        ({"hostname": 5}, "hostname"),
        ({"hostname": ""}, "hostname"),
        ({"hostname": "x" * 256}, "hostname"),
        ({"hostname": "evil\nname"}, "hostname"),
        ({"version": True}, "version"),
        ({"local_endpoints": ["10.0.0.1:1"] * 9}, "more than 8"),
        ({"local_endpoints": ["10.0.0.1"]}, "local_endpoints"),
        ({"local_endpoints": ["10.0.0.1:0"]}, "port 0"),
        ({"local_endpoints": ["10.0.0.1:70000"]}, "local_endpoints"),
        ({"local_endpoints": ["2001:db8::1:80"]}, "bracketed"),
        ({"local_endpoints": ["example.com:80"]}, "not an IP"),
        ({"local_endpoints": "10.0.0.1:1"}, "expected a list"),
        ({"public_endpoint": 7}, "public_endpoint"),
        ({"nat": {"endpoint_independent": True}}, "allocation"),
        ({"nat": {"endpoint_independent": 1, "allocation": "random"}}, "endpoint_independent"),
        ({"nat": {"endpoint_independent": False, "allocation": "lucky"}}, "expected one of"),
        ({f"future_{i}": i for i in range(schema.MAX_UNKNOWN_FIELDS + 1)}, "unknown fields"),
    ],
)
def test_register_refusals_name_the_field(change, problem):
    obj = {key: value for key, value in {**REGISTER, **change}.items() if value is not None}
    with pytest.raises(m.MalformedMessage, match=problem):
        m.decode(json.dumps(obj))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe\x00",
        b"[]",
        b'{"type": 3}',
        b'{"type":"ping","type":"ping"}',
        b'{"type":"punch","peer_key":"AAAA","endpoints":[]}',
        b'{"type":"punch","peer_key":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyB=","endpoints":[]}',
        b'{"type":"punch","peer_key":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=","endpoints":[],"at":NaN}',
        b'{"type":"punch","peer_key":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=","endpoints":[],"at":1e999}',
        b'{"type":"error","code":"teapot","message":""}',
        b'{"type":"registered"}',
        b'{"type":"peer_map","peers":[],"part":-1,"last":true}',
        b'{"type":"peer_map","peers":[],"part":1.5,"last":true}',
        b'{"type":"peer_map","peers":[],"part":true}',
        b'{"type":"peer_map","peers":[],"part":0,"last":1}',
        b'{"type":"paths","paths":[{"peer":"pc","kind":"teleport"}]}',
        b'{"type":"paths","paths":[{"kind":"direct"}]}',
        b'{"type":"paths","paths":{"pc":"direct"}}',
        b"[" * 100000,
        b'{"type":"pong","n":' + b"9" * 5000 + b"}",
    ],
)
def test_garbage_is_malformed(payload):
    with pytest.raises(m.MalformedMessage):
        m.decode(payload)


def test_unknown_type_has_its_own_error():
    with pytest.raises(m.UnknownMessageType):
        m.decode(b'{"type":"hello"}')


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
    max_leaves=30,
)
FIELD_NAMES = st.sampled_from(
    sorted({"type", "x"} | {f for cls in m.MESSAGE_TYPES.values() for f in cls.__dataclass_fields__})
)
MESSAGE_LIKE = st.builds(
    lambda kind, body: {**body, "type": kind},
    st.sampled_from(sorted(m.MESSAGE_TYPES)) | st.text(max_size=10),
    st.dictionaries(FIELD_NAMES, JSONISH, max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(MESSAGE_LIKE | JSONISH)
def test_decode_object_raises_only_remote_errors(obj):
    try:
        message = m.decode_object(obj)
    except RemoteProtocolError:
        return
    assert m.decode(m.encode(message)) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decode_bytes_raises_only_remote_errors(payload):
    try:
        m.decode(payload)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_any_single_field_corruption_is_refused_or_still_valid(message, data):
    obj = json.loads(m.encode(message))
    victim = data.draw(st.sampled_from(sorted(obj)))
    obj[victim] = data.draw(JSONISH)
    try:
        decoded = m.decode(json.dumps(obj))
    except RemoteProtocolError:
        return
    assert m.decode(m.encode(decoded)) == decoded


def test_fields_from_a_newer_version_are_skipped():
    newer = {**REGISTER, "future_field": {"anything": [1, 2]}}
    obj = {key: value for key, value in newer.items() if value is not None}
    assert m.decode(json.dumps(obj)) == m.decode(json.dumps({k: v for k, v in REGISTER.items() if v is not None}))


RTT_ITEMS = st.fixed_dictionaries({"relay": st.text(max_size=8) | st.integers(), "ms": st.integers(-5, 1 << 32) | st.text(max_size=3)})


@settings(max_examples=200, deadline=None)
@given(st.lists(RTT_ITEMS, max_size=m.MAX_RELAY_RTTS + 3) | JSONISH)
def test_relay_round_trips_decode_or_raise_only_remote_errors(rtts):
    """Whatever a node reports as its relays' round trips, the coord decodes it or refuses it, and
    a report past `MAX_RELAY_RTTS` relays is refused."""
    try:
        message = m.decode_object({"type": "relay_home", "relay": "fra", "rtts": rtts})
    except RemoteProtocolError:
        return
    assert message.rtts is None or len(message.rtts) <= m.MAX_RELAY_RTTS
    assert m.decode(m.encode(message)) == message


def test_a_report_of_more_than_eight_relays_is_refused():
    rtts = [{"relay": f"r{i}", "ms": i} for i in range(m.MAX_RELAY_RTTS + 1)]
    with pytest.raises(m.MalformedMessage):
        m.decode_object({"type": "relay_home", "relay": "fra", "rtts": rtts})
