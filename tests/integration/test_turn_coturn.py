"""Interop: our TURN client (meshvpn.turn) against coturn on loopback, with REST API credentials.

coturn runs in the foreground with no configuration file (`-n`), the TURN REST API secret
(`--use-auth-secret --static-auth-secret`), realm `meshvpn`, listening and relaying on
127.0.0.1 only, loopback peers allowed, no TLS, no DTLS, no CLI; nonces go stale after
`STALE_NONCE` seconds so the 438 path runs. It is stopped by its PID, also on failure.

Each client here is a `TurnClient` on its own UDP socket, driven by a small select loop: the
loop feeds `time.monotonic()` plus an offset, so a test can jump a client's clock to its
refresh deadline and the real server sees a real Refresh.
"""

import os
import select
import socket
import time

import pytest

from meshvpn.stun import Attr, StunClass, StunMethod, decode
from meshvpn.turn import AllocationReady, ChannelBound, DataReceived, TurnClient
from meshvpn.turn_codec import decode_channel_data, is_channel_data
from meshvpn.coord.turncreds import mint

pytestmark = pytest.mark.timeout(60)

SECRET = "coturn-shared-secret"
STALE_NONCE = 3


@pytest.fixture
def coturn(start_coturn, free_udp_port):
    """A running coturn with the REST API secret; its address."""
    port = free_udp_port("127.0.0.1")
    start_coturn(
        "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", "meshvpn",
        "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", str(port),
        "--allow-loopback-peers", f"--stale-nonce={STALE_NONCE}",
    )  # fmt: skip
    return ("127.0.0.1", port)


class Endpoint:
    """One TURN client on its own socket, with what it received and the methods it sent."""

    def __init__(self, server, name: str, secret: str = SECRET) -> None:
        creds = mint(secret.encode(), name, time.time())
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.offset = 0.0
        self.client = TurnClient(creds.username, creds.password, os.urandom)
        self.events: list = []
        self.channel_data: list[tuple[tuple, bytes]] = []
        self.sent_methods: list[int] = []
        self.errors: list[int] = []

    def now(self) -> float:
        return time.monotonic() + self.offset

    def flush(self) -> None:
        for data in self.client.datagrams_to_send():
            if not is_channel_data(data):
                self.sent_methods.append(decode(data).method)
            self.sock.sendto(data, self.server)
        while (event := self.client.next_event()) is not None:
            self.events.append(event)

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if is_channel_data(data):
            channel, payload = decode_channel_data(data)
            self.channel_data.append((self.client.peer_of_channel.get(channel), payload))
            return
        msg = decode(data)
        if msg.cls == StunClass.ERROR:
            self.errors.append(msg.attributes[Attr.ERROR_CODE].code)
        self.client.receive(data, self.now())

    def tick(self) -> None:
        deadline = self.client.get_timer()
        if deadline is not None and self.now() >= deadline:
            self.client.handle_timer(self.now())

    def close(self) -> None:
        self.sock.close()


def run(endpoints: list[Endpoint], done, timeout: float = 10.0) -> None:
    """Move datagrams and timers until `done()`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        for ep in endpoints:
            ep.tick()
            ep.flush()
        if done():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out; events {[ep.events for ep in endpoints]}, errors {[ep.errors for ep in endpoints]}")
        readable, _, _ = select.select([ep.sock for ep in endpoints], [], [], 0.05)
        for ep in endpoints:
            if ep.sock in readable:
                ep.readable()


@pytest.fixture
def pair(coturn):
    a, b = Endpoint(coturn, "node-a"), Endpoint(coturn, "node-b")
    yield a, b
    a.close()
    b.close()


def allocate(*endpoints: Endpoint) -> None:
    for ep in endpoints:
        ep.client.allocate(ep.now())
    run(list(endpoints), lambda: all(ep.client.ready for ep in endpoints))


def bind_channels(a: Endpoint, b: Endpoint) -> None:
    """Allocate on both, make each the other's peer and wait until both channels are bound."""
    allocate(a, b)
    a.client.set_peers([b.client.relayed], a.now())
    b.client.set_peers([a.client.relayed], b.now())
    run([a, b], lambda: a.client.channel(b.client.relayed) and b.client.channel(a.client.relayed))


