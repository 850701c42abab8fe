"""Probes from keys that are not peers yet: counted under their own name, kept within bounds, taken
(authenticated, answered, probed back) when the peer map adds the key, and never acted on before."""

import os
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.control import messages as m
from meshvpn.metrics import node_families
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.strangers import KEEP_FOR, MAX_KEYS, PER_KEY, Strangers
from meshvpn.node.tcp.core import TcpEndpoint
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, NETWORK, Wire, ip_packet, seeded
from meshvpn.wire import Endpoint, MessageType

ATTACKER = Endpoint("203.0.113.66", 4000)


def strangers_pair():
    """`a` knows `b`; `b` is registered but has not heard of `a` yet."""
    a = seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT)
    b = seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT)
    a.register(b)
    b.register()
    return a, b


def first_probes(a, b) -> list[bytes]:
    """`a`'s first punch round towards `b` (its first packet for `b` starts it)."""
    a.send(ip_packet(a.address, b.address, b"first"), 0.0)
    probes = [data for dst, data in a.collect() if data[1] == MessageType.PROBE]
    assert probes
    return probes


def test_a_probe_from_a_key_that_is_not_a_peer_is_counted_as_such_in_status_and_metrics():
    a, b = strangers_pair()
    probes = first_probes(a, b)
    b.receive([(probe, a.endpoint) for probe in probes], 0.01)
    assert b.collect() == [], "nothing answered: b cannot open it"
    assert b.node.drops == {"probe from unknown key": len(probes)}, "well formed: not malformed"
    families = {family.name: family for family in node_families(b.core, b.data)}
    assert (("probe from unknown key",), float(len(probes))) in families["meshvpn_drops"].samples


def test_kept_probes_are_answered_and_probed_back_when_the_peer_map_adds_the_key():
    a, b = strangers_pair()
    probes = first_probes(a, b)
    b.receive([(probe, a.endpoint) for probe in probes], 0.01)
    b.from_coord(m.PeerUpdate(a.info()), 0.2)
    out = b.collect()
    assert [(dst, data[1]) for dst, data in out if data[1] == MessageType.PROBE_REPLY] == \
        [(a.endpoint, MessageType.PROBE_REPLY)] * len(probes), "each kept probe answered at once"
    assert (a.endpoint, MessageType.PROBE) in [(dst, data[1]) for dst, data in out], "and probed back"
    a.receive([(data, b.endpoint) for dst, data in out], 0.21)
    assert a.peers.by_key[b.public].route.path.kind is PathKind.DIRECT, "b's answer proved a's first round"
    wire = Wire(a, b)
    wire.pump(0.21)
    assert b.peers.by_key[a.public].route.path.kind is PathKind.DIRECT
    assert b.tun == [ip_packet(a.address, b.address, b"first")]
    assert len(b.core.strangers) == 0


def test_a_kept_probe_is_taken_only_while_fresh():
    a, b = strangers_pair()
    b.receive([(probe, a.endpoint) for probe in first_probes(a, b)], 0.01)
    b.from_coord(m.PeerUpdate(a.info()), 0.01 + KEEP_FOR + 0.01)
    assert [data[1] for _, data in b.collect()] == [], "too old: b does not answer it, nor probe"
    assert len(b.core.strangers) == 0


def test_a_forged_probe_kept_for_a_key_is_refused_when_the_key_becomes_a_peer():
    """Nothing kept is trusted: the kept probe goes through every check a probe gets on arrival."""
    a, b = strangers_pair()
    forged = bytearray(first_probes(a, b)[0])
    forged[-1] ^= 1
    b.receive([(bytes(forged), ATTACKER)], 0.01)
    b.from_coord(m.PeerUpdate(a.info()), 0.1)
    assert [dst for dst, _ in b.collect()] == [], "no answer and no probe to the forged source"
    assert b.node.drops["malformed"] == 1
    assert ATTACKER not in [c.endpoint for c in b.peers.by_key[a.public].paths.candidates]


def test_relayed_tcp_and_reply_probes_from_strangers_are_counted_not_kept():
    """Only a probe straight over UDP makes a path; anything else of an unknown key is just counted."""
    a, b = strangers_pair()
    probe = first_probes(a, b)[0]
    b.core.datagram_received(probe, a.endpoint, 0.01, relayed_from=a.public)
    b.core.datagram_received(probe, TcpEndpoint("198.51.100.7", 5000), 0.01)
    reply = bytearray(probe)
    reply[1] = MessageType.PROBE_REPLY
    b.core.datagram_received(bytes(reply), a.endpoint, 0.01)
    assert b.node.drops == {"probe from unknown key": 3}
    assert len(b.core.strangers) == 0


