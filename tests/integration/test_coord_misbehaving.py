"""The coordination server against clients that misbehave: garbage, wrong keys, stalls, no reading, silence, too many connections.

Each test drops one such client and checks the log line the server writes and that it keeps
serving everyone else (`still_served`). The server and the well-behaved clients come from
test_coord_server.py.
"""

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
import time

import pytest

from meshvpn import keys
from meshvpn.channel import ClientChannel
from meshvpn.config import NetworkConfig
from meshvpn.control import messages as m
from meshvpn.node.coordclient import CoordLinkClosed, connect
from meshvpn.control.mapparts import PeerMapAssembler
from meshvpn.coord.store import Network, NodeRecord, SqliteStore
from meshvpn.coord.server import CoordServer, ServerLimits

from test_coord_server import HOME, auth_key, coord_config, join, next_of, register, running, still_served

pytestmark = pytest.mark.timeout(60)


async def raw_connection(server: CoordServer, rcvbuf: int | None = None) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, server.address)
    return sock


async def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Read until the server closes (EOF or reset)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not await asyncio.wait_for(loop.sock_recv(sock, 65536), deadline - time.monotonic()):
                return True
    except ConnectionError:
        return True
    except asyncio.TimeoutError:
        return False
    return False


async def established_channel(server: CoordServer, sock: socket.socket) -> ClientChannel:
    loop = asyncio.get_running_loop()
    channel = ClientChannel(keys.generate_private_key(), server.identity.public, os.urandom(32), time.time())
    await loop.sock_sendall(sock, channel.data_to_send())
    while not channel.established:
        channel.receive_data(await loop.sock_recv(sock, 4096))
    await loop.sock_sendall(sock, channel.data_to_send())
    return channel


@pytest.mark.parametrize(
    "attack, logged",
    [
        ("garbage", "handshake initiation frame, got a length of"),
        ("oversized", "exceeds the 1048576-byte limit"),
        ("forged", "failed authentication (bad MAC)"),
        ("not json", "not JSON"),
    ],
)
def test_a_broken_stream_is_dropped_with_a_log_line_and_others_are_served(tmp_path, server_log, attack, logged):
    async def scenario():
        loop = asyncio.get_running_loop()
        async with running(coord_config(tmp_path)) as server:
            sock = await raw_connection(server)
            if attack == "garbage":
                await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: coord\r\n\r\n")
            else:
                channel = await established_channel(server, sock)
                if attack == "oversized":
                    await loop.sock_sendall(sock, (2 << 20).to_bytes(4, "big") + bytes(64))
                elif attack == "forged":
                    await loop.sock_sendall(sock, (40).to_bytes(4, "big") + os.urandom(40))
                else:
                    channel.send(b"\xff{not json")
                    await loop.sock_sendall(sock, channel.data_to_send())
            closed = await closed_by_server(sock)
            sock.close()
            line = await server_log.wait_for(logged)
            await still_served(server)
            return closed, line

    closed, line = asyncio.run(scenario())
    assert closed
    assert "127.0.0.1" in line


def test_a_client_pinning_the_wrong_server_key_is_refused(tmp_path, server_log):
    async def scenario():
        async with running(coord_config(tmp_path)) as server:
            wrong = keys.public_key(keys.generate_private_key())
            with pytest.raises(CoordLinkClosed) as failed:
                await connect(server.address, wrong, keys.generate_private_key(), timeout=5)
            line = await server_log.wait_for("dropping", "handshake initiation rejected")
            await still_served(server)
            return failed.value, line

    failed, line = asyncio.run(scenario())
    assert "handshake failed" in str(failed)
    assert "127.0.0.1:" in line


def test_a_client_that_never_finishes_the_handshake_is_dropped_at_the_deadline(tmp_path, server_log):
    async def scenario():
        limits = ServerLimits(handshake_timeout=0.3)
        async with running(coord_config(tmp_path), limits) as server:
            sock = await raw_connection(server)
            started = time.monotonic()
            closed = await closed_by_server(sock)
            waited = time.monotonic() - started
            sock.close()
            line = await server_log.wait_for("no channel handshake within 0.3s")
            await still_served(server)
            return closed, waited, line

    closed, waited, line = asyncio.run(scenario())
    assert closed and 0.25 <= waited < 3.0
    assert "127.0.0.1:" in line


def test_a_client_that_never_reads_is_dropped_when_its_buffer_fills(tmp_path, server_log):
    async def scenario():
        loop = asyncio.get_running_loop()
        limits = ServerLimits(max_write_buffer=64 << 10, socket_send_buffer=4096)
        async with running(coord_config(tmp_path), limits) as server:
            sock = await raw_connection(server, rcvbuf=4096)
            channel = await established_channel(server, sock)
            channel.send(m.encode(register("sloth", auth_key(server))))
            ping = m.encode(m.Ping())
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                for _ in range(100):  # bounded: far more pongs than the limits hold
                    for _ in range(500):
                        channel.send(ping)
                    await asyncio.wait_for(loop.sock_sendall(sock, channel.data_to_send()), 2)
                    if any("not reading" in line for line in server_log.lines):
                        break
            sock.close()
            line = await server_log.wait_for("dropping", "not reading")
            await still_served(server)
            return line

    line = asyncio.run(scenario())
    assert "bytes queued" in line and "key " in line


