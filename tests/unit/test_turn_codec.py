"""TURN ChannelData framing (meshvpn.turn_codec): round trips, padding, and garbage that raises only the remote error."""

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.turn_codec import CHANNEL_MAX, CHANNEL_MIN, TurnError, decode_channel_data, encode_channel_data, is_channel_data

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
