"""The relay server in-process on loopback, with nodes speaking real UDP and TCP to it.

Nodes here are a `RelayLink` (the node's own hello logic) on a plain UDP socket or on a
`ClientChannel` over TCP, with tokens from a `TokenMinter` standing in for the coordination
server. Each test reads as a script: register, forward, misbehave, reload.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import os
import time
from pathlib import Path

import pytest

from meshvpn import keys, wire
from meshvpn.channel import ClientChannel
from meshvpn.config import Address, CoordTrust, RelayConfig, RelayLimits
from meshvpn.control.messages import RelayInfo
from meshvpn.cookie import CookieJar
from meshvpn.dualstack import has_ipv6
from meshvpn.node.relay.link import RelayLink, RelayLinkConfig, SendTcp, SendUdp, Transport
from meshvpn.relay import native as relay_native
from meshvpn.relay import server as relay_server
from meshvpn.relay.server import RelayServer
from meshvpn.relaytoken import TokenMinter
from meshvpn.wire import MessageType

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, params=["native", "python"])
def forwarding(request, monkeypatch):
    """Every script runs with the relay's native thread and with the pure-Python path."""
    if request.param == "native" and not relay_native.available(time.time):
        pytest.skip("the native extension is not built or not in use")
    if request.param == "python":
        monkeypatch.setattr(relay_native, "available", lambda clock: False)
    return request.param

COORD = bytes([1]) * 32
MINTER = TokenMinter(COORD, os.urandom)
DATA = wire.header(MessageType.DATA) + bytes(12) + b"opaque ciphertext" + bytes(16)
KEEPALIVE = wire.header(MessageType.KEEPALIVE) + bytes(28)


def relay_config(tmp_path: Path, limits: RelayLimits = RelayLimits()) -> RelayConfig:
    key_file = tmp_path / "relay.key"
    if not key_file.exists():
        keys.write_private_key(key_file)
    return RelayConfig(
        private_key_file=key_file, state_dir=tmp_path / "state", listen=Address("127.0.0.1", 0),
        coord=CoordTrust(public_key=keys.public_key(COORD)), limits=limits,
    )


@contextlib.asynccontextmanager
async def running(config: RelayConfig):
    server = RelayServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait(data)


class Node:
    """A node's relay side: its RelayLink, and a UDP socket or TCP channel to the relay."""

    def __init__(self, server: RelayServer, config: RelayLinkConfig | None = None, host: str | None = None) -> None:
        self.private = keys.generate_private_key()
        self.public = keys.public_key(self.private)
        info = RelayInfo("r", *server.address, server.identity.public)
        self.link = RelayLink(info, self.private, self.public, os.urandom, time.time() - time.monotonic(), config)
        self.address = server.address if host is None else (host, server.address[1])
        self.inbox = Inbox()
        self.udp: asyncio.DatagramTransport | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.channel: ClientChannel | None = None
        self.udp_sent: list[bytes] = []
        """Every UDP datagram the link sent, as an observer on the path could capture it."""

    async def open_udp(self) -> None:
        self.udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self.inbox, remote_addr=self.address
        )

    async def open_tcp(self) -> None:
        reader, self.writer = await asyncio.open_connection(*self.address)
        self.channel = ClientChannel(self.private, self.link.info.public_key, os.urandom(32), time.time())
        self.writer.write(self.channel.data_to_send())

        async def pump() -> None:
            while data := await reader.read(65536):
                for frame in self.channel.receive_data(data):
                    self.inbox.queue.put_nowait(frame)
                self.writer.write(self.channel.data_to_send())

        self.pump = asyncio.create_task(pump())
        self.link.tcp_up(time.monotonic())

    def send(self, data: bytes) -> None:
        """Over TCP if the node has a channel, else over UDP."""
        if self.channel is not None:
            self.channel.send(data)
            self.writer.write(self.channel.data_to_send())
        else:
            self.udp.sendto(data)

    def flush_link(self) -> None:
        for action in self.link.next_actions():
            if isinstance(action, SendTcp):
                self.send(action.data)
            elif isinstance(action, SendUdp) and self.udp is not None:
                self.udp_sent.append(action.data)
                self.udp.sendto(action.data)

    async def register(self) -> None:
        """Say hello and take the answers (over UDP a cookie first, then the ack) until ready."""
        token, expires = MINTER.mint(self.link.info.public_key, self.public, time.time())
        self.link.set_token(token, expires, time.monotonic())
        self.flush_link()
        via = Transport.TCP if self.channel is not None else Transport.UDP
        while not self.link.ready:
            answer = await asyncio.wait_for(self.inbox.queue.get(), 2)
            assert self.link.receive(answer, via, time.monotonic())
            self.flush_link()
        assert self.link.rtt is not None

    async def receive(self) -> wire.Relayed:
        return wire.decode_relay(await asyncio.wait_for(self.inbox.queue.get(), 2))


