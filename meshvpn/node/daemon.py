"""``meshvpn daemon``: the asyncio shell around the node core and the data path.

The shell owns every file descriptor and the clock: the TUN device, the one UDP socket
(shared by tunnel traffic, probes, handshakes and STUN), the coord link and the control
socket.  Both descriptors are read in batches from ``loop.add_reader`` callbacks straight
into :class:`~meshvpn.node.dataplane.DataPlane`; the core gets one timer, re-armed from
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
from collections import Counter
from typing import AsyncIterator, Callable, Optional

from meshvpn import __version__
from meshvpn.config import NodeConfig, load_node_config
from meshvpn.control import messages as m
from meshvpn.fastpath import DATA_PATH
from meshvpn.keys import read_private_key
from meshvpn.localsock import ControlServer
from meshvpn.metrics import MetricsEndpoint, node_families, start_metrics
from meshvpn.node.coordlink import CoordLink
from meshvpn.node.core import CoordRefused, CoreConfig, NodeCore, PeerDown, PeerPathChanged, PeerUp, PingReply, Registered
from meshvpn.node.dataplane import DataPlane, SendBuffer
from meshvpn.node.endpoints import local_endpoints
from meshvpn.node.startup import explain_refusal, preflight
from meshvpn.node.mappings import MappingSockets
from meshvpn.node.names import NameWatch, watch_names
from meshvpn.node.netcheck import gather_profile, nat_profile, verdict
from meshvpn.node.pathfinder import PathFinderConfig, PathKind
from meshvpn.node.relayclient import RelayClient
from meshvpn.node.relays import RelaySet
from meshvpn.node.turnclient import TurnShell
from meshvpn.node.turnlink import TurnLinks, frame_run
from meshvpn.node.tcpio import TcpPunchShell, punch_shell
from meshvpn.node.tcppunch import TcpEndpoint
from meshvpn.node.timestamps import WRITE_INTERVAL, TimestampFile, restore
from meshvpn.node.tun import TunDevice
from meshvpn.node.udpio import MAX_GSO_BYTES, MAX_SEGMENTS, BatchUdpSocket
from meshvpn.reload import Reloader
from meshvpn.service import Notifier, serve_until_stopped, setup_logging
from meshvpn.session import OVERHEAD
from meshvpn.stun import is_stun
from meshvpn.node.traversal import OpenMappings, SampleWanted, nat_info
from meshvpn.stunio import StunClient, stun_binding
from meshvpn.wire import Endpoint, MessageType

log = logging.getLogger("meshvpn.node")

BATCH = 64
"""Reads per readiness callback before the loop looks at the other descriptor."""
SOCKET_BUFFER = 4 << 20
RECV_SLOT = 65535
"""Room one receive needs: a whole GRO batch."""
RECV_AREA = 4 * RECV_SLOT
"""Receives gathered per TUN write: at least three GRO batches, or about 140 single datagrams."""
ENDPOINT_REFRESH = 60.0
"""Seconds between re-checks of local endpoints and the STUN mapping."""
SAMPLE_TIMEOUT = 1.0
"""Seconds a fresh-socket port sample may take before the punch goes ahead without it."""
_HELLO_ACK = bytes((MessageType.RELAY_HELLO_ACK,))
_TRANSPORT = frozenset((MessageType.DATA, MessageType.KEEPALIVE))
PING_INTERVAL = 0.5
PING_WAIT = 2.0


def status_line(paths: list[Optional[PathKind]], coord_connected: bool) -> str:
    """The systemd STATUS= summary: peers, how many peer to peer (LAN, UDP or TCP), how many relayed."""
    kinds = Counter(paths)
    direct = kinds[PathKind.DIRECT] + kinds[PathKind.LAN] + kinds[PathKind.TCP]
    line = f"{len(paths)} peers: {direct} direct, {kinds[PathKind.RELAY]} relay"
    return line if coord_connected else line + "; offline: coord unreachable"


class _SocketSender:
    """What StunClient needs from a transport: ``sendto`` on the node's own UDP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendto(self, data: bytes, addr) -> None:
        try:
            self._sock.sendto(data, addr)
        except OSError:
            pass


