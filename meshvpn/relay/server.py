"""The relay's asyncio shell: one UDP socket and one TCP listener on the same port around `RelayCore`.

The UDP socket is read in bursts with GRO (`meshvpn.udpbatch`): each receive, a run of
equal-sized datagrams from one endpoint, goes to the core as one batch, and after the burst
every run the core made leaves with one GSO ``sendmsg``; a syscall costs as much as the
checks of a datagram. A TCP connection's bytes go through its `StreamEnd`
(`meshvpn.relay.streamend`: the secure channel, whose frames the core treats as datagrams).
Frames for a TCP node wait in the core's bounded queue while the socket is paused
(asyncio flow control), so a slow reader costs at most ``limits.queue_bytes``.

SIGHUP reloads the forwarding limits and the log level; SIGTERM/SIGINT stop. systemd hears of
readiness, a status line (nodes, forwarded packets, drops) and watchdog pings.

The newest hello timestamp of each node is kept in ``state_dir`` (`HELLO_FILE`, through
``meshvpn.timestamps``): loaded at start, written when it changed at most every
``timestamps.WRITE_INTERVAL`` seconds and when the relay stops, so a hello captured before a
restart is still a replay after it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from pathlib import Path
from typing import Callable

from meshvpn import keys, noise, service, tlsenvelope
from meshvpn.config import Address, RelayConfig, load_relay_config
from meshvpn.errors import LocalProtocolError, MeshError, RemoteProtocolError
from meshvpn.relay import native
from meshvpn.relay.core import RelayCore, Stream
from meshvpn.relay.streamend import StreamEnd
from meshvpn.metrics import MetricsEndpoint, relay_families, start_metrics
from meshvpn.prefixcap import PrefixCaps, PrefixLimits
from meshvpn.reload import Reloader
from meshvpn.timestamps import TimestampFile, TimestampJournal
from meshvpn.dualstack import listen_hosts
from meshvpn.udpbatch import BatchUdpSocket, bind_udp

log = logging.getLogger("meshvpn.relay.server")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new TCP connection has to complete the channel handshake."""
WRITE_HIGH_WATER = 256 << 10
"""Bytes in a connection's asyncio buffer above which the core's queue holds further frames."""
STATUS_INTERVAL = 10.0
"""Seconds between systemd STATUS= updates."""
STREAM_LIMITS = PrefixLimits(per_host=256, per_subnet=1024)
"""TCP connections per source prefix (`meshvpn.prefixcap`): a node needs one, a NAT of nodes a few hundred."""
SOCKET_BUFFER = 4 << 20
PORT_TRIES = 5
"""Ports tried with `listen.port` 0: UDP picks one, whose TCP side another socket may hold (more
likely on the wildcard, where a connection from any address counts)."""
"""UDP socket buffers (capped by net.core.rmem_max and wmem_max): relayed traffic and whatever
else arrives share one socket, and a burst of junk must not overflow it into drops of the rest."""
RESERVED_DESCRIPTORS = 64
"""Descriptors kept free of TCP connections (UDP socket, listener, metrics)."""
RECV_BURST = 64
"""UDP receives per wake-up before the TCP connections and the timer get the loop again."""
HELLO_FILE = "relay-hello-timestamps.json"
"""The record of each node's newest hello inside ``state_dir`` (beside a node's own records)."""
_HELLO_STAMP = 8
"""Bytes of a hello timestamp in the record: Unix milliseconds, big endian (so bytes compare as numbers)."""


