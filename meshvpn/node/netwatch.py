"""The shell that watches the host's network: an rtnetlink socket read from the event loop.

The kernel multicasts link, IPv4 and IPv6 address and IPv4 route changes to a ``NETLINK_ROUTE`` socket
bound to their groups; this shell reads them, decodes them (:mod:`meshvpn.node.netlink`) and
gives them to the sans-IO rules (:mod:`meshvpn.node.netchange`), whose one debounce timer it
keeps. When a burst of changes is over, ``on_change`` gets one
:class:`~meshvpn.node.netchange.NetworkChanged`. Nothing is polled: a move to another network
is noticed as soon as the kernel knows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable, Optional

from meshvpn.errors import RemoteProtocolError
from meshvpn.node.endpoints import interface_addresses
from meshvpn.node.ipv6 import host_ipv6
from meshvpn.node.netchange import NetChanges, NetworkChanged
from meshvpn.node.netlink import GROUPS, Overrun, decode
from meshvpn.timers import DeadlineTimer

log = logging.getLogger("meshvpn.node.netwatch")

RECV_BUFFER = 1 << 20
"""Room for a burst of notifications (a flushed routing table is many messages)."""
READS = 32
"""Reads per readiness callback."""


class NetWatch:
    """Watches rtnetlink while the node runs; a host without netlink (not Linux) just has no watcher."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[NetworkChanged], None],
                 coord_local: Callable[[], Optional[str]]) -> None:
        self._loop = loop
        self.changes = NetChanges(())
        self._on_change = on_change
        self._coord_local = coord_local
        """The coord connection's local address now (it changes with every reconnect)."""
        self._timer = DeadlineTimer(loop, self._on_timer)
        self._sock: Optional[socket.socket] = None
        self.errors = 0
        """Reads that could not be decoded (dropped)."""

    def start(self, ignore: tuple[str, ...]) -> bool:
        """Subscribe, ignoring interfaces `ignore` (the TUN); False (and a log line) without rtnetlink."""
        self.changes.ignore.update(ignore)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            sock.bind((0, GROUPS))
        except (AttributeError, OSError) as exc:
            log.warning("not watching network changes: %s", exc)
            return False
        sock.setblocking(False)
        self._sock = sock
        self.changes.seed(dict(socket.if_nameindex()), interface_addresses(), default_gateway(), host_ipv6())
        self._loop.add_reader(sock.fileno(), self._readable)
        return True

    def close(self) -> None:
        self._timer.cancel()
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        now = self._loop.time()
        for _ in range(READS):
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: the kernel dropped notifications
                log.debug("netlink read: %s", exc)
                self.changes.overrun(now)
                continue
            try:
                for change in decode(data):
                    self.changes.observe(change, now)
            except Overrun:
                self.changes.overrun(now)
            except RemoteProtocolError as exc:
                self.errors += 1
                log.debug("netlink message dropped: %s", exc)
        self._timer.follow(self.changes.get_timer())

    def _on_timer(self) -> None:
        self.changes.coord_local = self._coord_local()
        self.changes.handle_timer(self._loop.time())
        for action in self.changes.next_actions():
            self._on_change(action)
        self._timer.follow(self.changes.get_timer())


def default_gateway(route_table: str = "/proc/net/route") -> Optional[str]:
    """The IPv4 default gateway of the main table as the kernel lists it, if there is one."""
    try:
        with open(route_table) as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    return None
