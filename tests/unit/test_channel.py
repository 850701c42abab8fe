"""Secure framed stream: handshake in frames, sealed frames, and every way to break it."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import wire
from meshvpn.channel import ChannelError, ClientChannel, ServerChannel
from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.noise import StaticIdentity

CLIENT = StaticIdentity.from_private(bytes(range(32)))
SERVER = StaticIdentity.from_private(bytes(range(1, 33)))
OTHER = StaticIdentity.from_private(bytes(range(2, 34)))
NOW = 1_700_000_000.0


def make_pair(authorize=lambda key: key == CLIENT.public, max_frame_size=1 << 20):
    client = ClientChannel(CLIENT, SERVER.public, b"\x07" * 32, NOW, max_frame_size=max_frame_size)
    server = ServerChannel(SERVER, authorize, b"\x08" * 32, max_frame_size=max_frame_size)
    return client, server


def pump(client, server):
    """Move bytes both ways until quiet; return what each side received."""
    to_client, to_server = [], []
    while True:
        outgoing = client.data_to_send()
        incoming = server.data_to_send()
        if not outgoing and not incoming:
            return to_client, to_server
        to_server += server.receive_data(outgoing)
        to_client += client.receive_data(incoming)


def test_handshake_establishes_both_ends_and_names_the_peer():
    client, server = make_pair()
    assert not client.established and not server.established
    pump(client, server)
    assert client.established and server.established
    assert client.remote_public == SERVER.public
    assert server.remote_public == CLIENT.public


def test_frames_flow_both_ways_and_early_sends_are_queued():
    client, server = make_pair()
    client.send(b"hello before handshake")
    server.send(b"server greeting")
    to_client, to_server = pump(client, server)
    assert to_server == [b"hello before handshake"]
    assert to_client == [b"server greeting"]
    client.send(b"a")
    client.send(b"b" * 5000)
    server.send(b"c")
    assert pump(client, server) == ([b"c"], [b"a", b"b" * 5000])


def test_first_frame_is_the_initiation_and_frames_are_length_prefixed():
    client, _ = make_pair()
    data = client.data_to_send()
    assert struct.unpack(">I", data[:4])[0] == wire.INITIATION_LEN == len(data) - 4
    assert data[4:8] == b"\x01\x01\x00\x00"


def test_byte_at_a_time_delivery():
    client, server = make_pair()
    pump(client, server)
    client.send(b"split me")
    client.send(b"and me")
    received = []
    for byte in client.data_to_send():
        received += server.receive_data(bytes([byte]))
    assert received == [b"split me", b"and me"]


def test_unauthorized_client_is_refused():
    client, server = make_pair(authorize=lambda key: False)
    with pytest.raises(ChannelError, match="not authorized"):
        server.receive_data(client.data_to_send())


def test_wrong_server_key_fails_the_handshake():
    client = ClientChannel(CLIENT, OTHER.public, b"\x07" * 32, NOW)
    server = ServerChannel(SERVER, lambda key: True, b"\x08" * 32)
    with pytest.raises(ChannelError, match="initiation rejected"):
        server.receive_data(client.data_to_send())


def test_response_from_an_impostor_fails_the_handshake():
    client = ClientChannel(CLIENT, SERVER.public, b"\x07" * 32, NOW)
    impostor_client = ClientChannel(CLIENT, OTHER.public, b"\x07" * 32, NOW)
    impostor = ServerChannel(OTHER, lambda key: True, b"\x08" * 32)
    impostor.receive_data(impostor_client.data_to_send())
    client.data_to_send()
    with pytest.raises(ChannelError, match="response rejected"):
        client.receive_data(impostor.data_to_send())


def test_replayed_initiation_never_establishes():
    client, server = make_pair()
    initiation = client.data_to_send()
    pump(client, server)
    replay_target = ServerChannel(SERVER, lambda key: True, b"\x09" * 32)
    replay_target.receive_data(initiation)
    assert replay_target.data_to_send()
    assert not replay_target.established


def test_tampered_frame_is_a_bad_mac():
    client, server = make_pair()
    pump(client, server)
    client.send(b"payload")
    data = bytearray(client.data_to_send())
    data[-1] ^= 1
    with pytest.raises(ChannelError, match="bad MAC"):
        server.receive_data(bytes(data))
    with pytest.raises(ChannelError, match="already failed"):
        server.receive_data(b"")


def test_replayed_or_reordered_frame_is_a_bad_mac():
    client, server = make_pair()
    pump(client, server)
    client.send(b"one")
    first = client.data_to_send()
    assert server.receive_data(first) == [b"one"]
    with pytest.raises(ChannelError, match="bad MAC"):
        server.receive_data(first)


def test_oversized_length_is_refused_before_buffering():
    client, server = make_pair(max_frame_size=1000)
    pump(client, server)
    with pytest.raises(ChannelError, match="exceeds"):
        server.receive_data(struct.pack(">I", 1000 + 17))


def test_sending_more_than_the_limit_is_a_local_error():
    client, _ = make_pair(max_frame_size=1000)
    with pytest.raises(LocalProtocolError):
        client.send(bytes(1001))


def test_wrong_first_frame_length_is_refused():
    _, server = make_pair()
    with pytest.raises(ChannelError, match="132-byte handshake initiation"):
        server.receive_data(struct.pack(">I", 20))


def test_frame_shorter_than_a_mac_is_refused():
    client, server = make_pair()
    pump(client, server)
    with pytest.raises(ChannelError, match="shorter than its MAC"):
        server.receive_data(struct.pack(">I", 3) + b"abc")


def framed(bodies):
    return bodies.map(lambda body: struct.pack(">I", len(body)) + body)


# Raw garbage mostly stops at the length check; framed garbage of the expected
# sizes reaches the handshake and AEAD code.
garbage = st.one_of(
    st.binary(max_size=300),
    framed(st.binary(max_size=300)),
    framed(st.binary(min_size=wire.INITIATION_LEN, max_size=wire.INITIATION_LEN)),
    framed(st.binary(min_size=wire.RESPONSE_LEN, max_size=wire.RESPONSE_LEN)),
)


def fresh_server():
    return make_pair(authorize=lambda key: True)[1]


def fresh_client():
    return make_pair()[0]


def established_server():
    client, server = make_pair()
    pump(client, server)
    return server


@pytest.mark.parametrize("make_receiver", [fresh_server, fresh_client, established_server])
@settings(max_examples=300)
@given(data=garbage)
def test_receive_data_raises_only_remote_errors(make_receiver, data):
    receiver = make_receiver()
    try:
        receiver.receive_data(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=2000), max_size=8), st.integers(1, 700))
def test_payloads_survive_any_chunking(payloads, chunk):
    client, server = make_pair()
    pump(client, server)
    for payload in payloads:
        client.send(payload)
    data = client.data_to_send()
    received = []
    for start in range(0, len(data), chunk):
        received += server.receive_data(data[start : start + chunk])
    assert received == [p for p in payloads if p]