async def registered_over_udp(server: RelayServer, count: int) -> list[Node]:
    """`count` nodes, each registered with the relay over its own UDP socket."""
    nodes = [Node(server) for _ in range(count)]
    for node in nodes:
        await node.open_udp()
        await node.register()
    return nodes


def test_udp_nodes_register_and_exchange_envelopes(tmp_path):
    async def scenario():
        async with running(relay_config(tmp_path)) as server:
            alice, bob = await registered_over_udp(server, 2)
            alice.send(wire.encode_relay(bob.public, DATA))
            got = await bob.receive()
            bob.send(wire.encode_relay(alice.public, KEEPALIVE))
            back = await alice.receive()
            server.fold()
            return got, back, server.core.status()

    got, back, status = asyncio.run(scenario())
    assert bytes(got.inner) == DATA and bytes(back.inner) == KEEPALIVE
    assert back.node_key != got.node_key
    assert status["nodes"] == 2 and status["forwarded"] == 2


def test_a_tcp_node_and_a_udp_node_reach_each_other(tmp_path):
    async def scenario():
        async with running(relay_config(tmp_path)) as server:
            alice, bob = Node(server, RelayLinkConfig(udp_attempts=0)), Node(server)
            await alice.open_tcp()
            await alice.register()
            await bob.open_udp()
            await bob.register()
            bob.send(wire.encode_relay(alice.public, DATA))
            to_alice = await alice.receive()
            alice.send(wire.encode_relay(bob.public, DATA))
            to_bob = await bob.receive()
            server.fold()
            status = server.core.status()
            alice.writer.close()
            alice.pump.cancel()
            for _ in range(100):
                if server.core.registered_link(alice.public) is None:
                    break
                await asyncio.sleep(0.01)
            return to_alice, to_bob, status, server.core.registered_link(alice.public)

    to_alice, to_bob, status, after_close = asyncio.run(scenario())
    assert to_alice.node_key != to_bob.node_key and bytes(to_alice.inner) == bytes(to_bob.inner) == DATA
    assert status["nodes_tcp"] == 1
    assert after_close is None


@pytest.mark.needs(not has_ipv6(), "no IPv6 on this host")
def test_on_the_wildcard_the_relay_serves_both_families_on_udp_and_tcp(tmp_path):
    """IPv4 and IPv6 nodes, over UDP and TCP, on one relay listening on 0.0.0.0: every pair forwards."""
    async def scenario():
        config = dataclasses.replace(relay_config(tmp_path), listen=Address("0.0.0.0", 0))
        async with running(config) as server:
            v4_udp, v6_udp = Node(server, host="127.0.0.1"), Node(server, host="::1")
            v6_tcp = Node(server, RelayLinkConfig(udp_attempts=0), host="::1")
            for node in (v4_udp, v6_udp):
                await node.open_udp()
            await v6_tcp.open_tcp()
            got = []
            for node in (v4_udp, v6_udp, v6_tcp):
                await node.register()
            for sender, receiver in itertools.permutations((v4_udp, v6_udp, v6_tcp), 2):
                sender.send(wire.encode_relay(receiver.public, DATA))
                got.append((await receiver.receive()).node_key == sender.public)
            v6_tcp.writer.close()
            v6_tcp.pump.cancel()
            return got

    assert asyncio.run(scenario()) == [True] * 6


def test_a_forged_token_gets_no_answer_and_other_nodes_keep_working(tmp_path):
    async def scenario():
        async with running(relay_config(tmp_path)) as server:
            mallory, alice, bob = Node(server), Node(server), Node(server)
            for node in (mallory, alice, bob):
                await node.open_udp()
            rogue = TokenMinter(bytes([9]) * 32, os.urandom)
            token, expires = rogue.mint(mallory.link.info.public_key, mallory.public, time.time())
            mallory.link.set_token(token, expires, time.monotonic())
            mallory.flush_link()
            mallory.send(b"\x01\x07\x00\x00" + bytes(50))
            await alice.register()
            await bob.register()
            mallory.send(wire.encode_relay(bob.public, DATA))
            alice.send(wire.encode_relay(bob.public, DATA))
            got = await bob.receive()
            server.fold()
            return got, mallory.inbox.queue.empty(), server.core.drops

    got, nothing_for_mallory, drops = asyncio.run(scenario())
    assert bytes(got.inner) == DATA
    assert nothing_for_mallory
    assert drops["token failed authentication"] == 1 and drops["sender not registered"] >= 1


