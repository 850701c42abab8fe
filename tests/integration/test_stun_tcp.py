"""STUN Binding over TCP (meshvpn.stuntcp) on loopback: the server the coord runs, and a node's sample."""

import asyncio
import errno
import socket

import pytest

from meshvpn.stun import StunError
from meshvpn.stunio import start_stun_server
from meshvpn.stuntcp import MAX_MESSAGE, tcp_binding

pytestmark = pytest.mark.timeout(30)


def test_a_tcp_binding_answers_with_the_connection_s_source_port():
    asyncio.run(_test_a_tcp_binding_answers_with_the_connection_s_source_port())


async def _test_a_tcp_binding_answers_with_the_connection_s_source_port():
    server = await start_stun_server("127.0.0.1", 0, tcp=True)
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        mapped = await tcp_binding(server.address, ("127.0.0.1", port), 2.0)
        assert mapped == ("127.0.0.1", port)
        assert server.stats.answered == 1
        second = await tcp_binding(server.address, ("127.0.0.1", 0), 2.0)
        assert second[0] == "127.0.0.1" and second[1] != 0
    finally:
        server.close()


def test_without_tcp_the_server_has_no_tcp_listener():
    asyncio.run(_test_without_tcp_the_server_has_no_tcp_listener())


async def _test_without_tcp_the_server_has_no_tcp_listener():
    server = await start_stun_server("127.0.0.1", 0)
    try:
        assert server.tcp is None
        with pytest.raises(OSError):
            await tcp_binding(server.address, ("127.0.0.1", 0), 2.0)
    finally:
        server.close()


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n" + bytes(40), b"\x01\x02\x00\x00" + bytes(16),
                                     b"\x00\x01\xff\xff" + bytes(MAX_MESSAGE)])
def test_anything_but_a_binding_request_is_dropped_and_the_connection_closed(garbage):
    asyncio.run(_test_anything_but_a_binding_request_is_dropped_and_the_connection_closed(garbage))


async def _test_anything_but_a_binding_request_is_dropped_and_the_connection_closed(garbage):
    server = await start_stun_server("127.0.0.1", 0, tcp=True)
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(garbage)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
        assert server.stats.dropped == 1 and server.stats.answered == 0
    finally:
        server.close()


def test_a_client_that_gets_no_stun_answer_raises():
    asyncio.run(_test_a_client_that_gets_no_stun_answer_raises())


async def _test_a_client_that_gets_no_stun_answer_raises():
    async def close_at_once(reader, writer):
        await reader.read(20)
        writer.write(b"not stun at all, but long enough to look like a header")
        writer.close()

    listener = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    try:
        with pytest.raises((StunError, OSError)):
            await tcp_binding(listener.sockets[0].getsockname()[:2], ("127.0.0.1", 0), 2.0)
    finally:
        listener.close()



def test_at_port_0_a_udp_port_whose_tcp_twin_is_taken_is_picked_again():
    """The kernel picks the UDP port at random, and another socket may hold its TCP twin: the first
    TCP bind is made to fail as it would then, and the server starts on a second pick."""
    async def scenario():
        loop = asyncio.get_running_loop()
        real, tried = loop.create_server, []

        async def taken_once(factory, host, port, **kwargs):
            tried.append(port)
            if len(tried) == 1:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            return await real(factory, host, port, **kwargs)

        loop.create_server = taken_once
        server = await start_stun_server("127.0.0.1", 0, tcp=True)
        try:
            result = await tcp_binding(server.address, ("127.0.0.1", 0), 3.0)
            return tried, server.address[1], server.tcp.sockets[0].getsockname()[1], result
        finally:
            server.close()

    tried, udp_port, tcp_port, result = asyncio.run(scenario())
    assert len(tried) == 2 and udp_port == tcp_port == tried[1]
    assert result[0] == "127.0.0.1"


def test_a_fixed_port_whose_tcp_twin_is_taken_says_so():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(OSError) as refused:
            asyncio.run(start_stun_server("127.0.0.1", port, tcp=True))
    assert refused.value.errno == errno.EADDRINUSE
