"""DNS names of the relays and TURN servers the coord announces, resolved by the node.

The coord passes each server's host on as its config writes it, so a name is resolved where it
is used: on the node, with the node's resolver (a name may mean another address there than on
the coord, whose /etc/hosts often maps its own name to 127.0.1.1). The sans-IO cores
(`RelaySet`, `TurnLinks`) only ever see IP addresses: `rewrite` puts the addresses known for
names into ``registered`` and ``relay_tokens`` before the shell hands them on, leaving out a
server whose name has no address yet, and resolves unknown names in the background. A named
server that is not working is resolved again every `RECHECK` seconds (its address may have
moved, or the first lookup failed); when an address changes, `on_change` gets the last
``registered`` rewritten with it. The coord's own address needs none of this: every connect
attempt resolves it afresh.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import replace
from typing import Awaitable, Callable, Optional

from meshvpn.control import messages as m
from meshvpn.node.node import Node
from meshvpn.node.relay.core import is_ip
from meshvpn.udpbatch import BatchUdpSocket

log = logging.getLogger("meshvpn.node.names")

RECHECK = 30.0
"""Seconds between lookups of the names of servers that are not working."""
RESOLVE_TIMEOUT = 5.0
"""Seconds one lookup may take."""

Resolve = Callable[[str, int], Awaitable[tuple[str, ...]]]
GetAddrInfo = Callable[..., Awaitable[list]]
"""The system's resolver as the loop runs it in its executor (``loop.getaddrinfo``)."""


def resolver(getaddrinfo: GetAddrInfo, family: int, dual: bool = False) -> Resolve:
    """Look a name up with `getaddrinfo`: its addresses of `family`; with `dual` (the node's
    socket carries both families) both are asked, those of `family` first, so an IPv6 address
    serves when the name has only AAAA records and a relay link can race both families. The
    resolver's order within a family; empty when the name has none."""

    async def resolve(host: str, port: int) -> tuple[str, ...]:
        try:
            infos = await asyncio.wait_for(getaddrinfo(host, port, family=socket.AF_UNSPEC if dual else family,
                                                       type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot resolve %s: %s", host, getattr(exc, "strerror", None) or exc or "timed out")
            return ()
        ordered = sorted(infos, key=lambda info: info[0] != family)  # stable: the resolver's order within
        return tuple(dict.fromkeys(ipaddress.ip_address(info[4][0]).compressed for info in ordered))

    return resolve


def watch_names(loop: asyncio.AbstractEventLoop, udp: BatchUdpSocket, node: Node,
                transmit: Callable[[], None]) -> NameWatch:
    """The daemon's watch: a moved name reconfigures the node's relay and TURN links (then the daemon
    sends what that produced); a server works when its relay link is ready or its TURN allocation is.
    Names are looked up for `udp`, the node's socket, which every relay and TURN packet leaves from."""

    def moved(registered: m.Registered) -> None:
        node.servers_moved(registered, loop.time())
        transmit()

    def works(name: str) -> bool:
        relay, server = node.relays.links.get(name), node.turn.servers.get(name)
        return (relay is not None and relay.ready) or (server is not None and server.client.ready)

    return NameWatch(resolver(loop.getaddrinfo, udp.family, udp.dual), moved, works, node.relays.addresses_of)


class NameWatch:
    """The addresses of the names in the coord's announcements, kept fresh while the node runs."""

    def __init__(self, resolve: Resolve, on_change: Callable[[m.Registered], None],
                 working: Callable[[str], bool], all_addresses: Optional[dict[str, tuple[str, ...]]] = None) -> None:
        self._resolve = resolve
        self._on_change = on_change
        self._working = working
        """Whether the server of that name (relay or TURN) works now."""
        self.addresses: dict[str, str] = {}
        """Name → its last known address (the first the resolver gave)."""
        self.all_addresses = all_addresses if all_addresses is not None else {}
        """That first address → every address of the name (`RelaySet.addresses_of`)."""
        self._registered: Optional[m.Registered] = None
        self._names: dict[str, tuple[str, int]] = {}
        """Server name → (DNS name, port) of the named servers in the last `registered`."""
        self._task: Optional[asyncio.Task] = None

    def rewrite(self, msg: m.Message) -> m.Message:
        """`msg` with known addresses in place of names; starts looking up the names it does not know."""
        if isinstance(msg, m.Registered):
            self._registered = msg
            self._names = {info.name: (info.host, info.port) for info in (*msg.relays, *(msg.turn or ()))
                           if not is_ip(info.host)}
            if any(host not in self.addresses for host, _ in self._names.values()):
                self._start(list(self._names))
            return replace(msg, relays=self._known(msg.relays), turn=self._known(msg.turn))
        if isinstance(msg, m.Relays) and self._registered is not None:  # peer relays came or went
            self._registered = replace(self._registered, relays=msg.relays, relay_tokens=msg.relay_tokens)
            return replace(msg, relays=self._known(msg.relays))
        if isinstance(msg, m.RelayTokens) and msg.turn:
            return replace(msg, turn=self._known(msg.turn))
        return msg

    def recheck(self) -> None:
        """Look up again the names of the servers that do not work (called every `RECHECK` seconds)."""
        failing = [name for name in self._names if not self._working(name)]
        if failing:
            self._start(failing)

    async def run(self) -> None:
        """Recheck forever; cancel it to stop."""
        while True:
            await asyncio.sleep(RECHECK)
            self.recheck()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _known(self, servers):
        if servers is None:
            return None
        out = []
        for info in servers:
            if is_ip(info.host):
                out.append(info)
            elif info.host in self.addresses:
                out.append(replace(info, host=self.addresses[info.host]))
        return tuple(out)

    def _start(self, names: list[str]) -> None:
        if self._task is None or self._task.done():
            wanted = [(name, *self._names[name]) for name in names]
            self._task = asyncio.get_running_loop().create_task(self._lookup(wanted))

    async def _lookup(self, wanted: list[tuple[str, str, int]]) -> None:
        changed = False
        for name, host, port in wanted:
            found = await self._resolve(host, port)
            if found and (self.addresses.get(host), self.all_addresses.get(found[0])) != (found[0], found):
                log.info("%s (%s) resolves to %s", name, host, ", ".join(found))
                self.addresses[host] = found[0]
                self.all_addresses[found[0]] = found
                changed = True
        if changed and self._registered is not None:
            registered = self._registered
            self._on_change(replace(registered, relays=self._known(registered.relays),
                                    turn=self._known(registered.turn)))
