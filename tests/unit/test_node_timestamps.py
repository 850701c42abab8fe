"""Initiation timestamps kept across restarts: a captured initiation replayed after one is refused."""

import json
import os
import random
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.timestamps import (
    FILE_NAME, WRITE_INTERVAL, TimestampFile, TimestampFileError, TimestampJournal, decode, encode, restore,
)
from meshvpn.sim.nodes import Wire, ip_packet, seeded
from meshvpn.wire import Endpoint, MessageType

KEY_A, KEY_B = bytes(range(32)), bytes(range(1, 33))
OLD, NEW = bytes(12), bytes(11) + b"\x01"


def test_a_captured_initiation_replayed_after_a_restart_is_refused(tmp_path):
    """Issue 13, finding 8."""
    a = seeded(random.Random, 1, "alice", "100.64.0.1", Endpoint("192.0.2.1", 41641))
    b = seeded(random.Random, 2, "bob", "100.64.0.2", Endpoint("198.51.100.2", 41641))
    a.register(b)
    b.register(a)
    b.timestamps = restore(b.core.handshakes.timestamps.greatest, TimestampFile(tmp_path))
    wire = Wire(a, b)
    a.send(ip_packet(a.address, b.address), 0.0)
    wire.pump(0.0)
    (initiation,) = [data for _, _, data in wire.log if data[1] == MessageType.HANDSHAKE_INIT]
    TimestampFile(tmp_path).save(b.timestamps.due(0.0, stopping=True))

    b2 = seeded(random.Random, 2, "bob", "100.64.0.2", Endpoint("198.51.100.2", 41641))
    b2.register(a)
    restore(b2.core.handshakes.timestamps.greatest, TimestampFile(tmp_path))
    b2.receive([(initiation, Endpoint("203.0.113.66", 4000))], 1.0)
    assert b2.core.drops["rejected initiation"] == 1
    assert b2.collect() == [], "no response to the replay"
    assert b2.core.peers.find("alice").ring.current is None


def test_the_journal_writes_changes_at_most_every_interval_and_when_stopping():
    live = {KEY_A: OLD}
    journal = TimestampJournal(live)
    assert journal.due(0.0) is None, "nothing changed since the load"
    live[KEY_A] = NEW
    record = journal.due(0.0)
    assert record == {KEY_A: NEW}
    journal.written(record, 0.0)
    live[KEY_B] = OLD
    assert journal.due(WRITE_INTERVAL - 0.1) is None
    assert journal.due(WRITE_INTERVAL - 0.1, stopping=True) == {KEY_A: NEW, KEY_B: OLD}
    assert journal.due(WRITE_INTERVAL) == {KEY_A: NEW, KEY_B: OLD}


def test_restore_keeps_the_newer_of_memory_and_file(tmp_path):
    TimestampFile(tmp_path).save({KEY_A: NEW, KEY_B: OLD})
    live = {KEY_B: NEW}
    restore(live, TimestampFile(tmp_path))
    assert live == {KEY_A: NEW, KEY_B: NEW}


def test_the_file_is_0600_replaced_whole_and_round_trips(tmp_path):
    state = tmp_path / "state"
    old_umask = os.umask(0)
    try:
        TimestampFile(state).save({KEY_A: OLD})
        TimestampFile(state).save({KEY_A: NEW, KEY_B: OLD})
    finally:
        os.umask(old_umask)
    path = state / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert sorted(p.name for p in state.iterdir()) == [FILE_NAME], "no temporary file left behind"
    assert TimestampFile(state).load() == {KEY_A: NEW, KEY_B: OLD}
    assert TimestampFile(tmp_path / "missing").load() == {}


@pytest.mark.parametrize("content", [b"", b"{", b'{"version": 2, "initiations": {}}', b'{"version": 1}',
                                     b'{"version": 1, "initiations": {"AAAA": "00"}}'])
def test_an_unreadable_record_is_an_error_naming_the_file(tmp_path, content):
    (tmp_path / FILE_NAME).write_bytes(content)
    with pytest.raises(TimestampFileError, match=FILE_NAME):
        TimestampFile(tmp_path).load()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12), max_size=5))
def test_encode_decode_round_trip(record):
    assert decode(encode(record)) == record


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=50),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                                          max_size=4),
                              max_leaves=10).map(lambda doc: json.dumps(doc).encode())))
def test_decode_raises_only_value_errors(data):
    try:
        decode(data)
    except ValueError:
        pass
