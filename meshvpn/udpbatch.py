"""UDP with segmentation offload: many datagrams per ``sendmsg`` and per ``recvmsg``.

Why: a syscall costs as much as sealing a packet, so the data path sends every encrypted
segment of a batch with one ``sendmsg`` carrying a ``UDP_SEGMENT`` control message (the kernel,
or the NIC, cuts it into datagrams of the given size) and receives with ``UDP_GRO`` on, so one
``recvmsg`` returns a run of equal-sized datagrams plus their size. Both fall back to one
datagram per call when the kernel refuses (EIO: the route cannot checksum; EINVAL/ENOPROTOOPT:
no UDP GSO), and stay there. Send failures of single datagrams are counted, not raised.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Sequence

from meshvpn.dualstack import IPV4_WILDCARD, dual_socket, is_dual, on_socket, plain

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_SEGMENTS = 64
"""UDP_MAX_SEGMENTS of older kernels (newer allow 128)."""
MAX_GSO_BYTES = 65507
"""The largest UDP payload one IPv4 datagram can carry, which bounds a GSO send."""
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_GRO_SIZE = struct.Struct("=i")
_SEG_SIZE = struct.Struct("=H")
_GRO_CMSG_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size)

Bytes = bytes | bytearray | memoryview


class BatchUdpSocket:
    """A UDP socket that sends and receives batches of datagrams with GSO/GRO when it can."""

    def __init__(self, sock: socket.socket, bufsize: int = 65535, offload: bool = True,
                 buffer: bytearray | None = None) -> None:
        self.sock = sock
        self.gso = offload
        """Whether sends still use UDP_SEGMENT; cleared for good on the first refusal."""
        self.gro = offload and _enable_gro(sock)
        """Whether the kernel accepted UDP_GRO on this socket."""
        self.buffer = bytearray(bufsize) if buffer is None else buffer
        """Where :meth:`recv_into` puts datagrams: its own, or `buffer`, an area shared by sockets read
        one after the other on one thread (what one received is consumed before the next receives)."""
        self._view = memoryview(self.buffer)
        self._ancbufsize = _GRO_CMSG_SPACE if self.gro else 0
        self.dual = is_dual(sock)
        """An IPv6 socket that carries IPv4 too: addresses are translated at its edge (`meshvpn.dualstack`)."""
        self.family = socket.AF_INET if self.dual else sock.family
        """The family the socket's owner looks servers up in: IPv4 on a dual-stack socket, whose IPv6
        servers are looked up apart (`meshvpn.node.ipv6`)."""
        self.send_errors = 0
        """Datagrams (or GSO batches) the kernel would not take: full buffers, unreachable peers."""
        self.truncated = 0
        """Receives dropped because they did not fit the buffer."""

    def send_batch(self, dst: Any, segments: Sequence[Bytes], seg_size: int) -> None:
        """Send each segment as one datagram; all but the last must be ``seg_size`` long.

        The segments are passed to the kernel as an iovec (no joining copy), at most
        MAX_SEGMENTS and MAX_GSO_BYTES per call.
        """
        per_call = max(1, min(MAX_SEGMENTS, MAX_GSO_BYTES // seg_size))
        for first in range(0, len(segments), per_call):
            self._send(dst, segments[first : first + per_call], seg_size)

    def send_contiguous(self, dst: Any, data: Bytes, seg_size: int) -> None:
        """Send ``data``, which holds segments back to back, as datagrams of ``seg_size`` bytes."""
        step = max(1, min(MAX_SEGMENTS, MAX_GSO_BYTES // seg_size)) * seg_size
        view = memoryview(data)
        for first in range(0, len(view), step):
            self._send(dst, (view[first : first + step],), seg_size)

    def sendto(self, data: Bytes, dst: Any) -> None:
        """Send one datagram; a failure is counted, not raised."""
        try:
            self.sock.sendto(data, on_socket(dst) if self.dual else dst)
        except OSError:
            self.send_errors += 1

    def _send(self, dst: Any, iov: Sequence[Bytes], seg_size: int) -> None:
        sock = self.sock
        if self.dual:
            dst = on_socket(dst)
        total = sum(map(len, iov))
        try:
            if total <= seg_size:
                sock.sendmsg(iov, (), 0, dst)
                return
            if self.gso:
                sock.sendmsg(iov, ((SOL_UDP, UDP_SEGMENT, _SEG_SIZE.pack(seg_size)),), 0, dst)
                return
        except OSError as exc:
            if not (self.gso and total > seg_size and exc.errno in _GSO_REFUSED):
                self.send_errors += 1
                return
            self.gso = False
        joined = b"".join(iov) if len(iov) > 1 else memoryview(iov[0])
        for first in range(0, total, seg_size):
            try:
                sock.sendto(joined[first : first + seg_size], dst)
            except OSError:
                self.send_errors += 1

    def recv_into(self, into: memoryview | None = None) -> tuple[Any, int, int]:
        """Receive into :attr:`buffer`, or ``into``: ``(source, nbytes, segment size)``.

        With GRO the bytes are several datagrams of ``segment size`` (the last may be shorter);
        otherwise the size equals ``nbytes``. Raises BlockingIOError on a non-blocking socket
        with nothing queued; a truncated receive yields ``nbytes == 0``.
        """
        view = self._view if into is None else into
        nbytes, ancdata, flags, source = self.sock.recvmsg_into((view,), self._ancbufsize)
        if self.dual:
            source = plain(source)
        if flags & socket.MSG_TRUNC:
            self.truncated += 1
            return source, 0, 1
        for level, kind, data in ancdata:
            if level == SOL_UDP and kind == UDP_GRO:
                return source, nbytes, _GRO_SIZE.unpack_from(data)[0] or nbytes
        return source, nbytes, nbytes or 1

    def recv_batch(self) -> tuple[Any, list[memoryview]]:
        """Receive once: the source and a view of each datagram (valid until the next receive)."""
        source, nbytes, seg_size = self.recv_into()
        view = self._view
        return source, [view[first : min(first + seg_size, nbytes)] for first in range(0, nbytes, seg_size)]



def bind_udp(host: str, port: int, buffer_bytes: int, dual_stack: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to `host`:`port` (IPv4 or IPv6 as the address says) with
    `buffer_bytes` receive and send buffers (capped by net.core.rmem_max and wmem_max).

    With `dual_stack`, the IPv4 wildcard becomes one IPv6 socket that carries both families
    (`meshvpn.dualstack`), or stays IPv4 where the host has no IPv6."""
    sock = dual_socket(port) if dual_stack and host == IPV4_WILDCARD else None
    address = None
    if sock is None:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
        if address is not None:
            sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True
