"""Where the node can be reached, kept current: STUN mapping, LAN endpoints, NAT profile and the
router's port mappings of the UDP and TCP punch ports (`meshvpn.node.portmap`, which tells us
when they change).

A round reports at once what the host knows (LAN and IPv6 addresses, the router's mappings),
then asks the coord's STUN server for the shared socket's public mapping and reports again when
it answers or gives up, then asks for the IPv6 mapping; then it samples the NAT's behaviour,
which takes longer, and reports again if that changed. When to report and when to have the
peers punch us again are the rules of :mod:`meshvpn.node.endpointreports`; this shell asks,
and carries out what they say (``Endpoints`` to the coord, passed on to every peer;
``Node.network_changed``; ``Node.endpoints_refreshed``). Rounds run every ``ENDPOINT_REFRESH``
seconds, and at once when the host's network changed (:meth:`EndpointRefresh.network_changed`):
a round still waiting for an answer from the old network is abandoned, the birthday sockets
(whose mappings belong to the old NAT) are closed and the coord link reconnects if the rules
said so; the TCP paths and relay streams that stand check that they carry, when the network only
came back under them (``Node.connections_resumed``); the router's port mapping is probed again, and
the relay and TURN links hear of it at once (``Node.servers_network_changed``: a network that lets no UDP out answers no STUN either).

A path that died while carrying traffic asks for a round too (``DiscoverEndpoints``,
:meth:`EndpointRefresh.rediscover`): our NAT may have re-mapped us. If the STUN mapping did move,
the coord connection, made before, went with it (`meshvpn.node.coorddial.remapped`): the link
reconnects at once rather than write the new endpoints into it and wait for the reset. Once that
round's STUN answer is reported, the node re-punches the peers that fell back
(``Node.endpoints_refreshed``; if the coord link is down, the node does it again when it registers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

from meshvpn.control import messages as m
from meshvpn.node.announce6 import announced
from meshvpn.node.coorddial import remapped
from meshvpn.node.discovery import own_nat_profile, public_mapping
from meshvpn.node.endpointreports import EndpointReports, OwnEndpoints, Refreshed, Reprobe, Report
from meshvpn.node.eventlog import endpoints_line
from meshvpn.node.ipv6 import ipv6_mapping, local_ipv6
from meshvpn.node.netchange import NetworkChanged
from meshvpn.node.portmap.core import Transport
from meshvpn.node.traversal import nat_info
from meshvpn.timers import DeadlineTimer
from meshvpn.wire import Endpoint

if TYPE_CHECKING:
    from meshvpn.node.daemon import NodeDaemon

log = logging.getLogger("meshvpn.node")

ENDPOINT_REFRESH = 60.0
"""Seconds between re-checks of local endpoints and the STUN mapping while nothing changes."""


class EndpointRefresh:
    """The daemon's endpoint rounds: one task, restarted when the network changes or a path died."""

    def __init__(self, daemon: NodeDaemon) -> None:
        self.daemon = daemon
        self._task: Optional[asyncio.Task] = None
        self.reports = EndpointReports()
        """What to report and when the peers punch us again."""
        self._timer = DeadlineTimer(daemon.loop, self._on_timer)
        self._mapped6: Optional[Endpoint] = None
        """Our IPv6 mapping as STUN saw it last on this network (announced until the next answer)."""
        self._profiled_without_relay = False
        """The last NAT profile was taken before any relay was known (so without the mapping test)."""
        self._profiling: Optional[asyncio.Task] = None
        """A profile taken again once the relays are known, outside the rounds."""
        self._profiles_started = 0
        """Profiles begun so far: only the latest begun may set the node's (an earlier one knew less)."""

    @property
    def mapped_tcp(self) -> Optional[m.Endpoint]:
        """The router's mapping of our TCP punch port, as last reported (``Register`` repeats it)."""
        return self.reports.known.mapped_tcp

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
            self.reports.coord_down()
        elif change.resumed and daemon.link.network_back():
            self.reports.coord_down()
        if change.back:
            daemon.node.connections_resumed(daemon.loop.time(), daemon.punch.retransmitting(),
                                            daemon.relay_streams.retransmitting(),
                                            daemon.turn_streams.retransmitting())
        daemon.portmap.reprobe()
        daemon.node.servers_network_changed(daemon.loop.time(), change.connections_lost)
        daemon.transmit()
        self.reports.network_changed(change.connections_lost, daemon.loop.time())
        self._mapped6 = None
        self.close()
        self.start()

    def rediscover(self, reconnect_coord: bool = False) -> None:
        """A path died: a round now (unless an asked one runs), then the node re-punches what fell back.
        A TCP path died: the coord link reconnects now too, so the coord sees our punch port's mapping."""
        if reconnect_coord:
            log.info("coord link: reconnecting now, a TCP path went silent (our punch port's mapping may have moved)")
            self.daemon.link.reconnect()
        if not self.reports.asked:
            self.reports.ask()
            self.close()
            self.start()

    def coord_state(self, up: bool) -> None:
        """The coord link registered (or went down): a re-probe that waited for it goes now. The
        welcome is handled right after this call, so what needs its relays waits for the loop's next turn."""
        if not up:
            self.reports.coord_down()
            return
        self.reports.coord_up(self.daemon.loop.time())
        self._carry_out()
        self.daemon.loop.call_soon(self._profile_with_relays)

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
        local6 = local_ipv6(daemon.sock.getsockname()[1], daemon.tun.name, daemon.config.listen.ipv6_ula) \
            if daemon.udp.dual else ()
        self.reports.begin(daemon.loop.time(), local=daemon._local_endpoints(),
                           ipv6=announced(local6, self._mapped6), **self._mappings())
        self._carry_out()
        asked_at = daemon.loop.time()
        public = await public_mapping(daemon.stun, daemon.config, daemon.udp.family, daemon.link.host)
        if remapped(daemon.public_endpoint, public, daemon.link.registered_at, asked_at):
            log.info("coord link: reconnecting now, our public mapping moved (%s -> %s)",
                     daemon.public_endpoint, public)
            daemon.link.reconnect()
        self.reports.stun(public, daemon.loop.time())
        self._carry_out()
        if local6:  # after the IPv4 report: an IPv6 route that drops packets must not hold that up
            self._mapped6 = await ipv6_mapping(daemon.stun, daemon.config)
            self._learn(ipv6=announced(local6, self._mapped6))
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
            self._learn(nat=nat_info(profile))

    def _profile_with_relays(self) -> None:
        """The welcome named the relays: a profile taken without one is taken again (the mapping test needs one)."""
        if self._profiled_without_relay and self.daemon.node.relays.links and self._profiling is None:
            self._profiled_without_relay = False
            self._profiling = task = self.daemon.loop.create_task(self._profile())
            task.add_done_callback(lambda _: self._profiling is task and setattr(self, "_profiling", None))

    def mapping_changed(self) -> None:
        """The router's port mapping was granted, moved or lost: report it with the rest as it is."""
        self._learn(**self._mappings())

    def _mappings(self) -> dict[str, Optional[m.Endpoint]]:
        """The router's mappings of our UDP and TCP ports, as `OwnEndpoints` fields."""
        mapped, mapped_tcp = (None if e is None else m.Endpoint(*e)
                              for e in map(self.daemon.portmap.endpoint_of, (Transport.UDP, Transport.TCP)))
        return {"mapped": mapped, "mapped_tcp": mapped_tcp}

    def _learn(self, **known) -> None:
        self.reports.learn(self.daemon.loop.time(), **known)
        self._carry_out()

    def _on_timer(self) -> None:
        self.reports.handle_timer(self.daemon.loop.time())
        self._carry_out()

    def _carry_out(self) -> None:
        """What the rules said: reports to the node and the coord, re-probes, re-punches."""
        daemon = self.daemon
        for out in self.reports.outputs():
            match out:
                case Report(endpoints):
                    self._report(endpoints)
                case Reprobe(connections_lost=lost):
                    log.info("asking the peers to punch our endpoints again")
                    daemon.node.network_changed(daemon.loop.time(), lost)
                case Refreshed():
                    daemon.node.endpoints_refreshed(daemon.loop.time())
        daemon.transmit()
        self._timer.follow(self.reports.get_timer())

    def _report(self, now: OwnEndpoints) -> None:
        """Tell the node and the coord where we are."""
        daemon = self.daemon
        daemon.public_endpoint, daemon.local, daemon.nat, daemon.mapped, daemon.ipv6 = \
            now.public, now.local, now.nat, now.mapped, now.ipv6
        daemon.node.set_own_endpoints(now.local + now.ipv6, now.public, now.mapped, now.mapped_tcp)
        log.info("%s", endpoints_line(now.public, now.mapped, now.local, now.nat, now.ipv6, now.mapped_tcp))
        daemon.link.send(m.Endpoints(local=now.local, public=now.public, nat=now.nat, mapped=now.mapped,
                                     ipv6=now.ipv6 or None, mapped_tcp=now.mapped_tcp))
