"""The relay's native thread (meshvpn._fastpath.RelayLoop) against RelayCore's Python path, byte for byte.

Real parts: the relay's UDP socket on loopback with UDP_GRO, one UDP socket per node, and two
`RelayCore`s with the same registrations: one fed the receives directly (the pure-Python path),
one behind a `NativeForwarder` whose thread forwards what it may and hands the rest to that core,
as the server does. Each test sends the same datagrams to both and requires the same datagrams
at every destination, the same forwarded counts and the same drops by reason. The thread starts
after the datagrams are queued and every wait is bounded.
"""

import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import keys, wire
from meshvpn.config import RelayLimits
from meshvpn.node.datapath import fastpath
from meshvpn.ratelimit import TokenBucket
from meshvpn.relay import native
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relaytoken import TokenMinter, network_tag
from meshvpn.udpbatch import SOL_UDP, UDP_SEGMENT, BatchUdpSocket
from meshvpn.wire import Endpoint, MessageType
from test_relay_batch import sized
from test_relay_core import ALICE, BOB, COORD, MALLORY, NOW, RELAY, RELAY_PUBLIC, counting_random, envelope, hello, register

pytestmark = pytest.mark.needs(not native.available(time.time), "the native extension is not built or not in use")

CAROL = bytes([6]) * 32
DAVE = bytes([7]) * 32
ELSEWHERE = TokenMinter(COORD, counting_random()).mint(RELAY_PUBLIC, keys.public_key(MALLORY), NOW,
                                                       network=network_tag("elsewhere"))[0]
"""Mallory's token names another network than the others'."""
LATER = NOW + 1
"""When the Python side handles its receives (the thread reads the wall clock; buckets start full)."""
STILL = 1e-6
"""A rate at which no bucket refills within a test: rate-limited drops depend on the burst alone."""
GOOD = 1e12
"""The registrations' token expiry: the thread reads today's clock, the tokens were minted at NOW."""


class Rig:
    """The relay's socket, a socket per node, and the two cores registered alike."""

    def __init__(self, names, limits, streams=()) -> None:
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind(("127.0.0.1", 0))
        self.relay.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        BatchUdpSocket(self.relay)  # turns UDP_GRO on
        self.socks, self.links = {}, {}
        for name in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
            self.socks[name] = sock
            self.links[name] = Stream(name) if name in streams else Endpoint(*sock.getsockname())
        self.pure = self._core(names, limits, TokenBucket)
        self.native = self._core(names, limits, native.bucket_factory())
        self.forwarder = self.make_forwarder()

    def make_forwarder(self):
        return native.NativeForwarder(self.native, self.relay.fileno())

    def _core(self, names, limits, bucket):
        core = RelayCore(RELAY, keys.public_key(COORD), limits, counting_random(), NOW, bucket=bucket)
        for name, private in names.items():
            link = self.links[name]
            if isinstance(link, Stream):
                core.stream_opened(link, keys.public_key(private), NOW)
            register(core, private, link, token=ELSEWHERE if private == MALLORY else None)
            core.pull_stream(link) if isinstance(link, Stream) else None
        for reg in core.registry.by_key.values():
            reg.expires = GOOD
        core.drops.clear()
        return core

    def close(self) -> None:
        self.forwarder.stop()
        for sock in (self.relay, *self.socks.values()):
            sock.close()

    def run(self, sender: str, receives) -> None:
        """`receives` [(datagrams back to back, segment size)] from `sender`: one GSO send each, to both paths."""
        sock, to = self.socks[sender], self.relay.getsockname()
        for data, size in receives:
            control = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))] if len(data) > size else []
            sock.sendmsg([data], control, 0, to)
            self.python_path(self.pure, data, size, self.links[sender])
        self.forwarder.start()
        deadline = time.monotonic() + 5
        while self.forwarder.totals["receives"] < len(receives) and time.monotonic() < deadline:
            time.sleep(0.002)
            self.forwarder.pull()
        assert self.forwarder.totals["receives"] == len(receives), "the thread took every receive in time"
        for data, source, size in self.forwarder.take():
            self.python_path(self.native, data, size, source)
        self.forwarder.stop()

    def python_path(self, core, data, size, source) -> None:
        """A receive as Python handles it: all the relay core's."""
        core.receive_gro(data, size, source, LATER)

    def outcome(self, core, thread_sent=()):
        """Datagrams by destination (the relay's own sends after what the thread sent), streams' frames, counts."""
        by_dst = {}
        for dst, datagram in [*thread_sent, *core.datagrams_to_send()]:
            by_dst.setdefault(dst, []).append(datagram)
        frames = {link: core.pull_stream(link) for link in self.links.values() if isinstance(link, Stream)}
        return by_dst, frames, core.stats.forwarded, core.stats.forwarded_bytes, dict(core.drops)

    def thread_sent(self):
        out = []
        for name, sock in self.socks.items():
            while True:
                try:
                    out.append((self.links[name], sock.recv(65535)))
                except BlockingIOError:
                    break
        return out

    def compare(self):
        """Both paths' outcomes, the native one first."""
        return self.outcome(self.native, self.thread_sent()), self.outcome(self.pure)


