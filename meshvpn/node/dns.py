"""The daemon's names: the DNS responder on the overlay address, fed by the node's ``PeerMapChanged``.

The node announces who is in the network whenever that changes; this shell turns each
announcement into a fresh :class:`~meshvpn.lan.names.Directory` and hands it to the responder,
so the peer map stays the one source of names. The responder (re)binds whenever the coord
assigns an overlay address, and where systemd-resolved runs the mesh's domain is registered
on the TUN device; both are undone on exit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from meshvpn.config import DnsConfig
from meshvpn.lan import resolved
from meshvpn.lan.dnsserver import DnsResponder, serve_dns
from meshvpn.lan.names import Directory, Host
from meshvpn.node import events as ev

log = logging.getLogger("meshvpn.node.dns")


def directory(event: ev.PeerMapChanged, suffix: str) -> Directory:
    """The names of one peer-map announcement, as the responder looks them up."""
    return Directory(event.network, suffix, (Host(name, ipv4=address) for name, address in event.hosts))


class NameService:
    """Serves DNS for the mesh on the node's overlay address while the daemon runs."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.link = ""
        """The TUN device the mesh's domain is registered on with resolved."""
        self.address: Optional[str] = None
        """The overlay address the responder answers on (None until it does)."""
        self.directory = Directory("", config.suffix, ())
        self.responder: Optional[DnsResponder] = None
        self._registered = False
        self._task: Optional[asyncio.Task] = None

    def peers_changed(self, event: ev.PeerMapChanged) -> None:
        """A peer joined, left or was renamed: answer from the new map at once."""
        self.directory = directory(event, self.config.suffix)
        if self.responder is not None:
            self.responder.directory = self.directory

    def address_assigned(self, address: str, link: str) -> None:
        """The coord gave the node `address` (new or changed) on TUN device `link`: answer there."""
        if not self.config.enabled:
            return
        self.link = link
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._serve(address))

    async def _serve(self, address: str) -> None:
        self._stop_responder()
        try:
            self.responder = await serve_dns(address, self.config.port, self.directory, self._upstream())
        except OSError as exc:
            log.warning("cannot answer DNS on %s:%d: %s", address, self.config.port, exc)
            return
        self.address = address
        domains = (self.directory.zone, self.config.suffix)
        log.info("answering DNS for %s on %s:%d", ", ".join(domains), address, self.config.port)
        reason = resolved.unavailable_reason() if self.config.resolved else "lan.dns.resolved is off"
        if reason:
            log.info("mesh names are not registered with systemd-resolved (%s): ask %s:%d, e.g. dig @%s NAME.%s;"
                     " docs/lan-party.md lists other ways", reason, address, self.config.port, address,
                     self.directory.zone)
        else:
            self._registered = True  # so that exit reverts the link even if this is cancelled half-way
            self._registered = await resolved.register(self.link, address, self.config.port, domains)

    def _upstream(self):
        return self.config.forward_to if self.config.other_names == "forward" else None

    def _stop_responder(self) -> None:
        if self.responder is not None:
            self.responder.close()
        self.responder, self.address = None, None

    async def close(self) -> None:
        """Stop answering; give the TUN link back to resolved's defaults."""
        if self._task is not None:
            self._task.cancel()
        self._stop_responder()
        if self._registered:
            self._registered = False
            await resolved.unregister(self.link)

    def status(self) -> Optional[str]:
        """``address:port`` the node answers DNS on, for ``meshvpn status``; None when it does not."""
        return None if self.address is None else f"{self.address}:{self.config.port}"
