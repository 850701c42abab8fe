"""A stream the node asks to open while one of the same name is open replaces it, on loopback.

The node's side (`meshvpn.node.streamdial`) asks for a new connection when it no longer counts on
the old one (a replaced stream, say), and expects `up` or `down` of the new one: the shell closes
the old connection first, so that neither its task nor its connection (and the TURN allocation or
relay registration it holds on the server) lives on unseen, and reports nothing of it.
"""

import asyncio

import pytest

from meshvpn.node.events import TurnStream
from meshvpn.node.streamdial import StreamTarget
from meshvpn.node.turn.shell import TurnStreams
from meshvpn.wire import Endpoint

pytestmark = pytest.mark.timeout(30)


class TurnNews:
    """The node's side of the TURN stream inbox: what the shell reported."""

    def __init__(self) -> None:
        self.changes: list[bool] = []
        self.changed = asyncio.Event()

    def turn_stream_changed(self, name: str, up: bool, now: float, tls: bool = False, reset: bool = False) -> None:
        self.changes.append(up)
        self.changed.set()

    def receive_turn_stream(self, name: str, data: bytes, now: float) -> None:
        pass


def test_a_stream_opened_again_closes_the_one_before():
    async def scenario():
        loop = asyncio.get_running_loop()
        ends: list[asyncio.Future] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ended = loop.create_future()
            ends.append(ended)
            await reader.read()  # until the node's end closes it
            ended.set_result(True)
            writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        news = TurnNews()
        streams = TurnStreams(news, lambda: None, loop.time)
        wish = TurnStream("turn-1", (StreamTarget(Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])),))
        try:
            for opened in (1, 2):
                news.changed.clear()
                streams.follow(wish)
                await asyncio.wait_for(news.changed.wait(), 5)
                assert news.changes == [True] * opened
            first, second = await asyncio.wait_for(_two(ends), 5)
            await asyncio.wait_for(first, 5)  # the first connection was closed
            await asyncio.sleep(0.1)
            assert not second.done() and news.changes == [True, True], "the new one stays, the old one unreported"
        finally:
            await streams.close()
            server.close()

    asyncio.run(scenario())


async def _two(ends: list) -> list:
    while len(ends) < 2:
        await asyncio.sleep(0.01)
    return ends