class _StreamConnection(asyncio.Protocol):
    """One node's TCP connection: channel bytes in, messages to the core, queued frames out."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.end = StreamEnd(server.core, Stream(self), server.identity, os.urandom(32))
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.paused = False
        self._handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}"
        refused = self.server.admit(self, peer[0])
        if refused is not None:
            log.warning("refusing TCP connection from %s: %s", self.address, refused)
            transport.abort()
            return
        self.server.streams.add(self)
        self._handshake_timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        try:
            self._write(self.end.receive(data, self.server.clock()))
        except RemoteProtocolError as exc:
            self.close(f"channel error: {exc}")
            return
        if self.end.opened:
            self._handshake_timer.cancel()
        self.server.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.server.release(self)
        self.end.closed()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.send_queued()

    def send_queued(self) -> None:
        """Seal and write every frame the core holds for this node."""
        if self.paused or self.transport.is_closing():
            return
        try:
            self._write(self.end.queued())
        except LocalProtocolError as exc:
            self.close(f"cannot send: {exc}")

    def close(self, reason: str) -> None:
        if not self.transport.is_closing():
            log.debug("closing TCP connection from %s: %s", self.address, reason)
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _handshake_expired(self) -> None:
        log.debug("no channel handshake from %s within %gs", self.address, HANDSHAKE_TIMEOUT)
        self.transport.abort()


class RelayServer:
    """A running relay: the UDP socket, the TCP listener, the core and its timer."""

    def __init__(self, settings: RelayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.reloader = Reloader(settings)
        self.reloader.on_change("limits", lambda new: self.core.set_limits(new.limits))
        self.settings = settings
        self.clock = clock
        private = keys.read_private_key(settings.private_key_file)
        self.identity = noise.StaticIdentity.from_private(private)
        self.native = native.available(clock)
        """Whether a native thread forwards (`meshvpn.relay.native`); else `_on_udp` reads the socket."""
        buckets = {"bucket": native.bucket_factory()} if self.native else {}
        self.core = RelayCore(private, settings.coord.public_key, settings.limits, os.urandom, clock(), **buckets)
        self._forwarder: native.NativeForwarder | None = None
        self.hello_file = TimestampFile(settings.state_dir, HELLO_FILE, "hellos", _HELLO_STAMP)
        self.core.restore_hellos({key: int.from_bytes(stamp, "big") for key, stamp in self.hello_file.load().items()})
        self.hellos = TimestampJournal(self.core.latest_hello)
        """When the hello floors go to the state directory (replays after a restart)."""
        self.streams: set[_StreamConnection] = set()
        self._caps = PrefixCaps(STREAM_LIMITS)
        self._hosts: dict[_StreamConnection, str] = {}
        self._max_streams = max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - RESERVED_DESCRIPTORS)
        self.address: tuple[str, int] | None = None
        """Where UDP and TCP are bound (the real port when the config says 0)."""
        self._udp: BatchUdpSocket | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._tls_listener: asyncio.AbstractServer | None = None
        self.tls_address: tuple[str, int] | None = None
        """Where the TLS listener is bound, if the config has one."""
        self._timer: asyncio.TimerHandle | None = None
        self.metrics: MetricsEndpoint | None = None
        self._rate_since = (clock(), 0)
        """(time, forwarded) at the last status line: its pkt/s is measured from there."""

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port; raise MeshError if either fails."""
        listen = self.settings.listen
        for tries_left in reversed(range(PORT_TRIES if listen.port == 0 else 1)):
            try:
                await self._bind(listen)
                break
            except OSError as exc:
                if not (tries_left and exc.errno == errno.EADDRINUSE):
                    await self.close()
                    raise MeshError(f"relay cannot listen on {listen.host}:{listen.port}: {exc}") from None
                self._unbind()
        await self._listen_tls()
        self._on_timer()
        self.metrics = await start_metrics(self.settings.metrics.listen, "relay", self._metrics)
        log.info("relay %s listening on %s:%d (UDP and TCP), forwarding %s", keys.encode_key(self.identity.public),
                 *self.address, native.describe(self.clock))

    async def _listen_tls(self) -> None:
        """The TLS listener (``tls.listen``): the same streams as on plain TCP, inside TLS."""
        try:
            self._tls_listener = await tlsenvelope.listen(self.settings.tls, lambda: _StreamConnection(self))
        except OSError as exc:
            await self.close()
            raise MeshError(f"relay cannot listen with TLS on {self.settings.tls.listen}: {exc}") from None
        except MeshError:
            await self.close()
            raise
        if self._tls_listener is not None:
            self.tls_address = self._tls_listener.sockets[0].getsockname()[:2]
            log.info("relay listening with TLS on %s:%d", *self.tls_address)

    async def close(self) -> None:
        """Stop listening and drop every connection; keep the hello floors."""
        self._keep_hellos(stopping=True)
        if self.metrics is not None:
            await self.metrics.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None and self._udp.sock.fileno() >= 0:
            self._stop_reading()
            self._udp.sock.close()
        listeners = [lst for lst in (self._listener, self._tls_listener) if lst is not None]
        for listener in listeners:
            listener.close()
        for conn in list(self.streams):
            conn.transport.abort()
        for listener in listeners:
            await listener.wait_closed()

    def reload(self, settings: RelayConfig) -> None:
        """Apply what a SIGHUP may change (limits, log level); name what needs a restart."""
        self.reloader.apply(settings)

    def admit(self, conn: _StreamConnection, host: str) -> str | None:
        """Count a new TCP connection against the caps, or say which one refuses it."""
        if len(self._hosts) >= self._max_streams:
            return f"{len(self._hosts)} connections, the descriptor limit allows no more"
        full = self._caps.admit(host)
        if full is not None:
            return f"more than {STREAM_LIMITS.per_host} connections from {host} ({full})"
        self._hosts[conn] = host
        return None

    def release(self, conn: _StreamConnection) -> None:
        self.streams.discard(conn)
        host = self._hosts.pop(conn, None)
        if host is not None:
            self._caps.release(host)

    def _unbind(self) -> None:
        """Close the UDP socket of a port whose TCP side was taken, to try another."""
        self._stop_reading()
        self._udp.sock.close()
        self._udp = None

    def _stop_reading(self) -> None:
        """No more reads of the UDP socket: the native thread stopped and joined (its counts folded in)."""
        loop = asyncio.get_running_loop()
        if self._forwarder is None:
            loop.remove_reader(self._udp.sock.fileno())
            return
        loop.remove_reader(self._forwarder.fileno())
        self._forwarder.stop()
        self._forwarder = None

    async def _bind(self, listen: Address) -> None:
        """UDP, then TCP on the same port (both families on the IPv4 wildcard)."""
        loop = asyncio.get_running_loop()
        self._udp = BatchUdpSocket(bind_udp(listen.host, listen.port, SOCKET_BUFFER, dual_stack=True))
        self.address = (listen.host, self._udp.sock.getsockname()[1])
        if self.native:
            self._forwarder = native.NativeForwarder(self.core, self._udp.sock.fileno(), self.settings.busy_poll_us)
            self._forwarder.start()
            loop.add_reader(self._forwarder.fileno(), self._on_handed)
        else:
            loop.add_reader(self._udp.sock.fileno(), self._on_udp)
        self._listener = await loop.create_server(
            lambda: _StreamConnection(self), listen_hosts(listen.host), self.address[1], reuse_address=True
        )

    def flush(self) -> None:
        """Send what the core produced: runs of datagrams, stream frames, stream closes."""
        core = self.core
        if self._forwarder is not None:  # before the acks: a node told it is registered finds the thread knows
            self._forwarder.sync()
        send = self._udp.send_contiguous
        for run in core.runs_to_send():
            send(run.dst, run.data, run.size)
        for stream in core.streams_to_flush():
            stream.conn_id.send_queued()
        for stream in core.streams_to_close():
            stream.conn_id.close("no valid hello")

    def _on_udp(self) -> None:
        """Receive up to RECV_BURST times, each receive one batch for the core, then send once."""
        udp, receive, now = self._udp, self.core.receive_gro, self.clock()
        view = memoryview(udp.buffer)
        for _ in range(RECV_BURST):
            try:
                source, nbytes, size = udp.recv_into()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("UDP error: %s", exc)
                continue
            receive(view[:nbytes], size, source[:2], now)
        self.flush()

    def _on_handed(self) -> None:
        """What the native thread left to the core (hellos, envelopes to TCP nodes, anything unknown)."""
        receive, now = self.core.receive_gro, self.clock()
        for data, source, size in self._forwarder.take():
            receive(data, size, source, now)
        self.flush()

    def fold(self) -> None:
        """Fold the native thread's counts and liveness into the core now (the timer does every second,
        before the core sweeps, and so do the status line and metrics)."""
        if self._forwarder is not None:
            self._forwarder.pull()

    def _metrics(self):
        self.fold()
        send_errors = self._udp.send_errors + (self._forwarder.send_errors if self._forwarder is not None else 0)
        return relay_families(self.core, send_errors, self._forwarder.totals if self._forwarder is not None else None)

    def status(self) -> str:
        """The systemd STATUS= line: nodes now, and the forwarding rate since the last line."""
        self.fold()
        status = self.core.status()
        now, forwarded = self.clock(), status["forwarded"]
        since, before = self._rate_since
        self._rate_since = (now, forwarded)
        rate = (forwarded - before) / (now - since) if now > since else 0.0
        return f"{status['nodes']} nodes, {rate:.0f} pkt/s"

    def _on_timer(self) -> None:
        self.fold()
        self.core.handle_timer(self.clock())
        self.flush()
        self._keep_hellos()
        delay = max(0.0, self.core.get_timer() - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _keep_hellos(self, stopping: bool = False) -> None:
        self.hello_file.keep(self.hellos, self.clock(), stopping, lambda ms: ms.to_bytes(_HELLO_STAMP, "big"))


def main(args) -> int:
    """`meshvpn relay -c FILE`: serve until SIGTERM or SIGINT; SIGHUP reloads the limits."""
    return service.run_server("relay", args.settings, RelayServer,
                              lambda: load_relay_config(Path(args.config)), STATUS_INTERVAL)
