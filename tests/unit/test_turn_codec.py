"""TURN ChannelData framing (meshvpn.turn_codec): round trips, padding, and garbage that raises only the remote error."""

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.turn_codec import (CHANNEL_MAX, CHANNEL_MIN, StreamFramer, TurnError, decode_channel_data,
                                encode_channel_data, frame_run, is_channel_data)

from fuzzing import mutated


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(CHANNEL_MIN, CHANNEL_MAX), data=st.binary(max_size=1500), pad=st.booleans())
def test_channel_data_round_trips_with_and_without_padding(channel, data, pad):
    buf = encode_channel_data(channel, data, pad)
    assert len(buf) == 4 + len(data) + (-len(data) % 4 if pad else 0)
    assert is_channel_data(buf)
    assert decode_channel_data(buf) == (channel, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | mutated(st.builds(encode_channel_data, st.integers(CHANNEL_MIN, CHANNEL_MAX),
                                                  st.binary(max_size=40), st.booleans())))
def test_channel_data_decoder_raises_only_remote_errors(buf):
    try:
        channel, data = decode_channel_data(buf)
    except TurnError as exc:
        event("refused")
        assert isinstance(exc, RemoteProtocolError)
    else:
        event("decoded")
        assert CHANNEL_MIN <= channel <= CHANNEL_MAX and len(buf) - 4 - len(data) in range(4)


def test_channel_data_rejects_truncation_excess_padding_and_bad_channels():
    with pytest.raises(TurnError, match="says 5 bytes"):
        decode_channel_data(b"\x40\x00\x00\x05abcd")
    with pytest.raises(TurnError, match="padding is at most 3"):
        decode_channel_data(b"\x40\x00\x00\x01abcde")
    with pytest.raises(TurnError, match="outside"):
        decode_channel_data(b"\x80\x00\x00\x00")
    with pytest.raises(TurnError, match="header"):
        decode_channel_data(b"\x40\x00")
    with pytest.raises(LocalProtocolError):
        encode_channel_data(0x3FFF, b"")
    assert not is_channel_data(b"\x01\x03\x00\x00") and not is_channel_data(b"\x00\x01\x00\x00")


STUN_BINDING = bytes.fromhex("000100082112a442" + "0102030405060708090a0b0c" + "8022000454455354")


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(CHANNEL_MIN, CHANNEL_MAX), payloads=st.lists(st.binary(max_size=70), max_size=6),
       cuts=st.lists(st.integers(0, 600), max_size=8))
def test_a_stream_cut_anywhere_gives_back_every_message_without_padding(channel, payloads, cuts):
    messages = [STUN_BINDING] + [encode_channel_data(channel, data) for data in payloads] + [STUN_BINDING]
    stream = b"".join(message if message is STUN_BINDING else encode_channel_data(channel, message[4:], pad=True)
                      for message in messages)
    framer, out, at = StreamFramer(), [], 0
    for cut in sorted(min(cut, len(stream)) for cut in cuts) + [len(stream)]:
        out += framer.feed(stream[at:cut])
        at = cut
    assert out == messages


def test_frame_run_pads_each_message_for_a_stream():
    run = memoryview(bytes(range(10)) * 2 + b"xyz")
    framed = bytes(frame_run(0x4001, run, 10, pad=True))
    assert framed == (b"\x40\x01\x00\x0a" + bytes(range(10)) + b"\0\0") * 2 + b"\x40\x01\x00\x03xyz\0"
    assert StreamFramer().feed(framed) == [b"\x40\x01\x00\x0a" + bytes(range(10))] * 2 + [b"\x40\x01\x00\x03xyz"]


@pytest.mark.parametrize("first", [0x80, 0xC0, 0xFF])
def test_a_stream_that_starts_neither_stun_nor_channel_data_is_refused(first):
    with pytest.raises(TurnError, match="neither a STUN message nor ChannelData"):
        StreamFramer().feed(bytes([first]) + bytes(30))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_the_stream_framer_raises_only_remote_errors(data):
    try:
        for message in StreamFramer().feed(data):
            assert len(message) >= 4
    except TurnError as exc:
        assert isinstance(exc, RemoteProtocolError)
