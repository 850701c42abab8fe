"""Which of a relay's addresses its UDP hellos (and its stream) go to: Happy Eyeballs for relays.

A relay named by a DNS name with AAAA and A records is reachable at two addresses, and a node's
network often carries only one family well: IPv4 that lets no UDP out, or an IPv6 route that is
present but drops every packet. Hellos to one address only would then find no relay (or fall back
to a TCP stream) although the other family works. So, as the coord link does (RFC 8305,
`meshvpn.node.eyeballs`):

* **Order**: the families alternate, IPv6 first (`eyeballs.interleave`).
* **Race**: a hello round that has no address to trust sends to the first address at once and to
  each next one `eyeballs.STAGGER` later while no ack came (`eyeballs.Race`).
* **Lock**: the first address that acks is the relay's address (`endpoint`): hellos, relayed
  packets and the stream go there alone while it answers.
* **Failure**: when the link stops being ready, the address is no longer trusted and the next
  rounds race again, the other family first, before the link falls back to a stream.
* **Way**: a peer relay (a member relaying) is also reached where our direct path to its node goes
  (`set_way`), which goes first: its NAT or firewall lets in only what answers its node's own
  packets, and that path is one it answers, of whatever family (a dual-stack member meets a
  dual-stack node over IPv6, where its IPv4 NAT opened nothing towards the node's public endpoint).

A TURN server named so is raced the same way, a request standing for a hello
(`meshvpn.node.turn.core`). Sans-IO: every input takes ``now``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from meshvpn.node.eyeballs import Race, interleave
from meshvpn.wire import Endpoint


class RelayAddresses:
    """One relay's addresses, the one it is reached at now, and the race of a hello round."""

    def __init__(self, addresses: Sequence[Endpoint]) -> None:
        if not addresses:
            raise ValueError("a relay needs an address")
        self.given: tuple[Endpoint, ...] = tuple(interleave(list(dict.fromkeys(addresses))))
        """The relay's own addresses, in Happy Eyeballs order."""
        self.all = self.given
        """Every address to try: `way` first, then `given`."""
        self.way: Optional[Endpoint] = None
        """Where our direct path to a peer relay's node goes, if it has one."""
        self.endpoint = self.all[0]
        """Where the relay is reached now: the address that acked last, or the first to try."""
        self.locked = False
        """`endpoint` acked and has not failed since: hellos go there alone."""
        self._failed: Optional[Endpoint] = None
        self._race: Optional[Race] = None
        self._pending: list[Endpoint] = []
        """The addresses of this round's race not tried yet."""

    def set_way(self, way: Endpoint) -> bool:
        """Our direct path to a peer relay's node goes to `way` now: try it first (an address it
        replaces stays only if it is one of `given`). Whether the addresses changed."""
        if way == self.way:
            return False
        self.way, self.all = way, tuple(dict.fromkeys((way, *self.given)))
        if self.endpoint not in self.all or not self.locked:
            self.endpoint, self.locked = self.all[0], False
        self._pending = [address for address in self._pending if address in self.all]
        return True

    def order(self) -> list[Endpoint]:
        """The addresses in the order to try them: the trusted one first; else the Happy Eyeballs
        order with the one that failed last (the other family first)."""
        first = self.endpoint if self.locked else None
        return sorted(self.all, key=lambda a: (a != first, a == self._failed))  # stable: `all`'s order within

    def round(self, now: float) -> Endpoint:
        """A hello round begins: where its first hello goes (the others follow, `due`)."""
        if self.locked or len(self.all) == 1:
            self._pending = []
            return self.endpoint
        order = self.order()
        self._race, self._pending = Race(), order[1:]
        self._race.started(now)
        return order[0]

    def due(self, now: float) -> Optional[Endpoint]:
        """The next address of the round's race if its hello is due at `now` (no ack yet)."""
        if not self._pending or self._race is None or not self._race.start_now(now):
            return None
        self._race.started(now)
        return self._pending.pop(0)

    def timer(self) -> Optional[float]:
        """When `due` next has an address; None when the round has none left."""
        return self._race.get_timer() if self._pending and self._race is not None else None

    def acked(self, src: Endpoint) -> bool:
        """`src` acked a hello: the first to do so since the last failure becomes the relay's
        address (a late ack of another family does not move it). Whether `endpoint` changed."""
        self._pending = []
        if self._race is not None:
            self._race.won()
        if self.locked or src not in self.all:
            return False
        moved, self.endpoint, self.locked, self._failed = src != self.endpoint, src, True, None
        return moved

    def failed(self) -> bool:
        """The link stopped being ready: its address is not trusted, the other family goes first.
        Whether there is another address to try."""
        if not self.locked or len(self.all) == 1:
            return False
        self.locked, self._failed = False, self.endpoint
        return True
