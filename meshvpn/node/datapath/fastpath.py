"""The data path's batch loops: native (``meshvpn._fastpath``, C + libsodium) when built, else pure Python.

Why: per packet, the Python data path spends more time around the AEAD than in it (the split's
header rewrites, the seal/open wrappers, the loops), so the rate a two-core machine can forward
is set by the interpreter.  Two loops carry almost every packet, and each is one call here:

* :func:`seal_split` cuts a TUN super-packet (TSO/USO) into MSS-sized IP packets and seals each
  straight into a GSO send buffer, back to back, with its relay prefix: one call per TUN read.
* :func:`open_run` opens, in place, the datagrams of a GRO receive that belong to one session,
  applies the replay window and the inner source and destination checks, and appends views of the plaintexts for
  the TUN write: one call per run.
* :func:`coalesce_iov` merges the opened TCP segments into TUN super-packets: one call per write.

One API, two implementations.  The pure-Python one composes the code it replaces
(:func:`meshvpn.node.datapath.offload.split_in_place`, :meth:`Session.seal_into`, ``open_into``,
:func:`meshvpn.node.datapath.offload.coalesce_iov`), so the
rules live there; the native one follows them byte for byte (``tests/unit/test_fastpath.py``
compares both on random input).  The native module shares the session's keys and its
:class:`~meshvpn.replay.ReplayWindow`, so a session may be opened by either at any time.
``MESHVPN_PURE_PYTHON=1`` in the environment forces the pure-Python implementation.
"""

from __future__ import annotations

import os
import struct
from typing import Union

from meshvpn import wire
from meshvpn.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_BITS
from meshvpn.errors import LocalProtocolError, RemoteProtocolError
from meshvpn.node.datapath import offload
from meshvpn.node.datapath.offload import VirtioNetHdr, split_in_place
from meshvpn.session import OVERHEAD, KeyRing, Session, SessionExhausted

try:
    from meshvpn import _fastpath as _built
except ImportError:  # not built (no compiler or libsodium-dev): the pure-Python loops
    _built = None
STALE = _built is not None and "casts" not in (_built.open_run.__doc__ or "")
"""The native module was built from an older ``_fastpath.c`` (its ``open_run`` answers fewer
counts): it is not used until ``make setup`` builds it again."""
if STALE:
    _built = None
elif _built is not None:
    _built.configure(RemoteProtocolError, LocalProtocolError, REJECT_AFTER_MESSAGES, REPLAY_WINDOW_BITS)
_native = _built if os.environ.get("MESHVPN_PURE_PYTHON", "") in ("", "0") else None

NATIVE = _native is not None
"""Whether the native loops are in use."""
DATA_PATH = "native" if NATIVE else "pure-python"
"""Which loops run, as `meshvpn status` shows it."""
if NATIVE:
    DATA_PATH_TEXT = "native (C with libsodium)"
elif _built is not None:
    DATA_PATH_TEXT = "pure Python, forced by MESHVPN_PURE_PYTHON (about half the native speed)"
elif STALE:
    DATA_PATH_TEXT = ("pure Python, about half the native speed: the native module was built from older sources; "
                      "`make setup` (or `make install`) builds it again")
else:
    DATA_PATH_TEXT = ("pure Python, about half the native speed: the native module was not built; "
                      "`make install` (or scripts/install) installs libsodium-dev, gcc and python3-dev and builds it")
"""The start-up log's line: which loops run, and why not the native ones."""


def native_module():
    """The native module in use (``meshvpn._fastpath``), or None on the pure-Python loops."""
    return _native


MAX_SPLIT_SEGMENTS = 64
"""Super-packets of more segments are left to ``split_in_place`` (the kernel's are capped at 45)."""
_MAX_CSUM_START = 60
_MAX_HEADERS = _MAX_CSUM_START + 60
_VERSION = wire.VERSION
_DATA = int(wire.MessageType.DATA)
_KEEPALIVE = int(wire.MessageType.KEEPALIVE)
_RELAY = int(wire.MessageType.RELAY)
_HEADER_LEN = wire.TRANSPORT_HEADER_LEN
_RELAY_INNER = wire.RELAY_PREFIX_LEN
_unpack_index = struct.Struct("<I").unpack_from

OpenRun = tuple[int, int, int, int, int, int, int, int, int]
"""(next_at, authentic, opened, opened_bytes, failed, spoofed, wrong_key, misdirected, casts) of :func:`open_run`."""


def room_for(size: int, prefix_len: int) -> int:
    """Bytes :func:`seal_split` may write for a super-packet of ``size`` bytes."""
    return MAX_SPLIT_SEGMENTS * (prefix_len + OVERHEAD + _MAX_HEADERS) + size


