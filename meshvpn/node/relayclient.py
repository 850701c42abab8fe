"""The daemon's asyncio side of relays: a timer for the `RelaySet`, and TCP connections when UDP fails.

The sans-IO `RelaySet` decides everything (hellos, fallback, home); this shell sends its
datagrams on the node's UDP socket, keeps one `ClientChannel` over TCP per link that asks for
it (``want_tcp``, reconnecting at ``tcp_retry_at``), and hands every frame that is not a hello
ack to ``on_frame`` exactly as if it had arrived over UDP from the relay's endpoint. When home
changes, ``on_home`` gets the endpoint relayed packets should go to (None: no relay ready).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Optional

from meshvpn.channel import ClientChannel
from meshvpn.control import messages as m
from meshvpn.errors import MeshError
from meshvpn.node.relaylink import RelayLink, Transport
from meshvpn.node.relays import RelaySet
from meshvpn.wire import Endpoint, MessageType

log = logging.getLogger("meshvpn.node.relay")

CONNECT_TIMEOUT = 5.0
"""Seconds for TCP connect plus the channel handshake."""
READ_SIZE = 65536


class _RelayStream:
    """One TCP connection to a relay; frames in go to the client, frames out are sealed here."""

    def __init__(self, client: RelayClient, link: RelayLink) -> None:
        self.client = client
        self.link = link
        self.endpoint = Endpoint(link.info.host, link.info.port)
        self.channel: Optional[ClientChannel] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    def send(self, frames: list[bytes]) -> None:
        channel, writer = self.channel, self.writer
        if channel is None or writer is None or not channel.established:
            return
        for frame in frames:
            channel.send(frame)
        writer.write(channel.data_to_send())

    def close(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        client = self.client
        try:
            reader, self.writer = await asyncio.wait_for(asyncio.open_connection(*self.endpoint), CONNECT_TIMEOUT)
            self.channel = ClientChannel(client.identity_private, self.link.info.public_key, os.urandom(32), time.time())
            self.writer.write(self.channel.data_to_send())
            up = False
            while data := await reader.read(READ_SIZE):
                frames = self.channel.receive_data(data)
                self.writer.write(self.channel.data_to_send())
                if not up and self.channel.established:
                    up = True
                    log.info("relay %s: TCP connected", self.link.name, extra={"RELAY": self.link.name})
                    client.relays.tcp_up(self.link, client.clock())
                    client.flush()
                client.frames_received(frames, self.endpoint)
            raise EOFError("relay closed the connection")
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError, EOFError, MeshError) as exc:
            log.info("relay %s: TCP connection lost: %s", self.link.name, exc or type(exc).__name__,
                     extra={"RELAY": self.link.name})
        finally:
            if self.writer is not None:
                self.writer.close()
            client.stream_ended(self)


class RelayClient:
    """Relays for one node daemon: wraps a `RelaySet` with sockets, a timer and TCP streams."""

    def __init__(
        self,
        relays: RelaySet,
        identity_private: bytes,
        sendto: Callable[[bytes, Endpoint], None],
        on_frame: Callable[[list[tuple[bytes, Endpoint]]], None],
        on_home: Callable[[Optional[Endpoint]], None],
        clock: Callable[[], float],
    ) -> None:
        self.relays = relays
        self.identity_private = identity_private
        self.clock = clock
        self._sendto = sendto
        self._on_frame = on_frame
        self._on_home = on_home
        self._streams: dict[str, _RelayStream] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._closed = False

    # ---- inputs from the daemon -----------------------------------------------------

    def coord_message(self, msg: m.Message) -> None:
        """Watch coord messages for relays and tokens."""
        if isinstance(msg, m.Registered):
            self.relays.configure(msg.relays, msg.relay_tokens, self.clock())
            for name in self.relays.skipped:
                log.warning("relay %s is announced by a name with no address yet; skipped for now", name)
        elif isinstance(msg, m.RelayTokens):
            self.relays.set_tokens(msg.tokens, self.clock())
        else:
            return
        self.flush()

    def datagram_received(self, data: bytes, src: Endpoint) -> bool:
        """A datagram of type RELAY_HELLO_ACK from the UDP socket; True if a link took it."""
        taken = self.relays.receive(data, src, Transport.UDP, self.clock())
        if taken:
            self.flush()
        return taken

    def tcp_link(self, dst: Endpoint) -> Optional[_RelayStream]:
        """The TCP stream that carries messages for `dst`, when `dst` is a relay on TCP."""
        link = self.relays.is_tcp(dst)
        return None if link is None else self._streams.get(link.name)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for stream in list(self._streams.values()):
            stream.close()

    # ---- inputs from the streams ----------------------------------------------------

    def frames_received(self, frames: list[bytes], endpoint: Endpoint) -> None:
        now = self.clock()
        data = []
        for frame in frames:
            if len(frame) > 1 and frame[1] == MessageType.RELAY_HELLO_ACK:
                self.relays.receive(frame, endpoint, Transport.TCP, now)
            else:
                data.append((frame, endpoint))
        if data:
            self._on_frame(data)
        self.flush()

    def stream_ended(self, stream: _RelayStream) -> None:
        if self._streams.get(stream.link.name) is stream:
            del self._streams[stream.link.name]
            if not self._closed:
                self.relays.tcp_down(stream.link, self.clock())
                self.flush()

    # ---- outputs --------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the relay set produced, follow its TCP wishes and home, re-arm the timer."""
        if self._closed:
            return
        relays = self.relays
        for dst, data in relays.datagrams_to_send():
            self._sendto(data, dst)
        for link, frame in relays.frames_to_send():
            stream = self._streams.get(link.name)
            if stream is not None:
                stream.send([frame])
        now = self.clock()
        for name, link in relays.links.items():
            stream = self._streams.get(name)
            if link.want_tcp and stream is None and now >= link.tcp_retry_at:
                log.info("relay %s: no answer over UDP, trying TCP", name, extra={"RELAY": name})
                link.tcp_attempt()
                self._streams[name] = _RelayStream(self, link)
            elif not link.want_tcp and stream is not None:
                log.info("relay %s: UDP works again, closing TCP", name, extra={"RELAY": name})
                del self._streams[name]
                stream.close()
                link.tcp_down(now)
        for name in [n for n in self._streams if n not in relays.links]:
            self._streams.pop(name).close()
        if relays.home_changed():
            home = relays.home
            log.info("home relay: %s", "-" if home is None else f"{home.name} over {home.transport.value}",
                     extra={"RELAY": "-" if home is None else home.name})
            self._on_home(relays.home_endpoint())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = relays.get_timer()
        if when is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, when - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.relays.handle_timer(self.clock())
        self.flush()
