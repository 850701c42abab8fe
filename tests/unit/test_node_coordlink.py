"""Coord link: registers first, answers pings, reconnects with backoff when the coord drops it,
fails over between the coord's addresses and declares a silent coord dead within one keepalive
interval and the answer timeout."""

import asyncio
import contextlib
import os
import socket

import pytest

from meshvpn import tlsenvelope
from meshvpn.channel import ServerChannel
from meshvpn.control import messages as m
from meshvpn.dualstack import has_ipv6
from meshvpn.config import Address
from meshvpn.node import coorddial, coordlink, tcpresume
from meshvpn.node.coordlink import CoordLink
from meshvpn.lab.mesh import self_signed_certificate
from meshvpn.noise import StaticIdentity

SERVER = StaticIdentity.from_private(bytes(range(1, 33)))
NODE = StaticIdentity.from_private(bytes(range(40, 72)))
REGISTER = m.Register(hostname="n1", version="1", local_endpoints=())
REGISTERED = m.Registered(node_key=NODE.public, name="n1", address="100.64.0.1",
                          network=m.NetworkInfo(name="lab", cidr="100.64.0.0/24"))


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
    monkeypatch.setattr(coorddial, "BACKOFF_INITIAL", 0.05)

    async def run():
        connections, seen, states, messages = [], [], [], []
        server = await fake_coord(connections, seen)
        port = server.sockets[0].getsockname()[1]
        link = CoordLink([Address("127.0.0.1", port)], SERVER.public, NODE, lambda: REGISTER, messages.append,
                         states.append)
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


HANG_UP = object()


@contextlib.asynccontextmanager
async def scripted_coords(*answers, tls=None, host="127.0.0.1"):
    """One coord per `answer(msg)` (the messages to send back, HANG_UP last to close); yields their addresses."""

    def serve(answer):
        async def on_connection(reader, writer):
            channel = ServerChannel(SERVER, lambda key: key == NODE.public, os.urandom(32))
            while data := await reader.read(65536):
                for payload in channel.receive_data(data):
                    for reply in answer(m.decode(payload)):
                        if reply is HANG_UP:
                            writer.write(channel.data_to_send())
                            writer.close()
                            return
                        channel.send(m.encode(reply))
                writer.write(channel.data_to_send())
        return on_connection

    servers = [await asyncio.start_server(serve(answer), host, 0, ssl=tls) for answer in answers]
    try:
        yield [Address(host, server.sockets[0].getsockname()[1]) for server in servers]
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def running_link(addresses, states=None, messages=None, **options):
    link = CoordLink(addresses, SERVER.public, NODE, lambda: REGISTER,
                     (messages if messages is not None else []).append,
                     (states if states is not None else []).append, **options)
    link.start()
    try:
        yield link
    finally:
        await link.close()


def registers(msg):
    return [REGISTERED] if isinstance(msg, m.Register) else []