@pytest.fixture
def rigs():
    made = []

    def make(names, limits=RelayLimits(packets_per_second=STILL, burst=1000, queue_bytes=100_000), streams=()):
        made.append(Rig(names, limits, streams))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


EVERYONE = {"alice": ALICE, "bob": BOB, "carol": CAROL, "mallory": MALLORY}


def one_by_one(messages):
    return [(message, len(message) or 1) for message in messages]  # as BatchUdpSocket.recv_into gives them


def test_envelopes_between_udp_nodes_are_forwarded_by_the_thread_as_python_would(rigs):
    rig = rigs(EVERYONE)
    messages = [sized(BOB, 200, n) for n in range(6)] + [sized(CAROL, 120, 1)] * 3 + [sized(BOB, 90, 7)]
    rig.run("alice", one_by_one(messages) + [(b"".join(messages[:6]), 200)])
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert rig.forwarder.totals["forwarded natively"] == 2 * 6 + 3 + 1 and rig.native.stats.forwarded == 16
    assert rig.forwarder.totals["handed to python"] == 0


@pytest.mark.parametrize("bad, reason", [
    (b"\x01\x07\x00\x00" + keys.public_key(BOB) + b"\x01\x07\x00\x00" + bytes(60), "malformed"),
    (b"\x01\x07\x00\x00" + bytes(10), "malformed"),
    (b"\x02" + sized(BOB, 100)[1:], "malformed"),
    (sized(DAVE, 100), "destination not registered"),
    (sized(MALLORY, 100), "destination in another network"),
    (wire.header(MessageType.DATA) + bytes(96), "not for a relay"),
    (b"", "malformed"),
], ids=["relay inside relay", "short", "bad version", "unregistered", "other network", "not a relay message", "empty"])
def test_a_bad_datagram_is_dropped_for_the_same_reason_on_both_paths(rigs, bad, reason):
    dropped_among_good_ones(rigs(EVERYONE), bad, reason)


