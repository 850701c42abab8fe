"""A relay stream races plain TCP and TLS on loopback, against the real relay server.

The relay serves its channel inside TLS; its plain port here is a middlebox that takes the TCP
connection and passes nothing (a network that lets only TLS through). The daemon's stream shell
(`meshvpn.node.relay.shell`) races both (`OpenRelayStream.targets`): the plain connection gets
through but never finishes the channel handshake, so it must not win; TLS does, a stagger later.
"""

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest

from meshvpn import keys
from meshvpn.config import Address, TlsListenConfig
from meshvpn.lab.mesh import self_signed_certificate
from meshvpn.node.eyeballs import STAGGER
from meshvpn.node.events import OpenRelayStream
from meshvpn.node.relay.shell import RelayStreams
from meshvpn.node.streamdial import StreamTarget
from meshvpn.relay.server import RelayServer
from meshvpn.wire import Endpoint

from test_relay_server import relay_config

pytestmark = pytest.mark.timeout(60)


class StreamNews:
    """The node's side of the stream inbox: what the shell reported, when (loop time)."""

    def __init__(self) -> None:
        self.up: list[tuple[float, StreamTarget]] = []
        self.ended: list[str] = []
        self.came_up = asyncio.Event()

    def relay_stream_up(self, name: str, now: float, target: StreamTarget) -> None:
        self.up.append((now, target))
        self.came_up.set()

    def relay_stream_ended(self, name: str, now: float) -> None:
        self.ended.append(name)

    def receive_relay_frames(self, name: str, frames, now: float) -> None:
        pass


@contextlib.asynccontextmanager
async def silent_port():
    """A TCP port that accepts every connection and never sends a byte."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        for writer in held:
            writer.close()
        server.close()


def test_a_plain_connection_that_carries_nothing_loses_the_race_to_tls(tmp_path: Path):
    cert, key = self_signed_certificate(tmp_path, "relay")
    tls = TlsListenConfig(listen=Address("127.0.0.1", 0), cert_file=cert, key_file=key)
    config = dataclasses.replace(relay_config(tmp_path), tls=tls)

    async def scenario():
        loop = asyncio.get_running_loop()
        server = RelayServer(config)
        await server.start()
        news = StreamNews()
        streams = RelayStreams(news, keys.generate_private_key(), lambda: None, loop.time)
        try:
            async with silent_port() as plain:
                tls = StreamTarget(Endpoint(*server.tls_address), True)
                started = loop.time()
                streams.follow(OpenRelayStream("r1", (StreamTarget(plain), tls), server.identity.public))
                await asyncio.wait_for(news.came_up.wait(), 10)
                [(when, target)] = news.up
                assert target == tls
                assert STAGGER <= when - started < STAGGER + 2.0, "TLS starts a stagger after plain TCP"
                assert news.ended == []
        finally:
            await streams.close()
            await server.close()

    asyncio.run(scenario())
