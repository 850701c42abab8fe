"""What the kernel says of one TCP connection's sending side (Linux ``TCP_INFO`` and ``SIOCOUTQ``).

The coord link asks once its network is back (`meshvpn.node.tcpresume`): data it wrote that is
still unacknowledged, while the connection's timer has already fired and backed off (the wait
doubles each time), goes again only when that timer fires next. Which timer depends on how the
outage looked to the kernel: segments sent into a dead link wait for the retransmission timeout;
segments it could not send at all (the route went with the link, or a local firewall refused
them) wait for the probe timer. Both count in ``tcpi_backoff``. ``struct tcp_info`` begins with
eight one-byte fields, of which ``tcpi_backoff`` is the fifth.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Optional

_HEAD = struct.Struct("=8B")
"""state, ca_state, retransmits, probes, backoff, options, wscale, flags."""
_QUEUED = struct.Struct("=i")


def retransmitting(sock: Optional[socket.socket]) -> Optional[bool]:
    """Whether `sock` has data not acknowledged yet (sent or not) and its timer backed off already;
    None where the kernel does not say (not Linux, not a connected TCP socket)."""
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, _HEAD.size)
        (queued,) = _QUEUED.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(_QUEUED.size)))
    except OSError:
        return None
    return backed_off(raw, queued)


def backed_off(raw: bytes, queued: int) -> Optional[bool]:
    """`retransmitting` from the start of a ``struct tcp_info`` and the bytes written but not yet
    acknowledged (``SIOCOUTQ``); None if `raw` is too short."""
    if len(raw) < _HEAD.size:
        return None
    backoff = _HEAD.unpack_from(raw)[4]
    return queued > 0 and backoff > 0
