"""What the kernel dropped on the node's UDP sockets, and whether each got the buffers it asked for.

A datagram the kernel drops because a socket's receive buffer is full never reaches the node,
so no counter of ours sees it. The kernel counts it twice: per socket (the ``drops`` column of
``/proc/net/udp``, found by the socket's inode) and per network namespace (``RcvbufErrors`` and
``InErrors`` in ``/proc/net/snmp``). ``meshvpn status`` and the metrics show both, with each
socket's buffer sizes as the kernel granted them (it doubles the request and caps it at
``net.core.rmem_max``/``wmem_max``).
"""

from __future__ import annotations

import os
import socket
from typing import Iterable, Mapping

UDP_TABLES = ("/proc/net/udp", "/proc/net/udp6")
SNMP = "/proc/net/snmp"
_UDP_ERRORS = {"InErrors": "in_errors", "RcvbufErrors": "rcvbuf_errors", "SndbufErrors": "sndbuf_errors"}


def drops_by_inode(tables: Iterable[str]) -> dict[int, int]:
    """Socket inode → datagrams dropped, from the text of ``/proc/net/udp``-style tables."""
    found: dict[int, int] = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 13 and fields[9].isdigit() and fields[-1].isdigit():
                found[int(fields[9])] = int(fields[-1])
    return found


def udp_errors(snmp: str) -> dict[str, int]:
    """The namespace's UDP receive errors from the text of ``/proc/net/snmp``."""
    rows = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    values = dict(zip(rows[0], rows[1]))
    return {ours: int(values[theirs]) for theirs, ours in _UDP_ERRORS.items() if values.get(theirs, "").isdigit()}


def _read(path: str) -> str:
    try:
        with open(path) as table:
            return table.read()
    except OSError:
        return ""


def socket_report(sockets: Mapping[str, socket.socket]) -> list[dict]:
    """Each named socket: kernel drops and the buffer sizes it has."""
    drops = drops_by_inode(_read(path) for path in UDP_TABLES)
    report = []
    for name, sock in sockets.items():
        try:
            inode = os.fstat(sock.fileno()).st_ino
            rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except (OSError, ValueError):  # closed meanwhile
            continue
        report.append({"socket": name, "drops": drops.get(inode, 0), "rcvbuf": rcvbuf, "sndbuf": sndbuf})
    return report


def namespace_udp_errors() -> dict[str, int]:
    """``udp_errors`` of this network namespace."""
    return udp_errors(_read(SNMP))
