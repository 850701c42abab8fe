"""The two ends of a node's stream to a relay, without I/O: the node's `RelayStreamEnd` and the relay's
`StreamEnd` moving bytes between them in memory, and garbage at the relay's end."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import keys, noise, wire
from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.node.relay.streamend import RelayStreamEnd
from meshvpn.node.streamdial import StreamTarget
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relay.streamend import StreamEnd
from meshvpn.wire import Endpoint, MessageType

from test_relay_core import ALICE, BOB, LIMITS, NOW, RELAY, RELAY_PUBLIC, COORD, counting_random, envelope, hello

AT = StreamTarget(Endpoint("198.51.100.20", 443), tls=True)


class Inbox:
    """What the node hears of its stream (the two `StreamInbox` calls the end makes)."""

    def __init__(self):
        self.up, self.frames = [], []

    def relay_stream_up(self, name, now, target=None):
        self.up.append((name, target))

    def receive_relay_frames(self, name, frames, now):
        self.frames.extend(frames)


def relay_core():
    return RelayCore(RELAY, keys.public_key(COORD), LIMITS, counting_random(), NOW)


def connect(core, private, inbox):
    """A node's end and the relay's, with the channel handshake carried across."""
    node = RelayStreamEnd(inbox, "near", private, RELAY_PUBLIC, os.urandom(32), NOW)
    relay = StreamEnd(core, Stream(private), noise.StaticIdentity.from_private(RELAY), os.urandom(32))
    back = relay.receive(node.opening(), NOW)
    assert node.handshake(back) == []
    assert node.established
    assert inbox.up == [], "an attempt says nothing to the node until it wins its race"
    node.up(NOW, AT)
    assert not relay.opened, "the relay's side is established by the node's first frame"
    return node, relay


def test_a_hello_over_the_stream_registers_the_node_and_frames_flow_both_ways():
    core = relay_core()
    alice_inbox, bob_inbox = Inbox(), Inbox()
    alice, alice_end = connect(core, ALICE, alice_inbox)
    bob, bob_end = connect(core, BOB, bob_inbox)
    assert alice_inbox.up == [("near", AT)]
    for node, end, private in ((alice, alice_end, ALICE), (bob, bob_end, BOB)):
        end.receive(node.seal([hello(private)]), NOW)
        assert end.opened
        node.receive(end.queued(), NOW)
    assert [wire.message_type(f) for f in alice_inbox.frames] == [MessageType.RELAY_HELLO_ACK]
    alice_end.receive(alice.seal([envelope(BOB)]), NOW)
    assert {s.conn_id for s in core.streams_to_flush()} == {ALICE, BOB}
    bob.receive(bob_end.queued(), NOW)
    assert wire.message_type(bob_inbox.frames[-1]) == MessageType.RELAY
    bob_end.closed()
    assert core.status()["nodes_tcp"] == 1


def test_frames_that_came_along_with_the_handshake_reach_the_node_when_the_attempt_wins():
    inbox = Inbox()
    node = RelayStreamEnd(inbox, "near", ALICE, RELAY_PUBLIC, os.urandom(32), NOW)
    node.up(NOW, AT, [b"first", b"second"])
    assert inbox.up == [("near", AT)] and inbox.frames == [b"first", b"second"]


def test_frames_given_before_the_channel_is_up_are_not_sealed():
    node = RelayStreamEnd(Inbox(), "near", ALICE, RELAY_PUBLIC, os.urandom(32), NOW)
    assert node.seal([hello(ALICE)]) == b""


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=300))
def test_garbage_at_the_relays_end_raises_only_the_remote_error(garbage):
    core = relay_core()
    end = StreamEnd(core, Stream("x"), noise.StaticIdentity.from_private(RELAY), bytes(32))
    try:
        end.receive(garbage, NOW)
    except RemoteProtocolError:
        pass
    assert not end.opened
    try:
        end.queued()
    except LocalProtocolError:
        pass
