"""Where the node can be reached, kept current: STUN mapping, LAN endpoints, NAT profile and the
router's port mappings of the UDP and TCP punch ports (`meshvpn.node.portmap`, which tells us
when they change).

A round asks the coord's STUN server for the shared socket's public mapping, lists the LAN
endpoints and reports them to the coord (``Endpoints``, passed on to every peer) when they
changed; then it samples the NAT's behaviour, which takes longer, and reports again if that
changed. Rounds run every ``ENDPOINT_REFRESH`` seconds, and at once when the host's network
changed (:meth:`EndpointRefresh.network_changed`): a round still waiting for an answer from the
old network is abandoned, the birthday sockets (whose mappings belong to the old NAT) are closed
and the coord link reconnects if the rules said so; the router's port mapping is probed again,
and the relay and TURN links hear of it at once (``Node.servers_network_changed``: a network
that lets no UDP out answers no STUN either). Once the new endpoints are known *and* the
coord link is up, the node re-probes its peers and asks the coord to punch them again
(``Node.network_changed``): a punch request sent while the link reconnects would be lost, and
one sent before the new endpoints would make the peers punch towards the old ones.

A path that died while carrying traffic asks for a round too (``DiscoverEndpoints``,
:meth:`EndpointRefresh.rediscover`): our NAT may have re-mapped us. Once that round's STUN
answer is reported, the node re-punches the peers that fell back (``Node.endpoints_refreshed``;
if the coord link is down, the node does it again when it registers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

from meshvpn.control import messages as m
from meshvpn.node.announce6 import announced
from meshvpn.node.discovery import own_nat_profile, public_mapping
from meshvpn.node.eventlog import endpoints_line
from meshvpn.node.ipv6 import ipv6_mapping, local_ipv6
from meshvpn.node.netchange import NetworkChanged
from meshvpn.node.portmap.core import Transport
from meshvpn.node.traversal import nat_info

if TYPE_CHECKING:
    from meshvpn.node.daemon import NodeDaemon

log = logging.getLogger("meshvpn.node")

ENDPOINT_REFRESH = 60.0
"""Seconds between re-checks of local endpoints and the STUN mapping while nothing changes."""


class EndpointRefresh:
    """The daemon's endpoint rounds: one task, restarted by :meth:`wake`."""

    def __init__(self, daemon: NodeDaemon) -> None:
        self.daemon = daemon
        self._task: Optional[asyncio.Task] = None
        self._moved = False
        """The network changed and the peers were not re-probed since."""
        self._fresh = False
        """The endpoints were learnt again since the last change."""
        self._lost = False
        """A change since the last re-probe lost the connections of the old network."""
        self._asked = False
        """The node asked for a round (``DiscoverEndpoints``) that has not reported yet."""
        self.mapped_tcp: Optional[m.Endpoint] = None
        """The router's mapping of our TCP punch port, as last reported (``Register`` repeats it)."""
        self._profiled_without_relay = False
        """The last NAT profile was taken before any relay was known (so without the mapping test)."""
        self._profiling: Optional[asyncio.Task] = None
        """A profile taken again once the relays are known, outside the rounds."""
        self._profiles_started = 0
        """Profiles begun so far: only the latest begun may set the node's (an earlier one knew less)."""

    def start(self) -> None:
        self._task = self.daemon.loop.create_task(self._run())

    def network_changed(self, change: NetworkChanged) -> None:
        """Redo what the old network made: mappings, maybe the coord connection, a round now."""
        daemon = self.daemon
        log.info("network changed: %s", "; ".join(change.reasons))
        if change.connections_lost:  # else the NAT may still hold the extra sockets' mappings
            daemon.mappings.close()
        if daemon.config.listen.address in change.vanished:
            log.warning("listen.address %s is gone: peers cannot reach this node until it is back "
                        "(a node that moves between networks listens on 0.0.0.0)", daemon.config.listen.address)
        if change.reconnect_coord:
            log.info("coord link: reconnecting now on the new network")
            daemon.link.reconnect()
        daemon.portmap.reprobe()
        daemon.node.servers_network_changed(daemon.loop.time(), change.connections_lost)
        daemon.transmit()
        self._moved, self._fresh = True, False
        self._lost |= change.connections_lost
        self.close()
        self.start()

    def rediscover(self, reconnect_coord: bool = False) -> None:
        """A path died: a round now (unless an asked one runs), then the node re-punches what fell back.
        A TCP path died: the coord link reconnects now too, so the coord sees our punch port's mapping."""
        if reconnect_coord:
            log.info("coord link: reconnecting now, a TCP path went silent (our punch port's mapping may have moved)")
            self.daemon.link.reconnect()
        if not self._asked:
            self._asked = True
            self.close()
            self.start()

    def coord_up(self) -> None:
        """The coord link registered: re-probe now if a change was waiting for it. The welcome is
        handled right after this call, so what needs its relays waits for the loop's next turn."""
        self._reprobe_when_ready()
        self.daemon.loop.call_soon(self._profile_with_relays)

    def _reprobe_when_ready(self) -> None:
        daemon = self.daemon
        if self._moved and self._fresh and daemon.link.connected:
            self._moved = False
            daemon.node.network_changed(daemon.loop.time(), self._lost)
            self._lost = False
            daemon.transmit()

    def close(self) -> None:
        for task in (self._task, self._profiling):
            if task is not None:
                task.cancel()
        self._task = self._profiling = None

    async def _run(self) -> None:
        while True:
            await self._round()
            await asyncio.sleep(ENDPOINT_REFRESH)

    async def _round(self) -> None:
        daemon = self.daemon
        public = await public_mapping(daemon.stun, daemon.config, daemon.udp.family, daemon.link.host)
        local6 = local_ipv6(daemon.sock.getsockname()[1], daemon.tun.name, daemon.config.listen.ipv6_ula) \
            if daemon.udp.dual else ()
        self._report(daemon.public_endpoint if public is None else public, daemon._local_endpoints(), daemon.nat,
                     announced(local6, None))
        self._fresh = True
        self._reprobe_when_ready()
        if self._asked:
            self._asked = False
            daemon.node.endpoints_refreshed(daemon.loop.time())
            daemon.transmit()
        if local6:  # after the IPv4 report: an IPv6 route that drops packets must not hold that up
            mapped6 = await ipv6_mapping(daemon.stun, daemon.config)
            self._report(daemon.public_endpoint, daemon.local, daemon.nat, announced(local6, mapped6))
        await self._profile()
        daemon.mappings.prune()

    async def _profile(self) -> None:
        """Sample the NAT's behaviour, with a relay as the mapping test's second server if one is known."""
        daemon = self.daemon
        relays = daemon.node.relays.known_endpoints()
        self._profiled_without_relay = not relays
        self._profiles_started += 1
        started = self._profiles_started
        profile = await own_nat_profile(daemon.config, daemon.udp.family, daemon.link.host, relays)
        if profile is not None and started == self._profiles_started:  # a later one knows more
            daemon.node.set_nat_profile(profile)
            self._report(daemon.public_endpoint, daemon.local, nat_info(profile))

    def _profile_with_relays(self) -> None:
        """The welcome named the relays: a profile taken without one is taken again (the mapping test needs one)."""
        if self._profiled_without_relay and self.daemon.node.relays.links and self._profiling is None:
            self._profiled_without_relay = False
            self._profiling = task = self.daemon.loop.create_task(self._profile())
            task.add_done_callback(lambda _: self._profiling is task and setattr(self, "_profiling", None))

    def mapping_changed(self) -> None:
        """The router's port mapping was granted, moved or lost: report it with the rest as it is."""
        daemon = self.daemon
        self._report(daemon.public_endpoint, daemon.local, daemon.nat)

    def _report(self, public: Optional[m.Endpoint], local: tuple[m.Endpoint, ...], nat: Optional[m.NatInfo],
                ipv6: Optional[tuple[m.Endpoint, ...]] = None) -> None:
        """Tell the node and the coord where we are, if that changed (``ipv6`` None: as it was)."""
        daemon = self.daemon
        mapped, mapped_tcp = (None if e is None else m.Endpoint(*e)
                              for e in map(daemon.portmap.endpoint_of, (Transport.UDP, Transport.TCP)))
        ipv6 = daemon.ipv6 if ipv6 is None else ipv6
        now = (public, local, nat, mapped, ipv6, mapped_tcp)
        if now == (daemon.public_endpoint, daemon.local, daemon.nat, daemon.mapped, daemon.ipv6, self.mapped_tcp):
            return
        daemon.public_endpoint, daemon.local, daemon.nat, daemon.mapped, daemon.ipv6, self.mapped_tcp = now
        daemon.node.set_own_endpoints(local + ipv6, public, mapped, mapped_tcp)
        log.info("%s", endpoints_line(public, mapped, local, nat, ipv6, mapped_tcp))
        daemon.link.send(m.Endpoints(local=local, public=public, nat=nat, mapped=mapped, ipv6=ipv6 or None,
                                     mapped_tcp=mapped_tcp))
