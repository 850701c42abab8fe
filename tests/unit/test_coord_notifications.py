"""The notifications coord instances exchange on PostgreSQL (`meshvpn.coord.instances.parse`):
each kind read back as sent, anything else refused with the remote error."""

import json

import pytest

from meshvpn.control import messages as m
from meshvpn.coord.instances import Notification, parse
from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import encode_key

KEY = bytes([7]) * 32
PUNCH = m.encode(m.Punch(bytes([8]) * 32, (m.Endpoint("198.51.100.9", 61000),)))


def test_each_kind_reads_back_as_sent():
    assert parse(json.dumps({"from": "i1"})) == Notification("i1")
    change = {"from": "i1", "network": "home", "key": encode_key(KEY), "frame": None}
    assert parse(json.dumps(change)) == Notification("i1", "home", KEY, None, punch=False)
    punch = {"from": "i1", "network": "home", "punch": encode_key(KEY), "frame": PUNCH.decode()}
    assert parse(json.dumps(punch)) == Notification("i1", "home", KEY, PUNCH, punch=True)


@pytest.mark.parametrize("payload", [
    "", "not json", "[]", "7", '"from"', '{"from": 3}', '{"network": "home"}',
    '{"from": "i1", "network": "home", "punch": "AAAA", "frame": "x"}',
    json.dumps({"from": "i1", "network": "home", "punch": encode_key(KEY), "frame": None}),
    json.dumps({"from": "i1", "network": 5, "punch": encode_key(KEY), "frame": "x"}),
    json.dumps({"from": "i1", "network": "home", "punch": encode_key(KEY)}),
    json.dumps({"from": "i1", "network": "home", "key": encode_key(KEY), "frame": ["x"]}),
])
def test_junk_is_refused_with_the_remote_error(payload):
    with pytest.raises(RemoteProtocolError):
        parse(payload)
