"""Path probes: only peers can make them, each is taken once and only while fresh and addressed
to us, garbage raises only RemoteProtocolError, and the probes sent per peer stay within budget."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.errors import RemoteProtocolError
from meshvpn.keys import public_key
from meshvpn.node.probes import (
    MAX_REMEMBERED, PROBE_MAX_SKEW, PROBE_RATE, PROBE_REORDER, PROBE_TARGET_HOSTS, PROBE_TARGET_WINDOW, ProbeBudget,
    ProbeCodec, ProbeFromStranger, ProbeRefused,
)
from meshvpn.wire import Endpoint, MessageType

A_PRIVATE = bytes(range(1, 33))
B_PRIVATE = bytes(range(101, 133))
C_PRIVATE = bytes(range(201, 233))
A_PUBLIC, B_PUBLIC, C_PUBLIC = (public_key(k) for k in (A_PRIVATE, B_PRIVATE, C_PRIVATE))
NONCE = bytes(24)
TX = b"12345678"
DST = Endpoint("203.0.113.7", 41641)
WALL = 1.7e9
"""Both nodes' wall clock, seconds."""


def codec(private, public, *peers):
    c = ProbeCodec(private, public)
    c.set_own_hosts([DST.host, "10.0.0.2"])
    for peer in peers:
        c.add_peer(peer)
    return c


def test_probe_and_reply_round_trip():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    opened = b.open(a.probe(B_PUBLIC, TX, DST, NONCE, WALL), WALL)
    assert (opened.kind, opened.sender, opened.tx_id, opened.endpoint) == (MessageType.PROBE, A_PUBLIC, TX, DST)
    seen = Endpoint("198.51.100.9", 6000)
    reply = a.open(b.reply(A_PUBLIC, opened.tx_id, seen, NONCE, WALL), WALL)
    assert (reply.kind, reply.sender, reply.tx_id, reply.endpoint) == (MessageType.PROBE_REPLY, B_PUBLIC, TX, seen)


def test_probe_from_a_stranger_is_rejected_before_any_key_agreement():
    c = codec(C_PRIVATE, C_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    with pytest.raises(ProbeFromStranger, match="probe from unknown key") as raised:
        b.open(c.probe(B_PUBLIC, TX, DST, NONCE, WALL), WALL)
    assert (raised.value.kind, raised.value.sender) == (MessageType.PROBE, C_PUBLIC)
    assert isinstance(raised.value, RemoteProtocolError), "garbage from the network raises only the remote kind"


def test_forged_sender_key_fails_authentication():
    c = codec(C_PRIVATE, C_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    forged = bytearray(c.probe(B_PUBLIC, TX, DST, NONCE, WALL))
    forged[4:36] = A_PUBLIC
    with pytest.raises(RemoteProtocolError, match="authentication"):
        b.open(bytes(forged), WALL)


def test_removed_peer_is_no_longer_accepted():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    probe = a.probe(B_PUBLIC, TX, DST, NONCE, WALL)
    b.remove_peer(A_PUBLIC)
    with pytest.raises(RemoteProtocolError):
        b.open(probe, WALL)


def test_relay_hello_is_not_a_probe():
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    hello = wire.seal(MessageType.RELAY_HELLO, A_PUBLIC, NONCE, wire.box_key(A_PRIVATE, B_PUBLIC), wire.RelayHello(1))
    with pytest.raises(RemoteProtocolError, match="not a path probe"):
        b.open(hello, WALL)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 199), st.integers(1, 255))
def test_open_raises_only_remote_errors_on_garbage_and_bit_flips(junk, position, flip):
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    genuine = bytearray(a.probe(B_PUBLIC, TX, DST, NONCE, WALL))
    genuine[position % len(genuine)] ^= flip
    for candidate in (junk, bytes(genuine), bytes(genuine[: position % len(genuine)])):
        with pytest.raises(RemoteProtocolError):
            b.open(candidate, WALL)


def test_probe_relabelled_as_reply_is_rejected():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    relabelled = bytearray(a.probe(B_PUBLIC, TX, DST, NONCE, WALL))
    relabelled[1] = MessageType.PROBE_REPLY
    with pytest.raises(RemoteProtocolError, match="sealed as another type"):
        b.open(bytes(relabelled), WALL)


# --- freshness and address (issue 13, finding 2) --------------------------------------------


def refused(b: ProbeCodec, datagram: bytes, wall: float = WALL, **kwargs) -> str:
    with pytest.raises(ProbeRefused) as caught:
        b.open(datagram, wall, **kwargs)
    assert caught.value.sender == A_PUBLIC
    return caught.value.reason


def test_a_captured_probe_is_taken_once():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    probe = a.probe(B_PUBLIC, TX, DST, NONCE, WALL)
    b.open(probe, WALL)
    assert refused(b, probe, WALL + 1) == "replayed probe"
    reply = b.reply(A_PUBLIC, TX, DST, NONCE, WALL)
    a.open(reply, WALL)
    assert refused_reply(a, reply) == "replayed probe"


def refused_reply(a: ProbeCodec, datagram: bytes) -> str:
    with pytest.raises(ProbeRefused) as caught:
        a.open(datagram, WALL)
    return caught.value.reason