def dropped_among_good_ones(rig, bad, reason):
    """`bad` between four good envelopes: dropped for `reason` on both paths, the rest forwarded."""
    good = [sized(BOB, 100, n) for n in range(4)]
    rig.run("alice", one_by_one(good[:2] + [bad] + good[2:]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[4] == {reason: 1} and native_outcome[2] == 4


def test_a_bad_datagram_inside_a_gro_receive_is_dropped_and_the_rest_forwarded(rigs):
    rig = rigs(EVERYONE)
    batch = [sized(BOB, 100, 1), sized(BOB, 100, 1), sized(DAVE, 100), sized(BOB, 100, 2), sized(MALLORY, 100),
             sized(CAROL, 100), wire.header(MessageType.DATA) + bytes(96), sized(BOB, 100, 3), sized(BOB, 60)]
    rig.run("alice", [(b"".join(batch), 100)])
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[4] == {"destination not registered": 1, "destination in another network": 1,
                                 "not for a relay": 1}


def test_the_bucket_is_spent_per_datagram_on_both_paths(rigs):
    rig = rigs(EVERYONE, RelayLimits(packets_per_second=STILL, burst=5, queue_bytes=1000))
    message = sized(BOB, 100)
    rig.run("alice", [(message * 3, 100)] + one_by_one([message, sized(DAVE, 100), message]) + [(message * 4, 100)])
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[2] == 4, "3 + 1 forwarded, and the token of the envelope to nobody spent"
    assert native_outcome[4] == {"rate limited": 5, "destination not registered": 1}


def test_an_unregistered_sender_is_left_to_python(rigs):
    rig = rigs({"alice": ALICE, "bob": BOB})
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.setblocking(False)
    rig.socks["stranger"], rig.links["stranger"] = stranger, Endpoint(*stranger.getsockname())
    rig.run("stranger", one_by_one([sized(BOB, 100)] * 3 + [hello(CAROL)]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[4] == {"sender not registered": 3, "unproven hello: new or moved registration": 1}
    assert rig.forwarder.totals["handed to python"] == 4 and rig.forwarder.totals["forwarded natively"] == 0


def test_envelopes_to_a_tcp_node_go_through_python_and_the_rest_stay_native(rigs):
    rig = rigs(EVERYONE, streams=("carol",))
    batch = [sized(BOB, 100, 1), sized(CAROL, 100, 2), sized(CAROL, 100, 3), sized(BOB, 100, 4)]
    rig.run("alice", [(b"".join(batch), 100)] + one_by_one([sized(CAROL, 80)]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert rig.forwarder.totals["forwarded natively"] == 2 and rig.forwarder.totals["handed to python"] == 2


@pytest.mark.parametrize("expired, reason", [("alice", "sender's token expired"),
                                             ("bob", "destination's token expired")])
def test_a_token_that_ran_out_stops_forwarding_at_once_on_both_paths(rigs, expired, reason):
    rig = rigs(EVERYONE)
    for core in (rig.pure, rig.native):  # before the sweep: the registration is still there
        core.registry.by_key[keys.public_key(EVERYONE[expired])].expires = NOW
    rig.run("alice", one_by_one([sized(BOB, 100), sized(CAROL, 100)]))
    native_outcome, pure_outcome = rig.compare()
    assert native_outcome == pure_outcome
    assert native_outcome[4] == {reason: 2 if expired == "alice" else 1}


def test_the_thread_keeps_its_senders_alive(rigs):
    rig = rigs(EVERYONE)
    rig.run("alice", one_by_one([sized(BOB, 100)]))
    assert rig.native.registry.by_key[keys.public_key(ALICE)].last_heard > time.time() - 60 > LATER
    assert rig.native.registry.by_key[keys.public_key(BOB)].last_heard == NOW


MESSAGES = {
    "to bob": sized(BOB, 100),
    "to bob, other inner type": envelope(BOB, wire.header(MessageType.HANDSHAKE_INIT) + bytes(60)),
    "to bob, longer": sized(BOB, 180),
    "to carol": sized(CAROL, 100),
    "to dave": sized(DAVE, 100),
    "to mallory": sized(MALLORY, 100),
    "bad inner": b"\x01\x07\x00\x00" + keys.public_key(BOB) + b"\x01\x07\x00\x00" + bytes(60),
    "short": b"\x01\x07\x00\x00" + bytes(10),
    "hello": hello(ALICE),
    "junk": b"\xff" * 40,
}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(sorted(MESSAGES)), min_size=1, max_size=30), st.integers(1, 30), st.booleans())
def test_any_sequence_has_the_same_outcome_on_both_paths(names, burst, batched):
    rig = Rig(EVERYONE, RelayLimits(packets_per_second=STILL, burst=burst, queue_bytes=100_000))
    try:
        messages = [MESSAGES[name] for name in names]
        same_size = batched and len({len(m) for m in messages[:-1]}) == 1 and len(messages[-1]) <= len(messages[0])
        rig.run("alice", [(b"".join(messages), len(messages[0]))] if same_size else one_by_one(messages))
        native_outcome, pure_outcome = rig.compare()
        assert native_outcome == pure_outcome
    finally:
        rig.close()
