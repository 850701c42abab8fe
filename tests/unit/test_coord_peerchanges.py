"""Field-level peer changes (`peer_delta` format 2): what the coord encodes, applied by a node to
the info it holds, gives exactly the new info; the decoder refuses anything else with the
remote error only; a delta of changes is a fraction of the whole-info one."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.control import messages as m
from meshvpn.coord.peerchanges import FIELDS, PeerStates, change_json, changed_fields
from meshvpn.coord.peermap import PeerEntry, peer_delta_frames, peer_update
from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import encode_key

KEY = bytes(range(32))
ENDPOINTS = st.lists(st.builds(m.Endpoint, st.sampled_from(["192.168.1.10", "10.0.0.1", "2001:db8::1"]),
                               st.integers(1, 65535)), max_size=3).map(tuple)
ENDPOINT = st.none() | st.builds(m.Endpoint, st.sampled_from(["198.51.100.1", "203.0.113.9"]), st.integers(1, 65535))
INFOS = st.builds(
    m.PeerInfo,
    key=st.just(KEY),
    name=st.sampled_from(["laptop", "pc"]),
    address=st.sampled_from(["10.77.0.3", "10.77.0.4"]),
    online=st.booleans(),
    local_endpoints=ENDPOINTS,
    public_endpoint=ENDPOINT,
    observed_host=st.none() | st.just("203.0.113.7"),
    home_relay=st.none() | st.sampled_from(["fra", "ams"]),
    last_seen=st.none() | st.floats(0, 2e9),
    turn_relayed=st.none() | ENDPOINTS,
    public_tcp=ENDPOINT,
    nat=st.none() | st.builds(m.NatInfo, st.booleans(), st.sampled_from(sorted(m.NAT_ALLOCATIONS))),
    groups=st.none() | st.just(("224.0.0.251",)),
    mapped_endpoint=ENDPOINT,
)


@settings(max_examples=300, deadline=None)
@given(INFOS, INFOS)
def test_a_change_applied_to_the_old_info_gives_the_new_one(old, new):
    names = changed_fields(old, new)
    (frame,) = peer_delta_frames((), (), changes=[change_json(new, names)])
    delta = m.decode(frame)
    assert delta == m.PeerDelta(changed=(m.Patch(KEY, tuple((n, getattr(new, n)) for n in FIELDS if n in names)),))
    assert frame == m.encode(delta)
    (patch,) = delta.changed
    assert patch.apply(old) == new
    assert {name for name, _ in patch.changes} == names


@settings(max_examples=100, deadline=None)
@given(st.lists(INFOS, min_size=1, max_size=5))
def test_peer_states_name_what_changed_since_the_last_info_and_nothing_for_a_new_peer(infos):
    states = PeerStates()
    assert states.note(infos[0]) is None
    for old, new in zip(infos, infos[1:]):
        assert states.note(new) == changed_fields(old, new)
    states.forget(KEY)
    assert states.note(infos[-1]) is None and len(states) == 1


def test_an_endpoint_change_is_a_third_of_the_whole_info_or_less():
    old = m.PeerInfo(KEY, "node-1234", "10.64.4.210", True, (m.Endpoint("10.0.0.1", 41641),),
                     m.Endpoint("198.51.100.1", 21234), "127.1.4.235", last_seen=1_796_416_781.123456)
    new = m.PeerInfo(**{**old.__dict__, "public_endpoint": m.Endpoint("203.0.113.9", 40123)})
    whole = peer_delta_frames([peer_update(PeerEntry.of(new))[1]], ())[0]
    change = peer_delta_frames((), (), changes=[change_json(new, changed_fields(old, new))])[0]
    assert json.loads(change)["changed"] == [{"key": json.loads(whole)["peers"][0]["key"],
                                              "public_endpoint": "203.0.113.9:40123"}]
    entry = change_json(new, changed_fields(old, new))
    assert len(entry) * 2.5 < len(PeerEntry.of(new).json)  # what each change adds to a delta


@pytest.mark.parametrize("change, problem", [
    ({}, "missing field 'key'"),
    ({"key": "AAEC"}, "key"),
    ({"key": encode_key(KEY), "online": None}, "online"),
    ({"key": encode_key(KEY), "local_endpoints": None}, "local_endpoints"),
    ({"key": encode_key(KEY), "public_endpoint": "nowhere"}, "public_endpoint"),
    ({"key": encode_key(KEY), **{f"x{n}": 1 for n in range(17)}}, "unknown fields"),
    ([], "expected a JSON object"),
])
def test_a_bad_change_is_refused_with_the_field_named(change, problem):
    with pytest.raises(m.MalformedMessage, match=problem):
        m.decode(json.dumps({"type": "peer_delta", "peers": [], "removed": [], "changed": [change]}))


def test_a_cleared_field_is_null_and_an_unchanged_one_absent_and_unknown_fields_are_skipped():
    (patch,) = m.decode(json.dumps({"type": "peer_delta", "peers": [], "removed": [], "changed": [
        {"key": encode_key(KEY), "home_relay": None, "future": [1]}]})).changed
    info = m.PeerInfo(KEY, "pc", "10.77.0.4", True, home_relay="fra", observed_host="203.0.113.7")
    assert patch.apply(info) == m.PeerInfo(KEY, "pc", "10.77.0.4", True, observed_host="203.0.113.7")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
CHANGE_LIKE = st.dictionaries(st.sampled_from(("key",) + FIELDS + ("x",)), JSONISH, max_size=6).map(
    lambda obj: {"key": encode_key(KEY), **obj} if obj.get("key") is None else obj)


@settings(max_examples=500, deadline=None)
@given(st.lists(CHANGE_LIKE, max_size=3), st.booleans())
def test_decoding_changes_raises_only_remote_errors_and_what_decodes_round_trips(changes, null):
    frame = json.dumps({"type": "peer_delta", "peers": [], "removed": [], "changed": None if null else changes})
    try:
        delta = m.decode(frame)
    except RemoteProtocolError:
        return
    assert m.decode(m.encode(delta)) == delta