def test_a_large_peer_map_arrives_in_parts_and_its_size_does_not_count_as_not_reading(tmp_path, server_log):
    async def scenario():
        limits = ServerLimits(max_write_buffer=1024, socket_send_buffer=4096)
        async with running(coord_config(tmp_path), limits) as server:
            server.membership.settings = dataclasses.replace(server.membership.settings, peer_map_part_bytes=2000)
            token = auth_key(server)
            for n in range(60):
                client, _, _ = await join(server, f"offline-{n}", token)
                client.close()
                await client.wait_closed()
            client, _, peer_map = await join(server, "newcomer", token)
            client.close()
            return peer_map, server_log.lines

    peer_map, lines = asyncio.run(scenario())
    assert sorted(p.name for p in peer_map.peers) == sorted(f"offline-{n}" for n in range(60))
    assert not any("not reading" in line for line in lines)


def test_a_silent_client_is_closed_after_three_keepalives_and_a_pinging_one_stays(tmp_path, server_log):
    async def scenario():
        async with running(coord_config(tmp_path, keepalive=0.2)) as server:
            token = auth_key(server)
            quiet, quiet_reg, _ = await join(server, "quiet", token)
            chatty, _, _ = await join(server, "chatty", token, keepalive=0.1)
            with pytest.raises(CoordLinkClosed):
                while True:
                    await quiet.recv(timeout=3)
            line = await server_log.wait_for("closing", "silent for")
            gone = await next_of(chatty, m.PeerUpdate)
            return quiet_reg, line, gone, chatty.close_reason

    quiet_reg, line, gone, chatty_closed = asyncio.run(scenario())
    assert (gone.peer.key, gone.peer.online) == (quiet_reg.node_key, False)
    assert "127.0.0.1:" in line
    assert chatty_closed is None



def test_connections_per_source_address_are_capped(tmp_path, server_log):
    async def scenario():
        async with running(coord_config(tmp_path), ServerLimits(max_connections_per_host=2)) as server:
            token = auth_key(server)
            first, _, _ = await join(server, "one", token)
            second, _, _ = await join(server, "two", token)
            with pytest.raises(CoordLinkClosed):
                await connect(server.address, server.identity.public, keys.generate_private_key(), timeout=5)
            line = await server_log.wait_for("refusing", "more than 2 connections")
            first.close()
            await first.wait_closed()
            await asyncio.sleep(0.1)
            third, _, _ = await join(server, "three", token)
            return line, third.close_reason

    line, third_closed = asyncio.run(scenario())
    assert "from 127.0.0.1" in line
    assert third_closed is None


def test_a_client_that_does_not_read_its_peer_map_holds_the_budget_and_later_maps_wait_for_room(tmp_path):
    """Peer maps in flight are bounded: the next node is registered at once, but its map waits
    until the first map's bytes drained (here: until that connection ended)."""
    config = coord_config(tmp_path)
    store = SqliteStore(str(config.database))
    with store.transaction():
        store.put_network(Network(HOME.name, str(HOME.cidr)))
        store.put_network(Network("wide", "100.80.0.0/20"))
        for n in range(2000):  # offline peers fill the map: about 500 KB, far over the buffers
            store.put_node(NodeRecord(os.urandom(32), "wide", f"old-{n}", str(ipaddress.ip_address(0x64500002 + n)),
                                      f"old-{n}", 0.0, local_endpoints=(m.Endpoint("10.0.0.7", 41641),)))
    store.close()
    wide = NetworkConfig(name="wide", cidr=ipaddress.ip_network("100.80.0.0/20"))

    async def scenario():
        limits = ServerLimits(peer_map_budget=1, socket_send_buffer=4096)
        async with running(dataclasses.replace(config, networks=(HOME, wide)), limits) as server:
            token = auth_key(server, "wide")
            sock = await raw_connection(server, rcvbuf=4096)
            channel = await established_channel(server, sock)
            channel.send(m.encode(register("sloth", token)))
            await asyncio.get_running_loop().sock_sendall(sock, channel.data_to_send())
            for _ in range(100):  # bounded: until the sloth's map went out and stuck
                if server.maps.in_flight:
                    break
                await asyncio.sleep(0.05)
            client = await connect(server.address, server.identity.public, keys.generate_private_key())
            client.send(register("patient", token))
            registered = await next_of(client, m.Registered)
            client.send(m.Ping())  # a node waiting for its map still hears the coord
            pong = await client.recv(5.0)
            waiting = asyncio.ensure_future(whole_map(client))
            await asyncio.sleep(1.0)
            held = waiting.done(), len(server.maps), server.maps.in_flight
            sock.close()
            peers = await waiting
            client.close()
            return registered, held, pong, peers, server.maps.in_flight

    registered, held, pong, peers, in_flight = asyncio.run(scenario())
    assert isinstance(registered, m.Registered) and isinstance(pong, m.Pong)
    assert held[0] is False and held[1] == 1 and held[2] > 100_000  # the sloth's map fills the budget
    assert len(peers) == 2001 and in_flight == 0


async def whole_map(client) -> tuple[m.PeerInfo, ...]:
    assembler = PeerMapAssembler()
    while (peers := assembler.add(await next_of(client, m.PeerMap, 20.0))) is None:
        pass
    return peers
