"""The asyncio side of router port mapping: the gateway's port 5351, miniupnpc in a thread.

It maps the node's UDP port and, when the node listens for TCP punches on the same port
number, its TCP port too: one probe, one gateway socket, one epoch watch for both.

`PortMapShell` feeds `meshvpn.node.portmap.core.PortMapper` the gateway's datagrams, the UPnP
answers and the clock, and tells the daemon when the endpoint to announce changes. Nothing here
blocks the loop: miniupnpc's calls (SSDP discovery, SOAP over HTTP) run one at a time in a
daemon thread, each bounded by a timeout, and exit never waits for one (only `close` waits, for
a deletion). `reprobe()` is the hook for a network change. The gateway's announcements to
224.0.0.1:5350 (a restarted PCP server's ANNOUNCE, RFC 6887 §14.1.3; NAT-PMP's address
announcement, RFC 6886 §3.2.1) reach the machine too: their epoch tells it the gateway forgot
the mapping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import queue
import socket
import struct
import threading
from typing import Callable, Optional

from meshvpn.config import PortMapConfig
from meshvpn.node.portmap import natpmp
from meshvpn.node.portmap.core import (
    Mapping, MappingChanged, Phase, PortMapper, Protocol, SendToGateway, Transport, UpnpDiscover, UpnpMap, UpnpUnmap,
)
from meshvpn.timers import DeadlineTimer

log = logging.getLogger("meshvpn.node")

TCP_EXTERNAL = 443
"""The external port asked first for the TCP punch port (`portmap.tcp_443`)."""
UPNP_DISCOVER_MS = 1000
"""How long miniupnpc waits for SSDP answers."""
UPNP_CALL_TIMEOUT = 5.0
"""Seconds one UPnP call (discovery, a SOAP request) may take before it counts as no answer."""
CLOSE_TIMEOUT = 2.0
"""Seconds `close` waits for the UPnP deletion."""
DESCRIPTION = "meshvpn"
ANNOUNCE_PORT = 5350
"""Where NAT-PMP and PCP servers multicast their announcements (to 224.0.0.1, all hosts)."""
PROBE_TIMEOUT = 4.0
"""Seconds netcheck's probe may take: NAT-PMP and PCP give up after 1.75 s, UPnP discovery takes 1."""


def default_gateway(route_table: str = "/proc/net/route") -> Optional[str]:
    """The IPv4 default gateway, from the kernel's routing table (None: no default route)."""
    try:
        with open(route_table) as table:
            lines = table.readlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None


class _GatewaySocket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, addr[0])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable: a gateway without NAT-PMP/PCP; the retries run out


class _Worker:
    """One daemon thread that runs blocking calls in order: never joined, so exit is not delayed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="upnp", daemon=True).start()

    def submit(self, call, *args) -> asyncio.Future:
        future = self.loop.create_future()
        self.calls.put((future, call, args))
        return future

    def _run(self) -> None:
        while True:
            future, call, args = self.calls.get()
            try:
                outcome = (call(*args), None)
            except Exception as exc:  # whatever miniupnpc raises is the answer "no"
                outcome = (None, exc)
            try:
                self.loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return


def _settle(future: asyncio.Future, result, exc: Optional[BaseException]) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


class NoGateway(OSError):
    """No UPnP IGD answered the discovery, or none could be used."""


class _Upnp:
    """miniupnpc's blocking calls (or `igd`, an object with its methods); used from the worker thread only."""

    def __init__(self, igd=None) -> None:
        if igd is None:
            import miniupnpc  # optional: `pip install miniupnpc` (the `upnp` extra)

            igd = miniupnpc.UPnP()
        self.igd = igd
        self.igd.discoverdelay = UPNP_DISCOVER_MS

    def discover(self) -> str:
        """The IGD's external address; `NoGateway` when there is none. miniupnpc raises a bare
        Exception when nothing answers, its text whatever errno held ("Success")."""
        try:
            found = self.igd.discover()
            if found:
                self.igd.selectigd()
        except Exception as exc:
            raise NoGateway(f"no UPnP gateway ({exc})") from exc
        if not found:
            raise NoGateway("no UPnP gateway answered")
        return str(ipaddress.ip_address(self.igd.externalipaddress()))

    def map(self, internal_port: int, external_port: int, lifetime: int, transport: Transport,
            fallback: Optional[int] = None) -> int:
        """AddPortMapping of `external_port`, else any port the IGD gives; with a `fallback`, only
        while the IGD holds no mapping of `external_port` but ours, else `fallback` that way."""
        args = (transport.name, self.igd.lanaddr, internal_port, DESCRIPTION, "")
        if fallback is not None:
            if self._free(external_port, transport, internal_port):
                try:
                    self.igd.addportmapping(external_port, *args, lifetime)
                    return external_port
                except Exception:  # refused (a permission rule, a port the router uses): the usual port
                    pass
            external_port = fallback
        try:
            self.igd.addportmapping(external_port, *args, lifetime)
            return external_port
        except Exception:  # miniupnpc raises plain Exception with the IGD's error text
            return int(self.igd.addanyportmapping(external_port, *args, lifetime))

    def unmap(self, external_port: int, transport: Transport) -> None:
        self.igd.deleteportmapping(external_port, transport.name)

    def _free(self, external_port: int, transport: Transport, internal_port: int) -> bool:
        """Whether the IGD holds no mapping of `external_port`, or only ours (a restart's leftover).
        miniupnpc answers GetSpecificPortMappingEntry's NoSuchEntryInArray (714) with None (or, in
        some versions, an exception naming it), a held port with (client, port, description,
        enabled, lease); any other failure counts as held."""
        try:
            entry = self.igd.getspecificportmapping(external_port, transport.name)
        except Exception as exc:
            return "NoSuchEntry" in str(exc)
        return entry is None or (entry[0], int(entry[1])) == (self.igd.lanaddr, internal_port)


