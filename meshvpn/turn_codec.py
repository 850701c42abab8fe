"""TURN ChannelData framing (RFC 8656 §12.4): the 4-byte header the data path puts on each datagram,
and the framing of STUN and ChannelData messages in a TCP or TLS stream to the server.

The STUN methods and attributes TURN adds live in `meshvpn.stun_codec`; the allocation that
binds channel numbers to peers is `meshvpn.turn`. This module is apart from both because the
data path needs only the header (`frame_run` prepends it to a whole run of messages at once)
and the shell only `is_channel_data`.

Over TCP and TLS (RFC 8656 §12.5) the same messages follow one another in the stream: a STUN
message is its 20-byte header plus the length the header gives (a multiple of 4), ChannelData
is its 4-byte header plus its length, padded to a multiple of 4. `StreamFramer` cuts a stream
into those messages.
"""

from __future__ import annotations

import struct

from meshvpn.errors import LocalProtocolError, RemoteProtocolError

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x7FFF
"""Channel numbers a client may bind (RFC 5766; RFC 8656 narrows new ones to 0x4FFF)."""
CHANNEL_HEADER = struct.Struct("!HH")
"""ChannelData header: channel number, length of the application data."""
STUN_HEADER_SIZE = 20
"""A STUN message's header: type, length of the attributes, magic cookie, transaction id."""


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


def frame_run(channel: int, run: memoryview, seg_size: int, pad: bool = False) -> bytearray:
    """A GSO run of messages (``seg_size`` each, the last may be shorter) as ChannelData on `channel`,
    one after the other: the header prepend, one copy per message; `pad` each to a multiple of 4
    bytes (a stream needs it; over UDP the run then stays one GSO run of ``seg_size + 4``)."""
    out = bytearray()
    pack = CHANNEL_HEADER.pack
    for first in range(0, len(run), seg_size):
        segment = run[first:first + seg_size]
        out += pack(channel, len(segment))
        out += segment
        if pad and len(segment) % 4:
            out += bytes(4 - len(segment) % 4)
    return out


class StreamFramer:
    """Cuts the bytes of a TCP or TLS stream from a TURN server into STUN and ChannelData messages.

    ChannelData comes out without its padding. A message whose first two bits are neither 00
    (STUN) nor 01 (ChannelData) raises TurnError: the stream cannot be resynchronised and must
    be closed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages `data` completes, in order; what remains waits for more bytes."""
        buf = self._buffer
        buf += data
        out, at = [], 0
        while len(buf) - at >= CHANNEL_HEADER.size:
            kind = buf[at] & 0xC0
            length = int.from_bytes(buf[at + 2:at + 4], "big")
            if kind == 0x40:
                size, keep = CHANNEL_HEADER.size + length + (-length % 4), CHANNEL_HEADER.size + length
            elif kind == 0x00:
                size = keep = STUN_HEADER_SIZE + length
            else:
                raise TurnError(f"stream byte {buf[at]:#04x} starts neither a STUN message nor ChannelData")
            if len(buf) - at < size:
                break
            out.append(bytes(buf[at:at + keep]))
            at += size
        del buf[:at]
        return out