def test_a_punch_for_a_key_the_coord_never_named_is_counted_under_its_own_reason_and_starts_nothing():
    """The coord sends a node the news of a peer before any punch that names it (`docs/coordination.md`),
    so a punch for a key the node never heard of is the coord's fault (a bug, or a coord that broke that
    order): counted apart from probes, not kept, and nothing goes out for it, then or once it is named."""
    a, b = strangers_pair()
    b.collect()
    at = m.Endpoint(a.endpoint.host, a.endpoint.port)
    b.from_coord(m.Punch(peer_key=a.public, endpoints=(at,), sample=at), 0.0)
    b.tick(0.5)
    assert b.collect() == [] and b.coord_out == []
    assert b.node.drops == {"punch for unknown peer": 1}
    families = {family.name: family for family in node_families(b.core, b.data)}
    assert (("punch for unknown peer",), 1.0) in families["meshvpn_drops"].samples
    b.from_coord(m.PeerUpdate(a.info()), 0.6)
    assert b.collect() == [], "named, a is a peer without traffic: the punch dropped before is not played late"
    assert b.node.drops == {"punch for unknown peer": 1}


def test_a_flood_of_random_keys_keeps_memory_bounded_and_spends_no_key_agreement(monkeypatch):
    a, b = strangers_pair()
    agreed = []
    monkeypatch.setattr(wire, "box_key", lambda *keys: agreed.append(keys))
    rng = random.Random(7)
    for n in range(MAX_KEYS * 8):
        flood = wire.header(MessageType.PROBE) + rng.randbytes(32) + rng.randbytes(24) + rng.randbytes(40)
        b.receive([(flood, Endpoint("198.51.100.9", 1024 + n))], n * 0.001)
    assert len(b.core.strangers) == MAX_KEYS and b.core.strangers.probes() == MAX_KEYS
    assert b.node.drops == {"probe from unknown key": MAX_KEYS * 8} and agreed == []
    assert b.collect() == []


# ---- the memory on its own, under random keys, sources and times -------------------------------

LIMITS = st.tuples(st.integers(1, 6), st.integers(1, 4), st.sampled_from([0.5, KEEP_FOR]))
STEPS = st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.sampled_from([0.3, 0.7, 1.5, 2.5]), st.floats(0.0, 3.0))
"""Seconds between two operations: mostly a burst, sometimes past `keep_for`."""
OPS = st.lists(st.tuples(st.sampled_from(["heard", "heard", "heard", "take"]), st.integers(0, 9),
                         st.integers(0, wire.PROBE_MAX_LEN + 40), STEPS), max_size=150)


@settings(max_examples=500, deadline=None)
@given(LIMITS, OPS)
@example((2, 1, KEEP_FOR), [("heard", 0, 8, 0.0), ("heard", 1, 8, 0.0), ("heard", 0, 8, 0.0), ("heard", 2, 8, 0.0),
                            ("take", 0, 0, 0.0)])  # the least recently heard key goes, not the first heard
@example((2, 1, KEEP_FOR), [("heard", 0, 8, 0.0), ("heard", 1, 8, 0.7 * KEEP_FOR), ("take", 0, 0, 0.2 * KEEP_FOR)])
def test_the_memory_stays_within_its_bounds_and_loses_only_what_they_make_it(limits, ops):
    """Random keys (a pool larger than the limit), sources, sizes and times: never more than the
    limits kept, nothing too long or too old handed out, nothing of another key; and a probe is lost
    only to them: a key's newest fresh probes are all there unless `max_keys` other keys were heard
    since the oldest of them."""
    max_keys, per_key, keep_for = limits
    memory = Strangers(max_keys, per_key, keep_for)
    now = 0.0
    history: dict[int, list] = {}
    """Key -> (operation number, probe) of every probe heard from it since it was last taken."""
    heard_by: list[tuple[int, int, float]] = []
    """(operation number, key, time) of every probe not too long to keep."""
    for n, (op, key_no, size, step) in enumerate(ops):
        now += step
        key = key_no.to_bytes(32, "little")
        if op == "heard":
            probe = (os.urandom(size), Endpoint(f"192.0.2.{key_no}", 1000 + n), n % 3 or None, now)
            memory.heard(key, probe[0], probe[1], probe[2], now)
            if size <= wire.PROBE_MAX_LEN:
                history.setdefault(key_no, []).append((n, probe))
                heard_by.append((n, key_no, now))
                assert len(memory) <= len({k for _, k, at in heard_by if now - at <= keep_for}), "none kept too long"
        else:
            taken = [tuple(kept) for kept in memory.take(key, now)]
            heard = [probe for _, probe in history.get(key_no, [])]
            newest = history.pop(key_no, [])[-per_key:]
            assert len(taken) <= per_key and all(kept in heard for kept in taken), "its own probes only"
            assert [heard.index(kept) for kept in taken] == sorted(heard.index(kept) for kept in taken)
            assert all(len(kept[0]) <= wire.PROBE_MAX_LEN and now - kept[3] <= keep_for for kept in taken)
            others = {k for i, k, _ in heard_by if newest and i > newest[0][0] and k != key_no}
            if len(others) < max_keys:
                assert taken == [p for _, p in newest if now - p[3] <= keep_for], "lost only to the limits"
        assert len(memory) <= max_keys and memory.probes() <= max_keys * per_key
