"""TURN ChannelData framing (RFC 8656 §12.4): the 4-byte header the data path puts on each datagram.

The STUN methods and attributes TURN adds live in `meshvpn.stun_codec`; the allocation that
binds channel numbers to peers is `meshvpn.turn`. This module is apart from both because the
data path needs only the header (`CHANNEL_HEADER`, which the node's TURN routes prepend to a
whole run of messages at once) and the shell only `is_channel_data`.
"""

from __future__ import annotations

import struct

from meshvpn.errors import LocalProtocolError, RemoteProtocolError

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x7FFF
"""Channel numbers a client may bind (RFC 5766; RFC 8656 narrows new ones to 0x4FFF)."""
CHANNEL_HEADER = struct.Struct("!HH")
"""ChannelData header: channel number, length of the application data."""


class TurnError(RemoteProtocolError):
    """A datagram from a TURN server is not a well-formed ChannelData message."""


def is_channel_data(buf: bytes) -> bool:
    """Whether a datagram from the server is ChannelData (first two bits 01) rather than STUN."""
    return len(buf) >= CHANNEL_HEADER.size and buf[0] & 0xC0 == 0x40


def encode_channel_data(channel: int, data: bytes, pad: bool = False) -> bytes:
    """One ChannelData message; `pad` to a multiple of 4 bytes (required over TCP, optional on UDP)."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise LocalProtocolError(f"channel {channel:#06x} is outside 0x4000-0x7FFF")
    if len(data) > 0xFFFF:
        raise LocalProtocolError(f"{len(data)} bytes do not fit a ChannelData message")
    return CHANNEL_HEADER.pack(channel, len(data)) + data + bytes(-len(data) % 4 if pad else 0)


def decode_channel_data(buf: bytes) -> tuple[int, bytes]:
    """(channel, application data) of a ChannelData message; padding of up to 3 bytes is allowed."""
    if len(buf) < CHANNEL_HEADER.size:
        raise TurnError(f"ChannelData is {len(buf)} bytes, shorter than its 4-byte header")
    channel, length = CHANNEL_HEADER.unpack_from(buf)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise TurnError(f"channel {channel:#06x} is outside 0x4000-0x7FFF")
    extra = len(buf) - CHANNEL_HEADER.size - length
    if extra < 0:
        raise TurnError(f"ChannelData says {length} bytes, datagram has {len(buf) - CHANNEL_HEADER.size}")
    if extra > 3:
        raise TurnError(f"ChannelData has {extra} bytes after its {length} data bytes, padding is at most 3")
    return channel, bytes(buf[CHANNEL_HEADER.size:CHANNEL_HEADER.size + length])
