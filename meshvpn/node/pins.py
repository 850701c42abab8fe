"""Which of the node's UDP sockets datagrams to an endpoint leave from, when it is not the main one.

Behind an endpoint-dependent NAT each socket has its own mappings, and the peer's NAT lets in
only the mapping it answered, so the socket matters. Two kinds of pin, sans-IO:

* **Heard**: an authenticated probe from the endpoint arrived on a socket (an extra one, or the
  main one): whatever goes back there leaves from that socket. This is what the network proved,
  so it always wins.
* **Probing**: our probes to a peer leave from the socket of our latest port sample
  (`meshvpn.node.traversal`), so that our NAT makes a new mapping towards the peer right above the
  sample. Only for endpoints not heard from.

The shell prunes with `keep_only` (the endpoints routes use) when it closes extra sockets.
"""

from __future__ import annotations

from typing import Iterable, Optional

from meshvpn.node.transports import Moves
from meshvpn.wire import Endpoint

MAX_HEARD_MAIN = 1024
"""Endpoints remembered as heard on the main socket (the oldest go first): they pin nothing but
keep a probing pin off them, so they only need to outlive a punch campaign."""


class SocketPins:
    """Endpoint -> extra socket id its datagrams leave from (`get`: None for the main socket)."""

    def __init__(self) -> None:
        self._heard: dict[Endpoint, int] = {}
        """Heard on an extra socket."""
        self._main: dict[Endpoint, None] = {}
        """Heard on the main socket, oldest first."""
        self._probing: dict[Endpoint, int] = {}
        self.moves = Moves()
        """Endpoints whose socket changed (for the node's routes)."""

    def __bool__(self) -> bool:
        """Whether any endpoint leaves from an extra socket (false in the common case: a quick test)."""
        return bool(self._heard or self._probing)

    def get(self, dst: Endpoint) -> Optional[int]:
        """The extra socket for `dst`, or None for the main socket."""
        sid = self._heard.get(dst)
        if sid is not None or dst in self._main:
            return sid
        return self._probing.get(dst)

    def heard(self, src: Endpoint, via: Optional[int]) -> None:
        """An authenticated probe from `src` arrived on socket `via` (None: the main socket)."""
        if self.get(src) != via:
            self.moves.add(src)
        self._probing.pop(src, None)
        if via is not None:
            self._main.pop(src, None)
            self._heard[src] = via
            return
        self._heard.pop(src, None)
        self._main.pop(src, None)
        self._main[src] = None
        if len(self._main) > MAX_HEARD_MAIN:
            del self._main[next(iter(self._main))]

    def was_heard(self, endpoint: Endpoint) -> bool:
        """Whether an authenticated probe from `endpoint` arrived (on any socket)."""
        return endpoint in self._heard or endpoint in self._main

    def probing(self, dst: Endpoint, sid: int) -> None:
        """Our probe to `dst` leaves from `sid`, unless `dst` was heard on a socket already."""
        if dst not in self._heard and dst not in self._main and self._probing.get(dst) != sid:
            self._probing[dst] = sid
            self.moves.add(dst)

    def keep_only(self, endpoints: Iterable[Endpoint]) -> set[int]:
        """Forget the pins of every other endpoint; the extra sockets the kept ones use."""
        keep = set(endpoints)
        for table in (self._heard, self._main, self._probing):
            for endpoint in [e for e in table if e not in keep]:
                del table[endpoint]
                self.moves.add(endpoint)
        return {*self._heard.values(), *self._probing.values()}

    def clear(self) -> None:
        """The extra sockets are gone (the network changed). What was heard on the main socket stays:
        that socket stays too, and a path it carried may come back (a link that was down a while)."""
        self.moves.add(*self._heard, *self._probing)
        self._heard.clear()
        self._probing.clear()
