"""Coord link: registers first, answers pings, reconnects with backoff when the coord drops it."""

import asyncio
import os

import pytest

from meshvpn.channel import ServerChannel
from meshvpn.control import messages as m
from meshvpn.node import coordlink
from meshvpn.node.coordlink import BACKOFF_MAX, CoordLink, backoff_delay
from meshvpn.noise import StaticIdentity

SERVER = StaticIdentity.from_private(bytes(range(1, 33)))
NODE = StaticIdentity.from_private(bytes(range(40, 72)))
REGISTER = m.Register(hostname="n1", version="1", local_endpoints=())
REGISTERED = m.Registered(node_key=NODE.public, name="n1", address="100.64.0.1",
                          network=m.NetworkInfo(name="lab", cidr="100.64.0.0/24"))


def test_backoff_doubles_to_the_cap_with_jitter():
    assert [backoff_delay(n, 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(50, 0.5) == BACKOFF_MAX
    assert backoff_delay(1, 0.0) == 0.5 and backoff_delay(1, 0.999) == pytest.approx(1.499)


async def fake_coord(connections: list, seen: list):
    """Accepts channels; registers each node, pings it, then hangs up the first connection."""

    async def serve(reader, writer):
        channel = ServerChannel(SERVER, lambda key: key == NODE.public, os.urandom(32))
        connections.append(writer)
        while data := await reader.read(65536):
            for payload in channel.receive_data(data):
                msg = m.decode(payload)
                seen.append(msg.TYPE)
                if isinstance(msg, m.Register):
                    channel.send(m.encode(REGISTERED))
                    channel.send(m.encode(m.Ping()))
                elif isinstance(msg, m.Pong) and len(connections) == 1:
                    writer.write(channel.data_to_send())
                    writer.close()
                    return
            writer.write(channel.data_to_send())

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.timeout(20)
def test_registers_answers_ping_and_reconnects(monkeypatch):
    monkeypatch.setattr(coordlink, "BACKOFF_INITIAL", 0.05)

    async def run():
        connections, seen, states, messages = [], [], [], []
        server = await fake_coord(connections, seen)
        port = server.sockets[0].getsockname()[1]
        link = CoordLink("127.0.0.1", port, SERVER.public, NODE, lambda: REGISTER, messages.append, states.append)
        link.start()
        for _ in range(200):
            if states[:3] == [True, False, True]:
                break
            await asyncio.sleep(0.02)
        await link.close()
        server.close()
        await server.wait_closed()
        return seen, states, messages, link

    seen, states, messages, link = asyncio.run(run())
    assert states == [True, False, True, False], "down on the hang-up, up again, down when closed"
    assert seen[:3] == ["register", "pong", "register"]
    assert [msg.TYPE for msg in messages] == ["registered", "registered"], "pings are answered by the link itself"
    assert link.failures == 0, "a successful registration resets the backoff"
