"""The real relay core on a simulated host, and the coord's key that signs its tokens.

A relay killed in a test is a closed socket (`SimRelay.kill`); a restarted one has lost every
registration, as a real restart has (`SimRelay.restart`).
"""

from __future__ import annotations

from typing import Iterable

from meshvpn import keys
from meshvpn.config import RelayLimits
from meshvpn.control import messages as m
from meshvpn.relay.core import RelayCore
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim.clock import Scheduler
from meshvpn.sim.network import Host, Link, LinkDirection, Network, Realm
from meshvpn.sim.nodes import WALL_OFFSET
from meshvpn.wire import Endpoint

COORD = bytes([1]) * 32
"""The coord's private key: relays trust tokens it signs."""
PORT = 7500


class SimRelay:
    """A relay core on a simulated host `delay` seconds from the internet, or from `realm` (a NAT's
    LAN that forwards the relay's port: then nodes reach it at `public`, the NAT's address)."""

    def __init__(self, scheduler: Scheduler, net: Network, name: str, address: str, delay: float, rng,
                 realm: Realm | None = None, public: str | None = None) -> None:
        self.scheduler, self.rng = scheduler, rng
        self.private = bytes([len(name)]) + rng.randbytes(31)
        self.info = m.RelayInfo(name, public or address, PORT, keys.public_key(self.private))
        self.endpoint = Endpoint(public or address, PORT)
        self.host = Host(net, address, realm=realm, link=Link(LinkDirection(delay), LinkDirection(delay)))
        self.sock = self.host.bind(PORT, self._on_datagram)
        self.restart()

    def restart(self) -> None:
        """A fresh core: every registration is lost."""
        self.core = RelayCore(self.private, keys.public_key(COORD), RelayLimits(), self.rng.randbytes, self._wall())

    def kill(self) -> None:
        """The relay dies: nothing is received or answered any more."""
        self.sock.close()

    def _wall(self) -> float:
        return WALL_OFFSET + self.scheduler.now

    def _on_datagram(self, data: bytes, src) -> None:
        self.core.receive(data, Endpoint(*src), self._wall())
        for dst, out in self.core.datagrams_to_send():
            self.sock.sendto(out, dst)


def relay_tokens(minter: TokenMinter, relays: Iterable[m.RelayInfo], node_key: bytes,
                 now: float) -> tuple[m.RelayToken, ...]:
    """The tokens the coord gives a node for each relay (`now` on the simulated clock)."""
    tokens = []
    for info in relays:
        token, expires = minter.mint(info.public_key, node_key, WALL_OFFSET + now)
        tokens.append(m.RelayToken(info.name, token, float(expires)))
    return tuple(tokens)