async def until(check, seconds: float = 5.0) -> None:
    """Poll `check` until it holds, for `seconds` of the loop's time (not a count of polls, which a
    loaded machine stretches past the test's timeout)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"timed out after {seconds:g} s")
        await asyncio.sleep(0.01)


class TimedStates(list):
    """The link's states, each with the loop's time it was reported at: a duration measured from
    the link's own events, not from a test's polls, which a loaded machine delays."""

    def append(self, state: bool) -> None:
        super().append((state, asyncio.get_running_loop().time()))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(20)
def test_fails_over_to_the_next_address_at_once_and_sticks_to_it():
    async def run():
        states = []
        async with scripted_coords(registers) as (live,):
            started = asyncio.get_running_loop().time()
            async with running_link([Address("127.0.0.1", closed_port()), live], states) as link:
                await until(lambda: link.connected)
                took = asyncio.get_running_loop().time() - started
                return live, states[:], took, link.dialer.preferred, link.endpoint

    live, states, took, preferred, endpoint = asyncio.run(run())
    assert took < 1.0, "a refused address passes to the next without a backoff"
    assert tuple(preferred) == tuple(endpoint) == tuple(live)
    assert states == [True], "no 'down' for an address passed over within the first round"


@pytest.mark.timeout(20)
def test_a_silent_coord_is_dead_after_one_keepalive_and_the_answer_timeout(monkeypatch):
    monkeypatch.setattr(coorddial, "ANSWER_TIMEOUT", 0.3)
    monkeypatch.setattr(coorddial, "BACKOFF_INITIAL", 0.05)
    registrations = []

    def silent_after_register(msg):
        registrations.append(msg)
        return registers(msg)  # pings go unanswered

    async def run():
        states = TimedStates()
        async with scripted_coords(silent_after_register) as addresses:
            async with running_link(addresses, states, keepalive=0.2) as link:
                await until(lambda: link.connected)
                await until(lambda: not link.connected)
                await until(lambda: sum(isinstance(msg, m.Register) for msg in registrations) == 2)
        (up, registered), (down, dead) = states[:2]
        assert (up, down) == (True, False)
        return dead - registered

    silent = asyncio.run(run())
    assert 0.45 <= silent < 1.2, f"dead after {silent:.2f}s of silence; the limit is 0.2 + 0.3"


@pytest.mark.timeout(20)
def test_a_refusal_backs_off_on_its_own_ladder(monkeypatch):
    monkeypatch.setattr(coorddial, "BACKOFF_INITIAL", 0.02)
    tries, messages = [], []

    def refuse(msg):
        tries.append(msg)
        return [m.Error("auth_key_invalid", "no such key"), HANG_UP]

    async def run():
        async with scripted_coords(refuse, registers) as addresses:
            async with running_link(addresses, messages=messages) as link:
                await until(lambda: link.dialer.refusals >= 3)
                return link.connected

    connected = asyncio.run(run())
    assert not connected, "the coord answered: the node waits and asks it again, not another instance"
    assert len(tries) >= 3 and all(isinstance(msg, m.Error) for msg in messages)


@pytest.mark.timeout(20)
def test_a_coord_that_never_finishes_the_handshake_is_passed_over_then_waited_for_longer(monkeypatch):
    # Long enough for the live coord's handshake on a loaded 2-core machine (within 0.2 s, a
    # live coord slowed by the machine's other work looks as mute as the mute one), short
    # enough that the mute one is passed over quickly.
    monkeypatch.setattr(coordlink, "CONNECT_TIMEOUT", 1.0)
    monkeypatch.setattr(coorddial, "BACKOFF_INITIAL", 0.02)

    async def mute(reader, writer):
        await reader.read()  # takes the connection, never answers the handshake

    async def run():
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        silent = Address("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            async with running_link([silent]) as link:
                await until(lambda: link.dialer.refusals >= 2, seconds=10)
                assert link.dialer.failures == 0, "not the short ladder of a coord that is away"
            async with scripted_coords(registers) as (live,):
                async with running_link([silent, live]) as link:
                    await until(lambda: link.connected)
                    return link.endpoint, live
        finally:
            server.close()

    endpoint, live = asyncio.run(run())
    assert tuple(endpoint) == tuple(live), "the next address is tried at once"


def test_a_name_stands_for_all_its_addresses_and_a_literal_for_itself():
    async def run():
        return (await coordlink.resolve(Address("203.0.113.10", 7400)),
                await coordlink.resolve(Address("localhost", 7400), socket.AF_INET))

    literal, name = asyncio.run(run())
    assert literal == [("203.0.113.10", 7400)]
    assert ("127.0.0.1", 7400) in name and len(name) == len(set(name))


@pytest.mark.timeout(20)
def test_reconnect_drops_the_connection_and_registers_again_at_once():
    registrations = []

    def counting(msg):
        registrations.append(msg)
        return registers(msg)

    async def run():
        states = []
        async with scripted_coords(counting) as (coord,):
            async with running_link([coord], states) as link:
                await until(lambda: link.connected)
                first = link.local_address
                link.dialer.failures = 3  # as after failed rounds: the reconnect does not wait them out
                started = asyncio.get_running_loop().time()
                link.reconnect()
                await until(lambda: len(registrations) == 2 and link.connected)
                return first, states[:], asyncio.get_running_loop().time() - started, link.failures

    first, states, took, failures = asyncio.run(run())
    assert first == "127.0.0.1"
    assert states == [True, False, True] and took < 1.0 and failures == 0


@pytest.mark.timeout(20)
def test_when_plain_tcp_reaches_no_coord_the_tls_port_of_the_same_hosts_is_tried(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "coord")

    async def run():
        async with scripted_coords(registers, tls=tlsenvelope.server_context(cert, key, "tls")) as (tls,):
            plain = Address("127.0.0.1", closed_port())
            async with running_link([plain], tls_port=tls.port) as link:
                await until(lambda: link.connected)
                return link.endpoint, tls.port, link._client.transport.get_extra_info("ssl_object") is not None

    endpoint, tls_port, over_tls = asyncio.run(run())
    assert tuple(endpoint) == ("127.0.0.1", tls_port) and over_tls


class Names:
    """getaddrinfo at the link's edge: each name's addresses (with their own ports, so that one
    test can listen on both families), IPv6 records first as a resolver orders them."""

    def __init__(self, **records):
        self.records = {name.replace("_", "."): addresses for name, addresses in records.items()}

    async def getaddrinfo(self, host, port, *, family=0, type=0):
        found = [(socket.AF_INET6 if ":" in a.host else socket.AF_INET, type, 0, "", tuple(a))
                 for a in self.records.get(host, ())]
        return [info for info in found if family in (socket.AF_UNSPEC, info[0])]


NEEDS_IPV6 = pytest.mark.needs(not has_ipv6(), "no IPv6 on this host")


@contextlib.contextmanager
def blackhole():
    """An IPv6 address whose connections hang, as behind a route that drops every packet: a
    listener whose one-place accept queue is full, so the kernel drops every further SYN."""
    listener = socket.socket(socket.AF_INET6)
    listener.bind(("::1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname()[:2])
    try:
        yield Address("::1", listener.getsockname()[1])
    finally:
        filler.close()
        listener.close()


@NEEDS_IPV6
@pytest.mark.timeout(20)
def test_a_name_with_only_aaaa_records_is_a_coord_over_ipv6():
    async def run():
        async with scripted_coords(registers, host="::1") as (coord,):
            zone = Names(coord_test=[coord])
            async with running_link([Address("coord.test", 7400)], getaddrinfo=zone.getaddrinfo) as link:
                await until(lambda: link.connected)
                return link.endpoint, coord

    endpoint, coord = asyncio.run(run())
    assert tuple(endpoint) == tuple(coord) and endpoint.host == "::1"


@NEEDS_IPV6
@pytest.mark.timeout(20)
def test_a_blackholed_ipv6_address_costs_the_stagger_not_a_connect_timeout():
    """RFC 8305: IPv6 is tried first; its attempt hangs, IPv4 starts 250 ms later and registers."""

    async def run():
        states = TimedStates()
        with blackhole() as hole:
            async with scripted_coords(registers) as (coord,):
                zone = Names(coord_test=[hole, coord])
                started = asyncio.get_running_loop().time()
                async with running_link([Address("coord.test", 7400)], states, getaddrinfo=zone.getaddrinfo) as link:
                    await until(lambda: link.connected)
                    return link.endpoint, coord, states[0][1] - started

    endpoint, coord, took = asyncio.run(run())
    assert tuple(endpoint) == tuple(coord)
    assert 0.25 <= took < 1.0, f"registered after {took:.2f} s"


@NEEDS_IPV6
@pytest.mark.timeout(20)
def test_the_first_handshake_wins_and_the_slower_connection_is_closed():
    closed = []

    async def mute(reader, writer):
        await reader.read()  # takes the connection, never answers the handshake, sees it closed
        closed.append(asyncio.get_running_loop().time())

    async def run():
        server = await asyncio.start_server(mute, "::1", 0)
        slow = Address("::1", server.sockets[0].getsockname()[1])
        try:
            async with scripted_coords(registers) as (coord,):
                async with running_link([coord, slow]) as link:
                    await until(lambda: link.connected)
                    won = asyncio.get_running_loop().time()
                    await until(lambda: closed, seconds=2)
                    return link.endpoint, coord, closed[0] - won
        finally:
            server.close()

    endpoint, coord, closed_after = asyncio.run(run())
    assert tuple(endpoint) == tuple(coord), "IPv6 went first, but IPv4's handshake finished first"
    assert closed_after < 0.5, "the loser is closed when the winner registers, not left to time out"


def answers_pings(msg):
    return [REGISTERED] if isinstance(msg, m.Register) else [m.Pong()] if isinstance(msg, m.Ping) else []


@pytest.mark.timeout(20)
def test_the_network_back_under_a_connection_that_carries_costs_one_ping():
    """Nothing waits in our TCP queue, so the check pings, and the answer keeps the connection."""
    heard = []

    def coord(msg):
        heard.append(msg.TYPE)
        return answers_pings(msg)

    async def run():
        async with scripted_coords(coord) as addresses:
            async with running_link(addresses) as link:
                await until(lambda: link.connected)
                first = link.local_endpoint
                assert link.network_back() is False
                await until(lambda: heard.count("ping") == 1)
                await until(lambda: link.resume.get_timer() is None)
                await asyncio.sleep(tcpresume.MIN_WAIT + 0.1)
                return first, link.local_endpoint, link.connected

    first, now, connected = asyncio.run(run())
    assert connected and now == first, "the same connection"
    assert heard == ["register", "ping"]


@pytest.mark.timeout(20)
def test_a_coord_that_does_not_answer_the_check_within_its_wait_is_dialled_again():
    registrations = []

    def deaf(msg):
        registrations.append(msg.TYPE)
        return registers(msg)  # pings go unanswered

    async def run():
        states = TimedStates()
        async with scripted_coords(deaf) as addresses:
            async with running_link(addresses, states) as link:
                await until(lambda: link.connected)
                back = asyncio.get_running_loop().time()
                link.network_back()
                await until(lambda: registrations.count("register") == 2 and link.connected)
        return [(up, at - back) for up, at in states[1:3]]

    after = asyncio.run(run())
    assert [up for up, _ in after] == [False, True]
    assert tcpresume.MIN_WAIT <= after[0][1] < 3.0, f"dropped {after[0][1]:.2f} s after the network came back"


@pytest.mark.timeout(20)
def test_a_dropped_tls_connection_ends_at_once_not_after_the_coords_close_notify(tmp_path):
    """The link drops a connection it gives up (a reconnect after the network came back, say) with
    its socket: a TLS close waits up to 30 s for the coord's close_notify, all the while holding the
    punch port's connection to that address, and a connect from the same port to it would fail
    (EADDRNOTAVAIL) until then. This coord reads nothing after the registration."""
    cert, key = self_signed_certificate(tmp_path, "coord")

    async def on_connection(reader, writer):
        channel = ServerChannel(SERVER, lambda key: key == NODE.public, os.urandom(32))
        while data := await reader.read(65536):
            registered = [p for p in channel.receive_data(data) if isinstance(m.decode(p), m.Register)]
            for _ in registered:
                channel.send(m.encode(REGISTERED))
            writer.write(channel.data_to_send())
            if registered:
                writer.transport.pause_reading()  # no close_notify is read, so none is answered
                await asyncio.sleep(10.0)

    async def run():
        server = await asyncio.start_server(on_connection, "127.0.0.1", 0,
                                            ssl=tlsenvelope.server_context(cert, key, "tls"))
        try:
            plain = Address("127.0.0.1", closed_port())
            async with running_link([plain], tls_port=server.sockets[0].getsockname()[1]) as link:
                await until(lambda: link.connected)
                old = link._client
                link.reconnect()
                await until(lambda: old.close_reason is not None)
                started = asyncio.get_running_loop().time()
                await asyncio.wait_for(old.wait_closed(), 5.0)
                return asyncio.get_running_loop().time() - started
        finally:
            server.close()

    assert asyncio.run(run()) < 1.0