class NodeDaemon:
    """One running node: TUN, UDP socket, core, coord link and control socket."""

    def __init__(self, config: NodeConfig, private_key: bytes) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        paths = PathFinderConfig(
            keepalive=config.paths.keepalive, relay_after=config.paths.relay_after, path_timeout=config.paths.path_timeout
        )
        self.core = NodeCore(private_key, os.urandom, CoreConfig(paths=paths, wall_offset=time.time() - self.loop.time()))
        self.timestamp_file = TimestampFile(config.state_dir)
        self.timestamps = restore(self.core.handshakes.timestamps.greatest, self.timestamp_file)
        """When the newest initiation timestamps go to the state directory (replays after a restart)."""
        self.data = DataPlane(self.core, self._own_datagram)
        self._sends = SendBuffer(self._send_run, MAX_SEGMENTS, MAX_GSO_BYTES)
        self._recv_area = bytearray(RECV_AREA)
        """Consecutive receives land one after another here until it is written to the TUN."""
        self._recv_view = memoryview(self._recv_area)
        self.tun: Optional[TunDevice] = None
        self.sock: Optional[socket.socket] = None
        self.udp: Optional[BatchUdpSocket] = None
        self.stun: Optional[StunClient] = None
        self.link: Optional[CoordLink] = None
        self.names: Optional[NameWatch] = None
        self.relays: Optional[RelayClient] = None
        self.turn = TurnShell(TurnLinks(os.urandom), self.core, self._sendto, self._inbound, self._after_core,
                              lambda msg: self.link.send(msg), self.loop.time)
        self.tcp: TcpPunchShell = punch_shell(self.core, self._inbound, self._after_core,
                                              lambda msg: self.link.send(msg), self.loop.time)
        self.control = ControlServer(str(config.control_socket), self.handle_control)
        self.public_endpoint: Optional[m.Endpoint] = None
        self.nat: Optional[m.NatInfo] = None
        self.mappings = MappingSockets(self.loop, config.listen.address, self._on_mapping_datagram)
        self.local: tuple[m.Endpoint, ...] = ()
        self.tun_address: Optional[str] = None
        self.stopping = asyncio.Event()
        self.coord_tried = asyncio.Event()
        """Set once the first coord attempt registered or failed: READY waits for it."""
        self.metrics: Optional[MetricsEndpoint] = None
        self.reloader = Reloader(config)
        self.reloader.on_change("paths.keepalive", self._apply_keepalive)
        self._timer: Optional[asyncio.TimerHandle] = None
        self._ping_waiters: dict[bytes, asyncio.Future] = {}
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
            self.relays = RelayClient(
                RelaySet(self.core.identity.private, self.core.public_key, os.urandom, self.core.config.wall_offset),
                self.core.identity.private, self._sendto, self._inbound, self._on_relay_home, self.loop.time,
            )
            await self.tcp.start(cfg.listen.address, self.sock.getsockname()[1])
            self.link = CoordLink(
                cfg.coord.address.host, cfg.coord.address.port, cfg.coord.public_key, self.core.identity,
                self._register_message, self._on_coord_message, self._on_coord_state,
                local_socket=self.tcp.coord_socket,
            )
            self.loop.add_reader(self.tun.fileno(), self._on_tun)
            self.loop.add_reader(self.sock.fileno(), self._on_udp)
            await self.control.start()
            self.local = self._local_endpoints()
            self.core.set_own_endpoints(self.local, None)
            self.names = watch_names(self.loop, self.sock.family, self.relays, self.turn)
            self._tasks.append(self.loop.create_task(self.names.run()))
            self.link.start()
            self._tasks.append(self.loop.create_task(self._refresh_endpoints()))
            self._tasks.append(self.loop.create_task(self._keep_timestamps()))
            self.metrics = await start_metrics(cfg.metrics.listen, "daemon", lambda: node_families(self.core, self.data))
            log.info("node %s listening on udp %s:%d, tun %s", self.core.identity.public.hex()[:8],
                     *self.sock.getsockname()[:2], self.tun.name)
            await _first_set(self.coord_tried, self.stopping)
        except BaseException:
            await self.close()
            raise
        if self.stopping.is_set():
            await self.close()
            return
        await serve_until_stopped(self, load_settings, notifier)

    def _bind(self) -> None:
        cfg = self.config.listen
        family = socket.AF_INET6 if ipaddress.ip_address(cfg.address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.bind((cfg.address, cfg.port))
        sock.setblocking(False)
        self.sock = sock
        self.udp = BatchUdpSocket(sock)
        self.stun = StunClient(_SocketSender(sock))

    async def close(self) -> None:
        """Leave nothing behind: the coord hears we left, the TUN (and its routes) goes away."""
        if self.metrics is not None:
            await self.metrics.close()
        for task in self._tasks:
            task.cancel()
        if self.names is not None:
            self.names.close()
        if self.link is not None:
            await self.link.close()
        if self.relays is not None:
            await self.relays.close()
        if self.sock is not None:
            self.turn.close()
        await self.tcp.close()
        await self.control.close()
        if self._timer is not None:
            self._timer.cancel()
        self.mappings.close()
        self._save_timestamps(stopping=True)
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
        now = self.loop.time()
        record = self.timestamps.due(now, stopping)
        if record is None:
            return
        try:
            self.timestamp_file.save(record)
        except OSError as exc:
            log.warning("cannot keep initiation timestamps in %s: %s", self.timestamp_file.path, exc)
            return
        self.timestamps.written(record, now)

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

    def _send_run(self, dst: Endpoint, run: memoryview, seg_size: int) -> None:
        """One run of sealed messages (``seg_size`` each, the last may be shorter): one GSO send."""
        turn = self.turn.links.outbound(dst)
        if turn is not None:
            self.udp.send_contiguous(turn[0], memoryview(frame_run(turn[1], run, seg_size)), seg_size + 4)
            return
        if type(dst) is TcpEndpoint:
            self.tcp.send(dst, [bytes(run[first : first + seg_size]) for first in range(0, len(run), seg_size)])
            return
        relay_stream = self.relays.tcp_link(dst)
        pinned = self.core.socket_for
        if relay_stream is not None or (pinned and dst in pinned):
            messages = [bytes(run[first : first + seg_size]) for first in range(0, len(run), seg_size)]
            if relay_stream is not None:
                relay_stream.send(messages)
            else:
                for message in messages:
                    self.mappings.sendto(pinned[dst], message, dst)
            return
        self.udp.send_contiguous(dst, run, seg_size)

    def _on_udp(self) -> None:
        """Receive one after another into the receive area, open in place, write to the TUN when it is full.

        Without GRO (a kernel or path that does not merge) each receive is one datagram. Receives
        of one source and size lie back to back in the area as a GRO batch would, so they are
        opened as one run (one native ``open_run``), and one TUN write merges the burst.
        """
        udp, data, area, view = self.udp, self.data, self._recv_area, self._recv_view
        turn_servers = self.turn.links.by_endpoint
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
                        self.turn.receive_run(view[at : at + nbytes], nbytes, seg_size, src)
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

    def _own_datagram(self, data: bytes, src: Endpoint) -> bool:
        """STUN answers, relay hello acks and TURN, which the shell's clients own; True if one took it."""
        if self.turn.datagram_received(data, src):
            return True
        if is_stun(data):
            self.stun.datagram_received(data, src)
            return True
        return data[1:2] == _HELLO_ACK and self.relays.datagram_received(data, src)

    def _inbound(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        """Messages from a relay's TCP stream or a side socket, into the data path."""
        self._write_tun(self.data.open_messages(datagrams, self.loop.time()))
        self._after_data()

    def _after_data(self) -> None:
        if self.data.core_touched:
            self.data.core_touched = False
            self._after_core()

    # ---- core -----------------------------------------------------------------------

    def _after_core(self) -> None:
        """Send what the core produced, act on its events and re-arm its one timer."""
        core = self.core
        pinned = core.socket_for
        for dst, data in core.datagrams_to_send():
            wrapped = self.turn.links.wrap(data, dst)
            if wrapped is not None:
                dst, data = wrapped
            relay_stream = self.relays.tcp_link(dst)
            if type(dst) is TcpEndpoint:
                self.tcp.send(dst, [data])
            elif relay_stream is not None:
                relay_stream.send([data])
            elif not (pinned and dst in pinned and self.mappings.sendto(pinned[dst], data, dst)):
                self._sendto(data, dst)
        for msg in core.coord_messages_to_send():
            self.link.send(msg)
        while (event := core.next_event()) is not None:
            self._on_event(event)
        if self._timer is not None:
            self._timer.cancel()
        when = core.get_timer()
        self._timer = None if when is None else self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self.loop.time())
        self._after_core()

    def _sendto(self, data: bytes, dst: Endpoint) -> None:
        try:
            self.sock.sendto(data, dst)
        except OSError:
            pass

    def _on_relay_home(self, endpoint: Optional[Endpoint]) -> None:
        """Relayed packets now go to `endpoint` (None: no relay ready); the coord tells peers."""
        self.core.set_relay(endpoint, self.loop.time())
        self._after_core()
        home = self.relays.relays.home
        if home is not None:
            self.link.send(m.RelayHome(home.name))

    def _on_event(self, event) -> None:
        if isinstance(event, PeerPathChanged):
            self.tcp.path_changed(event.name, event.new)
            log.info("path to %s: %s -> %s (%s)", event.name, _path_text(event.old), _path_text(event.new),
                     event.reason, extra={"PEER": event.name, "PATH": _path_text(event.new), "REASON": event.reason})
        elif isinstance(event, PingReply):
            waiter = self._ping_waiters.pop(event.tx_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
        elif isinstance(event, Registered):
            self._configure_tun(event)
        elif isinstance(event, PeerUp):
            log.info("handshake with %s complete", event.name, extra={"PEER": event.name})
        elif isinstance(event, PeerDown):
            log.info("peer %s down: %s", event.name, event.reason, extra={"PEER": event.name, "REASON": event.reason})
        elif isinstance(event, CoordRefused):
            log.error("%s", explain_refusal(event.code, event.message))
        elif isinstance(event, SampleWanted):
            self._tasks.append(self.loop.create_task(self._sample_port(event.peer_key)))
        elif isinstance(event, OpenMappings):
            opened = self.mappings.open(event.probes, event.endpoint)
            log.debug("birthday probing towards %s:%d from %d sockets", *event.endpoint, opened)
            self.loop.call_later(event.seconds, self._prune_mappings)

    # ---- hard NATs ------------------------------------------------------------------

    async def _sample_port(self, peer_key: bytes) -> None:
        """A STUN sample from a new socket: the port our NAT gave its newest mapping."""
        sample = None
        try:
            result = await stun_binding(await self._stun_server(), local=(self.config.listen.address, 0),
                                        timeout=SAMPLE_TIMEOUT)
            sample = Endpoint(*result.mapped)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.info("no port sample: %s", exc or type(exc).__name__)
        self.core.port_sampled(peer_key, sample, self.loop.time())
        self._after_core()
        self._tasks = [task for task in self._tasks if not task.done()]

    def _on_mapping_datagram(self, sid: int, data: bytes, src: Endpoint) -> None:
        """A datagram on a birthday socket: transport to the data path, the rest to the core."""
        if len(data) < 2 or is_stun(data):
            return
        if data[1] in _TRANSPORT:
            self._inbound([(data, src)])
        else:
            self.core.datagram_received(data, src, self.loop.time(), via=sid)
            self._after_core()

    def _prune_mappings(self) -> None:
        """Close the birthday sockets no path uses, and forget their pins."""
        routes = {peer.route.endpoint for peer in self.core.peers if peer.route is not None}
        pinned = self.core.socket_for
        for endpoint in [e for e in pinned if e not in routes]:
            del pinned[endpoint]
        self.mappings.keep_only(set(pinned.values()))

    def _configure_tun(self, event: Registered) -> None:
        prefix = ipaddress.ip_network(event.network).prefixlen
        address = f"{event.address}/{prefix}"
        if address != self.tun_address:
            self.tun.set_address(address)
            self.tun_address = address
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
            tcp_punch=self.tcp.from_punch_port or None,
            nat=self.nat,
        )

    def _on_coord_message(self, msg: m.Message) -> None:
        msg = self.names.rewrite(msg)
        self.relays.coord_message(msg)
        self.core.coord_message(msg, self.loop.time())
        self.turn.coord_message(msg)
        self.tcp.coord_message(msg)
        self._after_core()

    def _on_coord_state(self, up: bool) -> None:
        log.info("coord link %s", "up" if up else "down; tunnels keep running")
        self.coord_tried.set()

    # ---- service --------------------------------------------------------------------

    def status(self) -> str:
        """The systemd STATUS= line."""
        paths = [peer.route.path.kind if peer.route is not None else None for peer in self.core.peers]
        return status_line(paths, self.link.connected)

    def reload(self, settings: NodeConfig) -> None:
        self.reloader.apply(settings)

    def _apply_keepalive(self, settings: NodeConfig) -> None:
        self.core.config.paths.keepalive = settings.paths.keepalive  # shared by every peer's path finder
        self._after_core()

    def _local_endpoints(self) -> tuple[m.Endpoint, ...]:
        return local_endpoints(self.sock.getsockname()[1], self.tun.name, self.config.listen.address)

    async def _refresh_endpoints(self) -> None:
        """Learn the public mapping via STUN on the shared socket; report changes to the coord."""
        while True:
            public = await self._stun_mapping()
            local = self._local_endpoints()
            nat = await self._nat_profile()
            if public != self.public_endpoint or local != self.local or nat != self.nat:
                self.public_endpoint, self.local, self.nat = public, local, nat
                self.core.set_own_endpoints(local, public)
                log.info("endpoints: public %s, local %s, nat %s", public or "-", ", ".join(map(str, local)) or "-",
                         "-" if nat is None else f"{'independent' if nat.endpoint_independent else 'dependent'} "
                                                 f"mapping, {nat.allocation} ports")
                self.link.send(m.Endpoints(local=local, public=public, nat=nat))
            self._prune_mappings()
            await asyncio.sleep(ENDPOINT_REFRESH)

    async def _nat_profile(self) -> Optional[m.NatInfo]:
        """Our NAT's mapping and port allocation from a few fresh-socket STUN samples (netcheck's)."""
        try:
            server = await self._stun_server()
        except (OSError, ValueError):
            return self.nat
        profile = nat_profile(verdict(await gather_profile(server, self.config.listen.address)))
        if profile is None:
            return self.nat
        self.core.set_nat_profile(profile)
        return nat_info(profile)

    async def _stun_server(self) -> Endpoint:
        coord = self.config.coord
        infos = await self.loop.getaddrinfo(coord.address.host, coord.stun_port, family=self.sock.family,
                                            type=socket.SOCK_DGRAM)
        return Endpoint(*infos[0][4][:2])

    async def _stun_mapping(self) -> Optional[m.Endpoint]:
        try:
            result = await asyncio.wait_for(self.stun.query(await self._stun_server()), 5.0)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.info("no STUN mapping from the coord: %s", exc or type(exc).__name__)
            return self.public_endpoint
        host, port = result.mapped
        return m.Endpoint(ipaddress.ip_address(host).compressed, port)

    # ---- control socket -------------------------------------------------------------

    async def handle_control(self, request: dict) -> AsyncIterator[dict]:
        cmd = request.get("cmd")
        if cmd == "status":
            status = self.core.status(self.loop.time())
            status["self"]["coord"] = "connected" if self.link and self.link.connected else "disconnected"
            status["self"]["drops"] = dict(self.core.drops + self.data.drops)
            status["self"]["endpoints"] = [str(e) for e in self.local]
            status["self"]["public_endpoint"] = str(self.public_endpoint) if self.public_endpoint else None
            status["self"]["relays"] = self.relays.relays.status()
            self.turn.annotate(status)
            status["self"]["tcp_punch"] = self.tcp.status()
            status["self"]["data_path"] = DATA_PATH
            yield {**status, "done": True}
        elif cmd == "peers":
            yield {"peers": [_peer_map_entry(peer) for peer in self.core.peers], "done": True}
        elif cmd == "ping":
            async for reply in self._ping(request):
                yield reply
        else:
            yield {"error": f"unknown command {cmd!r}", "done": True}

    async def _ping(self, request: dict) -> AsyncIterator[dict]:
        peer = self.core.peers.find(str(request.get("peer", "")))
        if peer is None:
            yield {"error": f"no peer named {request.get('peer')!r}", "done": True}
            return
        count = request.get("count", 4)
        count = count if isinstance(count, int) and 0 < count <= 1000 else 4
        last_path = peer.route.path.kind.value if peer.route else "-"
        for seq in range(count):
            tx_id = self.core.ping(peer, self.loop.time())
            waiter = self.loop.create_future()
            if tx_id is not None:
                self._ping_waiters[tx_id] = waiter
            self._after_core()
            try:
                reply: PingReply = await asyncio.wait_for(waiter, PING_WAIT)
            except asyncio.TimeoutError:
                self._ping_waiters.pop(tx_id, None)
                yield {"type": "timeout", "name": peer.name, "seq": seq}
            else:
                if reply.path != last_path:
                    yield {"type": "path", "name": peer.name, "old": last_path, "new": reply.path}
                    last_path = reply.path
                yield {
                    "type": "pong", "seq": seq, "name": reply.name, "overlay": reply.address, "path": reply.path,
                    "endpoint": f"{reply.endpoint[0]}:{reply.endpoint[1]}", "rtt_ms": reply.rtt * 1000,
                }
            if seq + 1 < count:
                await asyncio.sleep(PING_INTERVAL)
        yield {"done": True}


def _path_text(path) -> str:
    if path is None:
        return "-"
    if path.endpoint is None:
        return path.kind.value
    return f"{path.kind.value} {path.endpoint[0]}:{path.endpoint[1]}"


def _peer_map_entry(peer) -> dict:
    info = peer.info
    endpoints = [str(e) for e in info.local_endpoints]
    if info.public_endpoint is not None:
        endpoints.append(str(info.public_endpoint))
    return {"name": peer.name, "overlay": peer.address, "key": peer.key_text, "online": info.online,
            "endpoints": endpoints}


async def _first_set(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()


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