def seal_split(session: Session, prefix: bytes, src, start: int, end: int, hdr: VirtioNetHdr,
               out: bytearray, at: int) -> tuple[int, int, int] | None:
    """Split the super-packet ``src[start:end]`` and seal each segment for ``session`` at ``out[at:]``.

    Each message is ``prefix`` + DATA message, back to back: ``(count, end offset, size of the
    first message)``; the others have the first's size but the last, which may be shorter.
    None when the packet is outside this loop's limits (over MAX_SPLIT_SEGMENTS segments,
    headers past 60 bytes of IP header): split it with ``split_in_place`` instead.  Raises
    RemoteProtocolError for a malformed super-packet and SessionExhausted near the counter
    limit, both before anything is written.  ``src``'s bytes are unspecified afterwards.
    """
    size = end - start
    if hdr.gso_size <= 0 or hdr.csum_start > _MAX_CSUM_START or -(-size // hdr.gso_size) > MAX_SPLIT_SEGMENTS:
        return None
    if session.messages_sent() + MAX_SPLIT_SEGMENTS >= REJECT_AFTER_MESSAGES:
        raise SessionExhausted("session nonce space exhausted")
    if at < 0 or at + room_for(size, len(prefix)) > len(out):
        raise LocalProtocolError("seal_split: out has no room for the sealed segments")
    if _native is not None:
        shared = session.shared_counter
        count, end_at, first_size = _native.seal_split(
            session.send_key, session.remote_index, session.send_counter if shared is None else shared, src, start, end,
            hdr.gso_type, hdr.gso_size, hdr.csum_start, hdr.csum_offset, out, at, prefix)
        if shared is None:
            session.send_counter += count
        return count, end_at, first_size
    count = first_size = 0
    skip = len(prefix)
    for first, last in split_in_place(src, start, end, hdr):
        out[at : at + skip] = prefix
        end_at = session.seal_into(out, at + skip, src, first, last)
        first_size = first_size or end_at - at
        count += 1
        at = end_at
    return count, at, first_size


def open_run(opener: Union[Session, KeyRing], index: int, relay_key: bytes | None, overlay: bytes, accept: bytes,
             buf: bytearray, view: memoryview, at: int, stop: int, seg_size: int,
             to_tun: list[memoryview]) -> OpenRun:
    """Open, in place, the datagrams of ``buf[at:stop]`` (``seg_size`` each) while they go to ``index``.

    A datagram belongs to the run if it is a DATA/KEEPALIVE message to ``index``, bare or, when
    ``relay_key`` is given, in a relay envelope (then the envelope's key must be ``relay_key``,
    else it counts as ``wrong_key``).  ``opener`` is the session of that index or the peer's key
    ring.  Plaintexts (``view`` slices) whose source is ``overlay`` and whose destination is one
    of ``accept`` (addresses of ``overlay``'s length back to back: ours, broadcast, joined groups)
    are appended to ``to_tun``; the others count as ``spoofed`` or ``misdirected``, forged/replayed
    ones as ``failed``.  ``casts`` counts the appended ones not for ``accept``'s first address (ours):
    broadcasts and groups, which the LAN party then looks at (the unicast run costs nothing more).  ``authentic`` counts every message that opened (keepalives and dropped
    plaintexts too).  Nothing is raised for anything a datagram holds.
    """
    if _native is not None and type(opener) is Session and opener.local_index == index:
        return _native.open_run(opener.recv_key, index, opener.window, relay_key, overlay, accept,
                                buf, view, at, stop, seg_size, to_tun)
    authentic = opened = opened_bytes = failed = spoofed = wrong_key = misdirected = casts = 0
    skip = 0 if relay_key is None else _RELAY_INNER
    outer_kind = _RELAY if relay_key is not None else -1
    ip_version, source_at, dest_at, min_length = (4, 12, 16, 20) if len(overlay) == 4 else (6, 8, 24, 40)
    size = len(overlay)
    own = accept[:size] if accept and len(accept) % size == 0 else None
    open_into = opener.open_into
    while at < stop:
        end = min(at + seg_size, stop)
        msg = at + skip
        if end - at < skip + OVERHEAD or buf[at] != _VERSION or (skip and buf[at + 1] != outer_kind) \
                or (buf[msg + 1] != _DATA and buf[msg + 1] != _KEEPALIVE) or _unpack_index(buf, msg + 4)[0] != index:
            break
        here, at = at, at + seg_size
        if skip and buf[here + 4 : here + _RELAY_INNER] != relay_key:
            wrong_key += 1
            continue
        length = open_into(buf, msg, end)
        if length < 0:
            failed += 1
            continue
        authentic += 1
        if not length:
            continue
        body = msg + _HEADER_LEN
        if buf[body] >> 4 != ip_version or length < min_length or not buf.startswith(overlay, body + source_at):
            spoofed += 1
            continue
        dest = body + dest_at
        if own is None or not buf.startswith(own, dest):
            if own is None or not _other_destination(buf, dest, accept, size):
                misdirected += 1
                continue
            casts += 1
        opened += 1
        opened_bytes += length
        to_tun.append(view[body : body + length])
    return min(at, stop), authentic, opened, opened_bytes, failed, spoofed, wrong_key, misdirected, casts


def _other_destination(buf: bytearray, at: int, accept: bytes, size: int) -> bool:
    """Whether ``buf[at:at+size]`` is one of ``accept``'s addresses after the first (the rare case)."""
    return any(buf.startswith(accept[first : first + size], at) for first in range(size, len(accept), size))


def coalesce_iov(packets: list[memoryview]) -> list[list]:
    """:func:`meshvpn.node.datapath.offload.coalesce_iov` (TUN writes ``[virtio_hdr, head, payload...]``), natively when built."""
    if _native is not None:
        return _native.coalesce_iov(packets)
    return offload.coalesce_iov(packets)