def test_allocate_after_401_reports_a_loopback_relayed_address(pair):
    a, _ = pair
    allocate(a)
    assert a.errors == [401]
    ready = [e for e in a.events if isinstance(e, AllocationReady)]
    assert ready and ready[0].relayed[0] == "127.0.0.1" and ready[0].relayed[1] != a.server[1]
    assert ready[0].mapped == a.sock.getsockname()
    assert a.client.expires_at - a.now() > 500


def test_wrong_secret_is_refused(coturn):
    bad = Endpoint(coturn, "intruder", secret="not-the-secret")
    try:
        bad.client.allocate(bad.now())
        run([bad], lambda: bad.client.failure is not None)
        assert bad.errors == [401, 401] and not bad.client.ready
    finally:
        bad.close()


def test_two_clients_exchange_data_through_coturn_byte_exact_over_channels(pair):
    a, b = pair
    bind_channels(a, b)
    assert any(isinstance(e, ChannelBound) and 0x4000 <= e.channel <= 0x7FFF for e in a.events)
    assert StunMethod.CREATE_PERMISSION in a.sent_methods and StunMethod.CHANNEL_BIND in a.sent_methods
    payloads = [bytes([n]) * n + b"\x00\xff" for n in range(1, 40)] + [bytes(range(256)) * 5]
    for payload in payloads:
        a.sock.sendto(a.client.send(b.client.relayed, payload), a.server)
    run([a, b], lambda: len(b.channel_data) == len(payloads))
    assert b.channel_data == [(a.client.relayed, p) for p in payloads]
    b.sock.sendto(b.client.send(a.client.relayed, b"reply"), b.server)
    run([a, b], lambda: a.channel_data)
    assert a.channel_data == [(b.client.relayed, b"reply")]


def test_without_channels_send_and_data_indications_carry_the_data(pair):
    a, b = pair
    allocate(a, b)
    elsewhere = ("127.0.0.1", 9)  # permits the relay IP (permissions ignore ports), no channel to the peer
    a.client.set_peers([elsewhere], a.now())
    b.client.set_peers([elsewhere], b.now())
    run([a, b], lambda: a.client.channel(elsewhere) and b.client.channel(elsewhere))
    datagram = a.client.send(b.client.relayed, b"via indications")
    assert decode(datagram).method == StunMethod.SEND
    a.sock.sendto(datagram, a.server)
    run([a, b], lambda: any(isinstance(e, DataReceived) for e in b.events))
    assert [e for e in b.events if isinstance(e, DataReceived)] == [DataReceived(a.client.relayed, b"via indications")]
    assert b.channel_data == []


def test_refresh_and_stale_nonce_keep_the_allocation_and_channels(pair):
    a, b = pair
    bind_channels(a, b)
    time.sleep(STALE_NONCE + 1)
    a.offset = a.client.expires_at - 60 - time.monotonic()
    run([a], lambda: a.client.expires_at - a.now() > 500)
    assert a.sent_methods.count(StunMethod.REFRESH) == 2 and a.errors[-1] == 438, "the nonce was not stale"
    assert a.client.ready
    a.offset = 0.0
    a.sock.sendto(a.client.send(b.client.relayed, b"after refresh"), a.server)
    run([a, b], lambda: b.channel_data)
    assert b.channel_data == [(a.client.relayed, b"after refresh")]


def test_fresh_credentials_mid_allocation_leave_its_requests_signed_with_its_username(pair):
    """coturn refuses a request on an allocation signed with another username (441, RFC 8656 §5):
    the fresh credentials the coord sends every 5 minutes are for the next Allocate."""
    a, b = pair
    allocate(a, b)
    fresh = mint(SECRET.encode(), "node-a", time.time() + 5)
    a.client.set_credentials(fresh.username, fresh.password)
    a.client.set_peers([b.client.relayed], a.now())
    run([a], lambda: a.client.channel(b.client.relayed))
    assert a.errors == [401], "no 441"
