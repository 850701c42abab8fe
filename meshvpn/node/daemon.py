"""``meshvpn daemon``: the asyncio shell around the node core and the data path.

The shell owns every file descriptor and the clock: the TUN device, the one UDP socket
(shared by tunnel traffic, probes, handshakes and STUN), the coord link and the control
socket.  Both descriptors are read in batches from ``loop.add_reader`` callbacks straight
into :class:`~meshvpn.node.datapath.dataplane.DataPlane`; the core gets one timer, re-armed from
``get_timer()`` whenever the core was touched.  The coord may come and go: the data path
and the peer table live on, and the link reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import platform
import signal
import socket
import time
from typing import Callable, Optional

from meshvpn import __version__
from meshvpn.config import NodeConfig, load_node_config
from meshvpn.control import messages as m
from meshvpn.keys import read_private_key
from meshvpn.localsock import ControlServer
from meshvpn.metrics import MetricsEndpoint, node_families, socket_families, start_metrics
from meshvpn.node import events as ev
from meshvpn.node.coordlink import CoordLink
from meshvpn.node.core import CoreConfig
from meshvpn.node.datapath.dataplane import DataPlane, SendBuffer
from meshvpn.node.datapath.native_loop import NativeReceiver
from meshvpn.node.discovery import kept_port_sample, stun_server
from meshvpn.node.dns import NameService
from meshvpn.node.eventlog import log_event
from meshvpn.node.endpoints import local_endpoints
from meshvpn.node.startup import preflight
from meshvpn.node.mappings import MappingSockets
from meshvpn.node.names import NameWatch, watch_names
from meshvpn.node.netwatch import NetWatch
from meshvpn.node.node import Node
from meshvpn.node.status import status_line
from meshvpn.node.pathfinder import PathFinderConfig
from meshvpn.node.portmap.shell import PortMapShell
from meshvpn.node.peers import Route
from meshvpn.node.refresh import EndpointRefresh
from meshvpn.node.relay.shell import RelayStreams
from meshvpn.node.turn.shell import TurnStreams
from meshvpn.node.sockstats import namespace_udp_errors, socket_report
from meshvpn.node.transports import MainSocket, PinnedSocket, PunchedStream, RelayStream, Transport, TurnChannel
from meshvpn.turn_codec import frame_run
from meshvpn.node.tcp.shell import PunchPort
from meshvpn.timestamps import WRITE_INTERVAL, TimestampFile, restore
from meshvpn.node.verbs import ControlVerbs
from meshvpn.node.datapath.tun import TunDevice
from meshvpn.udpbatch import MAX_GSO_BYTES, MAX_SEGMENTS, BatchUdpSocket, bind_udp
from meshvpn.reload import Reloader
from meshvpn.service import Notifier, first_set, serve_until_stopped, setup_logging
from meshvpn.session import OVERHEAD
from meshvpn.stun import is_stun
from meshvpn.stunio import StunClient
from meshvpn.timers import DeadlineTimer
from meshvpn.wire import Endpoint, MessageType

log = logging.getLogger("meshvpn.node")

BATCH = 64
"""Reads per readiness callback before the loop looks at the other descriptor."""
SOCKET_BUFFER = 4 << 20
RECV_SLOT = 65535
"""Room one receive needs: a whole GRO batch."""
RECV_AREA = 4 * RECV_SLOT
"""Receives gathered per TUN write: at least three GRO batches, or about 140 single datagrams."""
_TRANSPORT = frozenset((MessageType.DATA, MessageType.KEEPALIVE, MessageType.RELAY))  # a peer relay answers on a pinned way


class NodeDaemon:
    """One running node: TUN, UDP socket, core, coord link and control socket."""

    def __init__(self, config: NodeConfig, private_key: bytes) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        paths = PathFinderConfig(
            keepalive=config.paths.keepalive, relay_after=config.paths.relay_after, path_timeout=config.paths.path_timeout
        )
        self.node = Node(private_key, os.urandom, CoreConfig(paths=paths, wall_offset=time.time() - self.loop.time()),
                         config.lan.fanout, coord_public=config.coord.public_key, peer_relay=config.peer_relay)
        self.timestamp_file = TimestampFile(config.state_dir)
        self.timestamps = restore(self.node.core.handshakes.timestamps.greatest, self.timestamp_file)
        """When the newest initiation timestamps go to the state directory (replays after a restart)."""
        self.data = DataPlane(self.node)
        self._sends = SendBuffer(self._send_run, MAX_SEGMENTS, MAX_GSO_BYTES)
        self._recv_area = bytearray(RECV_AREA)
        """Consecutive receives land one after another here until it is written to the TUN."""
        self._recv_view = memoryview(self._recv_area)
        self.tun: Optional[TunDevice] = None
        self.sock: Optional[socket.socket] = None
        self.udp: Optional[BatchUdpSocket] = None
        self.native: Optional[NativeReceiver] = None  # the native thread, when it replaces _on_udp and _on_tun
        self.stun: Optional[StunClient] = None
        self.link: Optional[CoordLink] = None
        self.names: Optional[NameWatch] = None
        self.dns = NameService(config.lan.dns)
        self.relay_streams = RelayStreams(self.node, private_key, self.transmit, self.loop.time)
        self.turn_streams = TurnStreams(self.node, self.transmit, self.loop.time)
        self.punch = PunchPort(self.node, self.transmit, self.loop.time,
                               lambda family: stun_server(self.config, family, self.link and self.link.host))
        self.verbs = ControlVerbs(self)
        self.control = ControlServer(str(config.control_socket), self.verbs.handle_control)
        self.public_endpoint: Optional[m.Endpoint] = None
        self.nat: Optional[m.NatInfo] = None
        self.mappings = MappingSockets(self.loop, config.listen.address, self._on_mapping_run, SOCKET_BUFFER,
                                       in_use=lambda: self.node.mappings_in_use())
        self.local: tuple[m.Endpoint, ...] = ()
        self.refresh = EndpointRefresh(self)
        self.portmap = PortMapShell(self.loop, config.portmap, self.refresh.mapping_changed)
        self.mapped: Optional[m.Endpoint] = None
        self.ipv6: tuple[m.Endpoint, ...] = ()
        """This node's IPv6 endpoints (`meshvpn.node.ipv6`), as last reported."""
        self.netwatch = NetWatch(self.loop, self.refresh.network_changed, lambda: self.link and self.link.local_address)
        self.tun_address: Optional[str] = None
        self.stopping = asyncio.Event()
        self.coord_tried = asyncio.Event()
        """Set once the first coord attempt registered or failed: READY waits for it."""
        self.metrics: Optional[MetricsEndpoint] = None
        self.reloader = Reloader(config)
        self.reloader.on_change("paths.keepalive", self._apply_keepalive)
        self.reloader.on_change("peer_relay", lambda new: self.node.peer_relay.set_limits(new.peer_relay))
        self._timer = DeadlineTimer(self.loop, self._on_timer)
        self._tasks: list[asyncio.Task] = []

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, notifier: Notifier, load_settings: Callable[[], NodeConfig]) -> None:
        """Serve until SIGTERM/SIGINT; READY=1 once the coord registered us or the first attempt failed."""
        cfg = self.config
        self.tun = TunDevice.open(cfg.tun.name, cfg.tun.mtu)
        try:
            self._cap_tun_gso()
            self.tun.up()
            self._bind()
            await self.punch.start(cfg.listen.address, self.sock.getsockname()[1])
            await self.portmap.start(self.sock.getsockname()[1], tcp=self.punch.address is not None)
            self.link = CoordLink(
                (cfg.coord.address, *cfg.coord.other_addresses), cfg.coord.public_key, self.node.core.identity,
                self._register_message, self._on_coord_message, self._on_coord_state,
                local_socket=self.punch.coord_socket, tls_port=cfg.coord.tls_port,
            )
            self.native = NativeReceiver.attach(self.loop, self.data, self.sock, self.tun, self._sends, self._on_udp,
                                                self._on_tun, self._after_data, cfg.listen.busy_poll_us, self.mappings)
            await self.control.start()
            self.local = self._local_endpoints()
            self.node.set_own_endpoints(self.local, None)
            self.names = watch_names(self.loop, self.udp, self.node, self.transmit)
            self._tasks.append(self.loop.create_task(self.names.run()))
            self.link.start()
            self.refresh.start()
            self.netwatch.start((self.tun.name,))
            self._tasks.append(self.loop.create_task(self._keep_timestamps()))
            self.metrics = await start_metrics(cfg.metrics.listen, "daemon", lambda: node_families(
                self.node.core, self.data) + socket_families(socket_report(self.udp_sockets()), namespace_udp_errors()))
            log.info("node %s listening on udp %s:%d, tun %s", self.node.public_key.hex()[:8],
                     *self.sock.getsockname()[:2], self.tun.name)
            await first_set(self.coord_tried, self.stopping)
        except BaseException:
            await self.close()
            raise
        if self.stopping.is_set():
            await self.close()
            return
        await serve_until_stopped(self, load_settings, notifier)

    def _bind(self) -> None:
        listen = self.config.listen
        self.sock = sock = bind_udp(listen.address, listen.port, SOCKET_BUFFER, dual_stack=listen.ipv6)
        self.udp = BatchUdpSocket(sock)
        self.stun = StunClient(self.udp)

    async def close(self) -> None:
        """Leave nothing behind: the coord hears we left, the TUN (and its routes) goes away."""
        if self.metrics is not None:
            await self.metrics.close()
        for task in self._tasks:
            task.cancel()
        self.refresh.close()
        self.netwatch.close()
        if self.names is not None:
            self.names.close()
        await self.dns.close()
        if self.link is not None:
            await self.link.close()
        await self.relay_streams.close()
        await self.turn_streams.close()
        await self.portmap.close()
        if self.sock is not None:
            self.node.close(self.loop.time())
            for out in self.node.outputs():
                if isinstance(out, ev.SendDatagram):
                    self.udp.sendto(out.data, out.dst)
        await self.punch.close()
        await self.control.close()
        self._timer.cancel()
        self.mappings.close()
        self._save_timestamps(stopping=True)
        if self.native is not None:
            self.native.detach(self.loop)
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.tun is not None:
            self.loop.remove_reader(self.tun.fileno())
            self.tun.close()
        log.info("stopped; tun removed")

    async def _keep_timestamps(self) -> None:
        while True:
            await asyncio.sleep(WRITE_INTERVAL)
            self._save_timestamps()

    def _save_timestamps(self, stopping: bool = False) -> None:
        """Write the initiation record if it changed (and, unless stopping, the interval passed)."""
        self.timestamp_file.keep(self.timestamps, self.loop.time(), stopping)

    # ---- data path ------------------------------------------------------------------

    def _cap_tun_gso(self) -> None:
        """Keep the kernel's TSO super-packets within one GSO send: one sendmsg per TUN read."""
        if self.tun.offload:
            mtu = self.config.tun.mtu
            per_send = min(MAX_SEGMENTS, MAX_GSO_BYTES // (mtu + OVERHEAD))
            self.tun.set_gso_max_size(per_send * (mtu - 40))

    def _on_tun(self) -> None:
        """Seal what the TUN has straight from its read buffer into GSO runs; no per-packet objects."""
        tun, data, sends = self.tun, self.data, self._sends
        buf, offload = tun.buffer, tun.offload
        now = self.loop.time()
        try:
            for _ in range(BATCH):
                size = tun.read()
                if not (offload and data.seal_super_packet(buf, size, now, sends)):
                    data.seal_packets(buf, tun.segments(size), now, sends)
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("tun read failed: %s", exc)
        sends.flush()
        self._after_data()

    def _send_run(self, route: Route, run: memoryview, seg_size: int) -> None:
        """One run of sealed messages (``seg_size`` each, the last may be shorter) on the route's transport."""
        match route.transport:
            case MainSocket():
                self.udp.send_contiguous(route.endpoint, run, seg_size)
            case TurnChannel(server, channel, None):
                self.udp.send_contiguous(server, memoryview(frame_run(channel, run, seg_size)), seg_size + 4)
            case TurnChannel(_, channel, stream):
                self.turn_streams.write(stream, frame_run(channel, run, seg_size, pad=True))
            case PinnedSocket(sid) if self.mappings.send_run(sid, route.endpoint, run, seg_size):
                pass
            case transport:
                messages = [bytes(run[at : at + seg_size]) for at in range(0, len(run), seg_size)]
                self._send_each(transport, route.endpoint, messages)

    def _send_each(self, transport: Transport, dst: Endpoint, messages: list[bytes]) -> None:
        """Messages for a transport that takes them one by one: a stream, or an extra socket."""
        match transport:
            case PunchedStream(conn_id):
                if self.punch.can_send(conn_id):
                    self.node.send_tcp(dst, messages, self.loop.time())
            case RelayStream(name):
                self.relay_streams.send(name, messages)
            case PinnedSocket(sid):
                for message in messages:
                    if not self.mappings.sendto(sid, message, dst):
                        self.udp.sendto(message, dst)

    def _on_udp(self) -> None:
        """Receive one after another into the receive area, open in place, write to the TUN when it is full.

        Without GRO (a kernel or path that does not merge) each receive is one datagram. Receives
        of one source and size lie back to back in the area as a GRO batch would, so they are
        opened as one run (one native ``open_run``), and one TUN write merges the burst.
        """
        udp, data, area, view = self.udp, self.data, self._recv_area, self._recv_view
        turn_servers = self.node.turn.by_endpoint
        last = len(area) - RECV_SLOT
        now = self.loop.time()
        to_tun: list[memoryview] = []
        at = run_at = 0
        run_seg = 1
        run_source = src = None
        try:
            for _ in range(BATCH):
                source, nbytes, seg_size = udp.recv_into(view[at : at + RECV_SLOT])
                if source == run_source and nbytes and not (at - run_at) % run_seg \
                        and (seg_size == run_seg or seg_size == nbytes < run_seg):
                    at += nbytes
                else:
                    if at > run_at:
                        data.open_datagrams(area, at - run_at, run_seg, src, now, to_tun, run_at)
                    src = Endpoint(source[0], source[1])
                    run_at, run_source = at, None
                    if src in turn_servers:  # STUN from a TURN server can look like a DATA header
                        for first in range(at, at + nbytes, seg_size):
                            end = min(first + seg_size, at + nbytes)
                            self.node.receive_datagram(bytes(view[first:end]), src, now)
                        continue
                    if not nbytes:
                        data.open_datagrams(area, 0, 1, src, now, to_tun, at)
                        continue
                    run_source, run_seg = source, seg_size
                    at += nbytes
                if at > last:
                    data.open_datagrams(area, at - run_at, run_seg, src, now, to_tun, run_at)
                    self._write_tun(to_tun)
                    to_tun, at, run_at, run_source = [], 0, 0, None
        except BlockingIOError:
            pass
        except OSError:
            pass
        if at > run_at:
            data.open_datagrams(area, at - run_at, run_seg, src, now, to_tun, run_at)
        self._write_tun(to_tun)
        self._after_data()

    def _write_tun(self, packets: list[memoryview]) -> None:
        if packets:
            self.tun.write_packets(packets)

    def _inbound(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        """Messages from a stream, TURN or a side socket, into the data path."""
        self._write_tun(self.data.open_messages(datagrams, self.loop.time()))

    def _after_data(self) -> None:
        if self.data.core_touched or self.node.has_output:
            self.data.core_touched = False
            self.transmit()

    # ---- the node's outputs and its one timer -------------------------------------------

    def transmit(self) -> None:
        """Carry out everything the node produced, in order, then follow its one timer (after every input)."""
        node = self.node
        while outputs := node.outputs():
            for out in outputs:
                match out:
                    case ev.SendDatagram(dst, data, None):
                        self.udp.sendto(data, dst)
                    case ev.SendDatagram(dst, data, sid):
                        self._send_each(PinnedSocket(sid), dst, [data])
                    case ev.SendCoord(msg):
                        if self.link is not None:
                            self.link.send(msg)
                    case ev.Deliver(datagrams):
                        self._inbound(datagrams)
                    case ev.WriteTun(packets):
                        self._write_tun([memoryview(bytearray(packet)) for packet in packets])
                    case ev.StunReceived(data, src):
                        self.stun.datagram_received(data, src)
                    case ev.TcpConnect() | ev.TcpWrite() | ev.TcpAbort() | ev.TcpSampleWanted():
                        self.punch.follow(out)
                    case ev.OpenRelayStream() | ev.CloseRelayStream() | ev.SendRelayFrames():
                        self.relay_streams.follow(out)
                    case ev.TurnStream() | ev.SendTurnBytes():
                        self.turn_streams.follow(out)
                    case _:
                        self._on_event(out)
        if self.native is not None:
            self.native.sync(self.loop.time())
        self._timer.follow(node.get_timer())

    def _on_timer(self) -> None:
        if self.native is not None:
            self.native.pull(self.loop.time())
        self.node.handle_timer(self.loop.time())
        self.transmit()

    def _on_event(self, event: ev.Event) -> None:
        """The events the shell acts on; the others are log lines."""
        match event:
            case ev.PingReply():
                self.verbs.ping_replied(event)
            case ev.AddressAssigned():
                self._configure_tun(event)
            case ev.PeerMapChanged():
                self.dns.peers_changed(event)
            case ev.DiscoverEndpoints(reconnect_coord=reconnect):
                self.refresh.rediscover(reconnect)
            case ev.SampleWanted(peer_key):
                self._tasks.append(self.loop.create_task(self._sample_port(peer_key)))
            case ev.OpenMappings(key, endpoint, probes, seconds):
                opened = self.mappings.open(probes, endpoint, seconds, owner=key)
                log.debug("birthday probing towards %s:%d from %d sockets", *endpoint, opened)
                if opened < len(probes):
                    self.node.mappings_short(key)
            case ev.CloseMappings(key):
                self.mappings.release(key)
            case _:
                log_event(event)

    # ---- hard NATs ------------------------------------------------------------------

    async def _sample_port(self, peer_key: bytes) -> None:
        sample, sid = await kept_port_sample(self.mappings, self.config, self.udp.family, self.link.host)
        self.node.port_sampled(peer_key, sample, self.loop.time(), sid)
        self.transmit()
        self._tasks = [task for task in self._tasks if not task.done()]

    def _on_mapping_run(self, sid: int, run: memoryview, seg_size: int, src: Endpoint) -> None:
        """Datagrams on a birthday socket: a run of transport to the data path (opened as the main
        socket's are), anything else one by one to the node."""
        if len(run) < 2 or is_stun(run[:seg_size]):
            return
        now = self.loop.time()
        if run[1] in _TRANSPORT:
            to_tun: list[memoryview] = []
            self.data.open_datagrams(bytearray(run), len(run), seg_size, src, now, to_tun)
            self._write_tun(to_tun)
            self._after_data()
            return
        for first in range(0, len(run), seg_size):
            self.node.receive_datagram(bytes(run[first : first + seg_size]), src, now, via=sid)
        self.transmit()

    def udp_sockets(self) -> dict[str, socket.socket]:
        """Every UDP socket the node owns, by the name status and metrics give it."""
        return {"main": self.sock, **{f"pinned {sid}": sock for sid, sock in self.mappings.sockets().items()}}

    def _configure_tun(self, event: ev.AddressAssigned) -> None:
        prefix = ipaddress.ip_network(event.network).prefixlen
        address = f"{event.address}/{prefix}"
        if address != self.tun_address:
            self.tun.set_address(address)
            self.tun_address = address
            self.dns.address_assigned(event.address, self.tun.name)
            log.info("registered as %s, %s on %s", event.name, address, self.tun.name)

    # ---- coord ----------------------------------------------------------------------

    def _register_message(self) -> m.Register:
        return m.Register(
            hostname=self.config.hostname or platform.node() or "node",
            version=__version__,
            local_endpoints=self.local,
            auth_key=self.config.coord.auth_key or None,
            os=platform.system().lower() or None,
            public_endpoint=self.public_endpoint,
            tcp_punch=self.punch.carries(self.link.local_endpoint) or None,
            nat=self.nat,
            deltas=True, delta_version=m.DELTA_VERSION,
            lan_party=True, peer_relays=True,
            mapped=self.mapped, mapped_tcp=self.refresh.mapped_tcp,
            ipv6=self.ipv6 or None,
        )

    def _on_coord_message(self, msg: m.Message) -> None:
        self.node.receive_coord(self.names.rewrite(msg), self.loop.time())
        self.transmit()

    def _on_coord_state(self, up: bool) -> None:
        log.info("coord link %s", "up" if up else "down; tunnels keep running")
        self.refresh.coord_state(up)
        self.coord_tried.set()

    # ---- service --------------------------------------------------------------------

    def status(self) -> str:
        """The systemd STATUS= line."""
        paths = [peer.route.path.kind if peer.route is not None else None for peer in self.node.peers]
        return status_line(paths, self.link.connected)

    def reload(self, settings: NodeConfig) -> None:
        self.reloader.apply(settings)

    def _apply_keepalive(self, settings: NodeConfig) -> None:
        self.node.set_keepalive(settings.paths.keepalive)
        self.transmit()

    def _local_endpoints(self) -> tuple[m.Endpoint, ...]:
        return local_endpoints(self.sock.getsockname()[1], self.tun.name, self.config.listen.address)


async def _serve(config: NodeConfig, load_settings: Callable[[], NodeConfig]) -> int:
    daemon = NodeDaemon(config, read_private_key(config.private_key_file))
    for signum in (signal.SIGTERM, signal.SIGINT):
        daemon.loop.add_signal_handler(signum, daemon.stopping.set)
    await daemon.run(Notifier.from_environment(), load_settings)
    return 0


def main(args) -> int:
    """Entry point of ``meshvpn daemon``: ``args.settings`` is the loaded NodeConfig."""
    config: NodeConfig = args.settings
    setup_logging(config.log.level, "daemon")
    preflight(config, args.config)
    return asyncio.run(_serve(config, lambda: load_node_config(args.config)))