def test_reload_applies_new_limits(tmp_path):
    async def scenario():
        config = relay_config(tmp_path)
        async with running(config) as server:
            alice, bob = await registered_over_udp(server, 2)
            server.reload(relay_config(tmp_path, RelayLimits(packets_per_second=1, burst=3)))
            for _ in range(10):
                alice.send(wire.encode_relay(bob.public, DATA))
            received = 0
            with contextlib.suppress(asyncio.TimeoutError):
                while True:
                    await asyncio.wait_for(bob.inbox.queue.get(), 0.3)
                    received += 1
            server.fold()
            return received, server.core.drops["rate limited"], server.reloader.settings.limits.burst

    received, limited, burst = asyncio.run(scenario())
    assert (received, limited, burst) == (3, 7, 3)


def test_a_tcp_connection_stalled_in_the_handshake_is_dropped_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(relay_server, "HANDSHAKE_TIMEOUT", 0.5)

    async def scenario():
        async with running(relay_config(tmp_path)) as server:
            loop = asyncio.get_running_loop()
            alice = Node(server, RelayLinkConfig(udp_attempts=0))
            await alice.open_tcp()
            await alice.register()
            # Read before the connect: the relay's timer starts when it accepts, and its accept may run
            # before this coroutine resumes after the connect.
            opened = loop.time()
            reader, writer = await asyncio.open_connection(*server.address)
            half = ClientChannel(keys.generate_private_key(), server.identity.public, os.urandom(32), time.time())
            writer.write(half.data_to_send()[:20])
            try:
                await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError:
                pass
            dropped_after = loop.time() - opened
            await asyncio.sleep(0.1)
            streams = len(server.streams)
            alice.pump.cancel()
            return dropped_after, streams

    dropped_after, streams = asyncio.run(scenario())
    # 0.5 s of timeout; up to 3 s more for a loaded 2-core machine to run the timer.
    assert 0.5 <= dropped_after < 3.5
    assert streams == 1, "alice, whose handshake completed before, keeps her connection"


def test_a_tcp_client_that_never_handshakes_does_not_block_others(tmp_path):
    async def scenario():
        async with running(relay_config(tmp_path)) as server:
            _, idle_writer = await asyncio.open_connection(*server.address)
            idle_writer.write(b"\x00\x00\x00\x05hello")
            alice, bob = await registered_over_udp(server, 2)
            alice.send(wire.encode_relay(bob.public, DATA))
            got = await bob.receive()
            await asyncio.sleep(0.1)
            return got, len(server.streams)

    got, streams = asyncio.run(scenario())
    assert bytes(got.inner) == DATA
    assert streams == 0


def test_a_hello_captured_before_a_restart_is_still_a_replay_after_it(tmp_path):
    """Issue 13, finding 8 (the relay's part): the newest hello of each node is kept in state_dir."""

    async def first_life():
        async with running(relay_config(tmp_path)) as server:
            [alice] = await registered_over_udp(server, 1)
            return alice.udp_sent[-1], alice.public

    async def second_life(captured: bytes):
        async with running(relay_config(tmp_path)) as server:
            attacker = Inbox()
            udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: attacker,
                                                                               remote_addr=server.address)
            udp.sendto(captured)
            reply = await asyncio.wait_for(attacker.queue.get(), 2)
            jar = CookieJar(server.identity.public)
            assert jar.consume(reply, {wire.decode_sealed(captured).nonce}, 0.0), "a new address gets a cookie"
            udp.sendto(jar.stamp(captured, 0.0))  # the mac2 is outside the box: anyone may restamp it
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(attacker.queue.get(), 0.5)
                raise AssertionError("the replayed hello was answered")
            udp.close()
            server.fold()
            return dict(server.core.drops), server.core.registered_link(public)

    captured, public = asyncio.run(first_life())
    assert (tmp_path / "state" / relay_server.HELLO_FILE).stat().st_mode & 0o777 == 0o600
    drops, link = asyncio.run(second_life(captured))
    assert drops["replayed hello"] == 1 and link is None
