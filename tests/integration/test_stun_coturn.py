"""Interop: our STUN client against coturn (Debian's `coturn` package) on loopback.

coturn runs in the foreground as a STUN-only server with no configuration file (`-n`), its
log, pid file and database in the test's temporary directory, listening on 127.0.0.1 and
127.0.0.2 so that it enables RFC 5780 (it needs two addresses for that). It is stopped by the
PID we started it with, also when a test fails.
"""

import asyncio
import socket
import subprocess
import time

import pytest

from meshvpn.stun import ChangeRequest, NatBehaviour, classify_filtering, classify_mapping
from meshvpn.stunio import StunClient, stun_binding

pytestmark = pytest.mark.timeout(60)

ALT_HOST = "127.0.0.2"


@pytest.fixture
def coturn(start_coturn, free_udp_port, tmp_path):
    """A running coturn; its primary and alternate (RFC 5780) addresses."""
    port = free_udp_port("127.0.0.1", ALT_HOST, span=2)
    proc = start_coturn(
        "--stun-only", "--listening-ip", "127.0.0.1", "--listening-ip", ALT_HOST,
        "--listening-port", str(port), "--alt-listening-port", str(port + 1),
    )  # fmt: skip
    primary = ("127.0.0.1", port)
    wait_until_answering(proc, primary, tmp_path)
    return primary, (ALT_HOST, port + 1)


def wait_until_answering(proc: subprocess.Popen, server: tuple[str, int], tmp_path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = tmp_path / "turnserver.log"
            output = log.read_text() if log.exists() else ""
            pytest.fail(f"turnserver exited with {proc.returncode}: {output}")
        try:
            asyncio.run(stun_binding(server, timeout=0.3))
            return
        except TimeoutError:
            continue
    pytest.fail("turnserver did not answer STUN within 15 s")


def query(server, change=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    return port, asyncio.run(stun_binding(server, sock=sock, change=change, timeout=3.0))


def test_coturn_reports_our_loopback_address_and_port(coturn):
    primary, alternate = coturn
    port, result = query(primary)
    assert result.mapped == ("127.0.0.1", port)
    assert result.response_origin == primary
    assert result.other_address == alternate


@pytest.mark.parametrize(
    "change, expected",
    [
        (ChangeRequest(port=True), lambda p, a: (p[0], a[1])),
        (ChangeRequest(ip=True), lambda p, a: (a[0], p[1])),
        (ChangeRequest(ip=True, port=True), lambda p, a: a),
    ],
)
def test_coturn_honours_our_change_request(coturn, change, expected):
    primary, alternate = coturn
    port, result = query(primary, change)
    assert result.mapped == ("127.0.0.1", port)
    assert result.response_origin == expected(primary, alternate)


def test_rfc5780_discovery_against_coturn_finds_no_nat_on_loopback(coturn):
    """The netcheck sequence end to end: three mapping queries, two filtering queries."""
    primary, alternate = coturn
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    local = sock.getsockname()

    async def answered(client, change):
        try:
            await client.query(primary, change=change)
        except TimeoutError:
            return False
        return True

    async def discover():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(ClientSocket, sock=sock)
        try:
            client = protocol.client
            mapped = [
                (await client.query(server)).mapped
                for server in (primary, (alternate[0], primary[1]), alternate)
            ]
            filtering = classify_filtering(
                await answered(client, ChangeRequest(ip=True, port=True)),
                await answered(client, ChangeRequest(port=True)),
            )
        finally:
            transport.close()
        return mapped, filtering

    mapped, filtering = asyncio.run(discover())
    assert mapped == [local] * 3
    assert classify_mapping(local, *mapped) == NatBehaviour.ENDPOINT_INDEPENDENT
    assert filtering == NatBehaviour.ENDPOINT_INDEPENDENT


class ClientSocket(asyncio.DatagramProtocol):
    """A socket of the test's own whose STUN datagrams go to a StunClient."""

    def connection_made(self, transport):
        self.client = StunClient(transport, rto=0.1, max_retransmits=2)

    def datagram_received(self, data, addr):
        self.client.datagram_received(data, addr)