def test_probes_far_from_our_clock_are_stale_either_way():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    old = a.probe(B_PUBLIC, TX, DST, NONCE, WALL)
    assert refused(b, old, WALL + PROBE_MAX_SKEW + 1) == "stale probe"
    b.open(a.probe(B_PUBLIC, TX, DST, NONCE, WALL + PROBE_MAX_SKEW - 1), WALL)
    assert refused(b, a.probe(B_PUBLIC, TX, DST, NONCE, WALL + PROBE_MAX_SKEW + 1), WALL) == "stale probe"


def test_reordered_probes_within_the_window_are_each_taken_once():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    burst = [a.probe(B_PUBLIC, TX, DST, NONCE, WALL) for _ in range(20)]
    for probe in reversed(burst):
        b.open(probe, WALL)
    assert {refused(b, probe) for probe in burst} == {"replayed probe"}
    late = a.probe(B_PUBLIC, TX, DST, NONCE, WALL + 0.5)
    newest = a.probe(B_PUBLIC, TX, DST, NONCE, WALL + PROBE_REORDER + 1)
    b.open(newest, WALL)
    assert refused(b, late) == "replayed probe", "further behind the newest than the reorder window"


def test_stamps_rise_even_when_the_clock_does_not():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    for wall in (WALL, WALL, WALL - 1.0):
        b.open(a.probe(B_PUBLIC, TX, DST, NONCE, wall), WALL)


def test_remembered_stamps_are_bounded():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    probes = [a.probe(B_PUBLIC, TX, DST, NONCE, WALL) for _ in range(MAX_REMEMBERED + 10)]
    for probe in probes:
        b.open(probe, WALL)
    assert len(b._seen[A_PUBLIC].stamps) <= MAX_REMEMBERED
    assert refused(b, probes[0]) == refused(b, probes[-1]) == "replayed probe"


def test_a_probe_sent_to_someone_else_is_refused_unless_it_came_through_the_relay():
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    elsewhere = Endpoint("198.51.100.66", 4000)
    assert refused(b, a.probe(B_PUBLIC, TX, elsewhere, NONCE, WALL)) == "probe for another address"
    b.open(a.probe(B_PUBLIC, TX, elsewhere, NONCE, WALL), WALL, check_address=False)
    b.open(a.probe(B_PUBLIC, TX, Endpoint("10.0.0.2", 999), NONCE, WALL), WALL), "any port of our addresses"
    seen_elsewhere = b.reply(A_PUBLIC, TX, elsewhere, NONCE, WALL)
    assert a.open(seen_elsewhere, WALL).endpoint == elsewhere, "a reply names where the probe came from"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(-3.0, 3.0)), max_size=40))
def test_no_probe_is_taken_twice_whatever_the_order(order):
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    probes = [a.probe(B_PUBLIC, TX, DST, NONCE, WALL + n / 10) for n in range(31)]
    taken = []
    for index, skew in order:
        try:
            b.open(probes[index], WALL + skew)
            taken.append(index)
        except ProbeRefused:
            pass
    assert len(taken) == len(set(taken))


# --- budget (issue 13, finding 4) -------------------------------------------------------------


def test_the_budget_bounds_the_addresses_probed_for_a_peer():
    budget = ProbeBudget()
    targets = [Endpoint(f"198.51.100.{n}", 4000) for n in range(PROBE_TARGET_HOSTS + 5)]
    verdicts = [budget.allow(A_PUBLIC, target, 0.0) for target in targets]
    assert verdicts == [None] * PROBE_TARGET_HOSTS + ["probe budget: targets"] * 5
    assert budget.allow(A_PUBLIC, Endpoint("198.51.100.0", 9999), 0.1) is None, "ports of a known address are free"
    assert budget.allow(B_PUBLIC, targets[-1], 0.1) is None, "each peer has its own budget"
    assert budget.allow(A_PUBLIC, targets[-1], PROBE_TARGET_WINDOW + 0.2) is None, "addresses age out"


def test_the_budget_bounds_the_rate_per_peer_but_allows_birthday_probing():
    budget = ProbeBudget()
    target = Endpoint("198.51.100.1", 4000)
    sent = sum(budget.allow(A_PUBLIC, target, n / 1000) is None for n in range(3000))
    assert 600 + 300 * 2.9 <= sent <= 600 + 300 * 3.0 + 1, "burst plus the rate over three seconds"
    assert budget.allow(A_PUBLIC, target, 2.999) == "probe budget: rate"
    budget = ProbeBudget()
    birthday = sum(budget.allow(A_PUBLIC, Endpoint("198.51.100.1", 1024 + n), n / PROBE_RATE) is None
                   for n in range(900))
    assert birthday == 900


def test_only_a_probe_with_the_newest_stamp_is_newest():
    """A probe sealed earlier and held back (delivered after a later one) is taken once within the
    reorder window, but it is not the newest, so it moves no path (`meshvpn.node.silence`)."""
    a = codec(A_PRIVATE, A_PUBLIC, B_PUBLIC)
    b = codec(B_PRIVATE, B_PUBLIC, A_PUBLIC)
    held = a.probe(B_PUBLIC, TX, DST, NONCE, WALL)
    later = a.probe(B_PUBLIC, TX, DST, NONCE, WALL + 0.5)
    assert b.open(later, WALL + 0.5).newest
    assert not b.open(held, WALL + 0.6).newest
    assert b.open(a.probe(B_PUBLIC, TX, DST, NONCE, WALL + 0.7), WALL + 0.7).newest