class PortMapShell:
    """One daemon's port mapping: off when the config says so, else probing from `start`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: PortMapConfig,
                 on_change: Callable[[], None], map_port: bool = True,
                 upnp: Callable[[], _Upnp] = _Upnp, gateway: Callable[[], Optional[str]] = default_gateway) -> None:
        self.loop = loop
        self._new_upnp = upnp
        self._gateway = gateway
        """Where the default route goes now (the kernel's table; a test's loopback)."""
        self.config = config
        self.map_port = map_port
        self.on_change = on_change
        self.mapper: Optional[PortMapper] = None
        self.gateway: Optional[str] = None
        self._port = 0
        self._to_map: tuple[Transport, ...] = (Transport.UDP,)
        """Which of our ports to map: the UDP port, and the TCP punch port when there is one."""
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._announcements: Optional[asyncio.DatagramTransport] = None
        self._timer = DeadlineTimer(loop, self._on_timer)
        self._worker: Optional[_Worker] = None
        self._upnp: Optional[_Upnp] = None
        self._jobs: set[asyncio.Future] = set()
        """Reprobes, and UPnP calls that may leave a mapping behind (map, unmap): `close` waits for them."""
        self._error: Optional[str] = None

    @property
    def endpoint(self) -> Optional[tuple[str, int]]:
        """The mapped endpoint of the UDP port to announce (None: no mapping)."""
        return self.endpoint_of(Transport.UDP)

    def endpoint_of(self, transport: Transport) -> Optional[tuple[str, int]]:
        """The mapped endpoint of our `transport` port (None: no mapping)."""
        mapping = self.mapper.mapping_of(transport) if self.mapper is not None else None
        return None if mapping is None else mapping.external

    async def start(self, port: int, tcp: bool = False) -> None:
        """Probe for a mapping of UDP `port` (and of TCP `port`, the punch port, with `tcp`);
        returns at once, the probe runs on."""
        self._port = port
        self._to_map = (Transport.UDP, Transport.TCP) if tcp else (Transport.UDP,)
        if self.config.enabled:
            await self._open()

    def reprobe(self) -> None:
        """Re-probe port mapping: the network changed (new gateway, new address). Drops the mapping."""
        if self.config.enabled and self._port:
            job = self.loop.create_task(self._open())
            self._jobs.add(job)
            job.add_done_callback(self._reprobed)

    def _reprobed(self, job: asyncio.Task) -> None:
        self._jobs.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.warning("port mapping: re-probe failed: %r", job.exception())

    async def close(self) -> None:
        """Delete the mapping and stop; waits at most `CLOSE_TIMEOUT` for a UPnP deletion."""
        if self.mapper is not None:
            self.mapper.close(self.loop.time())
            self._transmit()
        self._timer.cancel()
        deadline = self.loop.time() + CLOSE_TIMEOUT
        while self._jobs and self.loop.time() < deadline:  # a mapping granted meanwhile is deleted too
            await asyncio.wait(set(self._jobs), timeout=deadline - self.loop.time())
        for transport in (self._transport, self._announcements):
            if transport is not None:
                transport.close()

    def status(self) -> dict:
        """`meshvpn status`'s `self.port_mapping`."""
        if not self.config.enabled:
            return {"state": "off"}
        if self.mapper is None:
            return {"state": "none", "error": self._error}
        return {**self.mapper.status(self.loop.time()), "gateway": self.gateway}

    # ---- inside

    async def _open(self) -> None:
        had = [self.endpoint_of(transport) for transport in self._to_map]
        if self.mapper is not None:
            self.mapper.close(self.loop.time())
            self._transmit(notify=False)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.mapper, self.gateway = None, self._gateway()
        if self.gateway is None:
            self._error = "no IPv4 default gateway"
        else:
            try:
                self._transport, _ = await self.loop.create_datagram_endpoint(
                    lambda: _GatewaySocket(self._on_datagram), remote_addr=(self.gateway, natpmp.PORT))
            except OSError as exc:
                self._error = f"gateway {self.gateway}: {exc}"
        if self._transport is not None:
            await self._listen_for_announcements()
            client = self._transport.get_extra_info("sockname")[0]
            protocols = tuple(Protocol(p) for p in self.config.protocols)
            self.mapper = PortMapper(self._port, client, os.urandom, int(self.config.lease), protocols,
                                     map_port=self.map_port, transports=self._to_map,
                                     tcp_external=TCP_EXTERNAL if self.config.tcp_443 else None)
            self.mapper.probe(self.loop.time())
            self._transmit()
        if any(had):
            self.on_change()  # the mappings we had are gone

    async def _listen_for_announcements(self) -> None:
        """Port 5350, shared with any other listener on the host; without it, renewals find out."""
        if self._announcements is not None or not self.map_port:
            return
        try:
            self._announcements, _ = await self.loop.create_datagram_endpoint(
                lambda: _GatewaySocket(self._on_datagram), local_addr=("0.0.0.0", ANNOUNCE_PORT), reuse_port=True)
        except OSError as exc:
            log.debug("port mapping: no gateway announcements on port %d: %s", ANNOUNCE_PORT, exc)

    def _on_datagram(self, data: bytes, source: str) -> None:
        if self.mapper is not None and source == self.gateway:
            self.mapper.receive(data, self.loop.time())
            self._transmit()

    def _on_timer(self) -> None:
        if self.mapper is not None:
            self.mapper.handle_timer(self.loop.time())
            self._transmit()

    def _transmit(self, notify: bool = True) -> None:
        mapper = self.mapper
        for out in mapper.outputs():
            match out:
                case SendToGateway(data):
                    if self._transport is not None:
                        self._transport.sendto(data)
                case UpnpDiscover():
                    self._in_thread(self._upnp_discover, mapper, wait_on_close=False)
                case UpnpMap(internal, external, lifetime, transport, fallback):
                    self._in_thread(self._upnp_map, mapper, internal, external, lifetime, transport, fallback)
                case UpnpUnmap(external, transport):
                    self._in_thread(self._upnp_unmap, None, external, transport)
                case MappingChanged(mapping, transport):
                    self._log(mapping, transport)
                    if notify:
                        self.on_change()
        self._timer.follow(mapper.get_timer())

    def _log(self, mapping: Optional[Mapping], transport: Transport) -> None:
        if mapping is None:
            log.info("port mapping of %s released", transport.label)
        else:
            log.info("port mapping of %s: %s:%d via %s, %.0f s", transport.label, *mapping.external,
                     mapping.protocol.value, mapping.lifetime)

    def _upnp_discover(self) -> str:
        self._upnp = self._new_upnp()
        return self._upnp.discover()

    def _upnp_map(self, internal: int, external: int, lifetime: int, transport: Transport,
                  fallback: Optional[int]) -> int:
        return self._upnp.map(internal, external, lifetime, transport, fallback)

    def _upnp_unmap(self, external: int, transport: Transport) -> None:
        if self._upnp is not None:
            self._upnp.unmap(external, transport)

    def _in_thread(self, call, mapper: Optional[PortMapper], *args, wait_on_close: bool = True) -> None:
        """Run a blocking UPnP call in the worker thread and hand its answer to `mapper`."""
        if self._worker is None:
            self._worker = _Worker(self.loop)
        job = asyncio.ensure_future(asyncio.wait_for(self._worker.submit(call, *args), UPNP_CALL_TIMEOUT))
        if wait_on_close:
            self._jobs.add(job)
        job.add_done_callback(lambda done: self._upnp_done(done, mapper, call, args))

    def _upnp_done(self, job: asyncio.Future, mapper: Optional[PortMapper], call, args) -> None:
        """Hand a UPnP call's answer to `mapper`, if it is still ours. Its exception is taken in any
        case: one left in a task nobody asks is logged as "never retrieved"."""
        self._jobs.discard(job)
        if job.cancelled():
            return
        exc = job.exception()
        if mapper is None or mapper is not self.mapper:
            if exc is not None:
                log.debug("port mapping: an earlier UPnP call failed: %s", exc)
            return
        why = "" if exc is None else (str(exc) or type(exc).__name__)
        now = self.loop.time()
        if call == self._upnp_discover:
            mapper.upnp_found(None if exc else job.result(), now, why)
        else:
            mapper.upnp_mapped(None if exc else job.result(), args[2], now, why, transport=args[3])
        self._transmit()


async def probe_gateway(config: PortMapConfig, timeout: float = PROBE_TIMEOUT) -> dict:
    """Which protocols the gateway speaks, mapping nothing (`meshvpn netcheck`), even when the
    daemon's port mapping is off."""
    loop = asyncio.get_running_loop()
    shell = PortMapShell(loop, dataclasses.replace(config, enabled=True), lambda: None, map_port=False)
    await shell.start(1)  # the port only names what would be mapped; nothing is
    deadline = loop.time() + timeout
    while shell.mapper is not None and shell.mapper.phase is Phase.PROBING and loop.time() < deadline:
        await asyncio.sleep(0.05)
    report = shell.status()
    await shell.close()
    return report
