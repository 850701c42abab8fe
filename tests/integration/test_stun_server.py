"""meshvpn's STUN server (meshvpn.stunio) on loopback, queried by our client and by others'.

The alternate socket listens on 127.0.0.2, which Linux routes to the loopback device like
127.0.0.1, so CHANGE-REQUEST can change both IP and port without touching any interface.
"""

import asyncio
import re
import socket

import pytest

from meshvpn.stun import BindingTransaction, ChangeRequest, StunError, is_stun
from meshvpn.stunio import PER_SOURCE_BURST, StunClient, start_stun_server, stun_binding

pytestmark = pytest.mark.timeout(30)

ALT_HOST = "127.0.0.2"


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


async def run_tool(*argv: str, timeout: float = 10.0) -> str:
    """Run a program we started, kill it by its PID if it hangs, return its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


def test_our_client_learns_its_address_from_our_server():
    async def scenario():
        server = await start_stun_server("127.0.0.1", 0)
        try:
            sock = bound_socket()
            port = sock.getsockname()[1]
            result = await stun_binding(server.address, sock=sock, timeout=2.0)
        finally:
            server.close()
        return server, port, result

    server, port, result = asyncio.run(scenario())
    assert result.mapped == ("127.0.0.1", port)
    assert result.response_origin == server.address
    assert result.other_address is None
    assert result.rtt is not None and 0 <= result.rtt < 2.0
    assert (server.stats.received, server.stats.answered, server.stats.dropped) == (1, 1, 0)


@pytest.mark.parametrize(
    "alt_host, alt_port_offset, change",
    [
        ("127.0.0.1", 1, ChangeRequest(port=True)),
        (ALT_HOST, 0, ChangeRequest(ip=True)),
        (ALT_HOST, 1, ChangeRequest(ip=True, port=True)),
    ],
)
def test_change_request_is_answered_from_the_alternate(alt_host, alt_port_offset, change, free_udp_port):
    port = free_udp_port("127.0.0.1", ALT_HOST, span=2)
    primary, alternate = ("127.0.0.1", port), (alt_host, port + alt_port_offset)

    async def scenario():
        server = await start_stun_server(*primary, alt=alternate)
        try:
            plain = await stun_binding(primary, local=("127.0.0.1", 0), timeout=2.0)
            changed = await stun_binding(primary, local=("127.0.0.1", 0), change=change, timeout=2.0)
        finally:
            server.close()
        return plain, changed

    plain, changed = asyncio.run(scenario())
    assert plain.response_origin == primary
    assert changed.response_origin == alternate
    assert plain.other_address == changed.other_address == alternate


def test_change_request_to_an_address_without_a_socket_gets_420(free_udp_port):
    port = free_udp_port("127.0.0.1", ALT_HOST, span=2)

    async def scenario():
        server = await start_stun_server("127.0.0.1", port, alt=(ALT_HOST, port + 1))
        try:
            await stun_binding(("127.0.0.1", port), change=ChangeRequest(port=True), timeout=2.0)
        finally:
            server.close()

    with pytest.raises(StunError, match="420"):
        asyncio.run(scenario())


def test_change_request_without_alternate_gets_420():
    async def scenario():
        server = await start_stun_server("127.0.0.1", 0)
        try:
            await stun_binding(server.address, change=ChangeRequest(port=True), timeout=2.0)
        finally:
            server.close()

    with pytest.raises(StunError, match="420"):
        asyncio.run(scenario())


def test_shared_socket_carries_stun_next_to_other_traffic():
    """The node daemon's pattern: one socket, STUN datagrams go to a StunClient, the rest stay."""

    class NodeSocket(asyncio.DatagramProtocol):
        def __init__(self):
            self.other: list[bytes] = []
            self.stun: StunClient | None = None

        def connection_made(self, transport):
            self.stun = StunClient(transport, rto=0.05)

        def datagram_received(self, data, addr):
            if not (is_stun(data) and self.stun.datagram_received(data, addr)):
                self.other.append(data)

    async def scenario():
        loop = asyncio.get_running_loop()
        server_a = await start_stun_server("127.0.0.1", 0)
        server_b = await start_stun_server("127.0.0.1", 0)
        transport, node = await loop.create_datagram_endpoint(NodeSocket, local_addr=("127.0.0.1", 0))
        peer = bound_socket()
        try:
            port = transport.get_extra_info("sockname")[1]
            peer.sendto(bytes([1, 3, 0, 0]) + bytes(28), ("127.0.0.1", port))
            results = await asyncio.wait_for(
                asyncio.gather(node.stun.query(server_a.address), node.stun.query(server_b.address)), 5
            )
            await asyncio.sleep(0.05)
            return port, results, node.other
        finally:
            transport.close()
            peer.close()
            server_a.close()
            server_b.close()

    port, results, other = asyncio.run(scenario())
    assert [r.mapped for r in results] == [("127.0.0.1", port)] * 2
    assert other == [bytes([1, 3, 0, 0]) + bytes(28)]


def test_silent_server_times_out_after_retransmitting():
    silent = bound_socket()

    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        client = StunClient(transport, rto=0.02, max_retransmits=2)
        try:
            await client.query(silent.getsockname())
        finally:
            transport.close()

    try:
        with pytest.raises(TimeoutError, match="no response to 3 requests"):
            asyncio.run(scenario())
        silent.settimeout(1.0)
        received = [silent.recvfrom(2048)[0] for _ in range(3)]
    finally:
        silent.close()
    assert len(set(received)) == 1 and is_stun(received[0])


def test_server_drops_and_counts_garbage():
    async def scenario():
        server = await start_stun_server("127.0.0.1", 0)
        sender = bound_socket()
        try:
            sender.sendto(b"not stun at all", server.address)
            sender.sendto(bytes([1, 4, 0, 0]) + bytes(28), server.address)
            result = await stun_binding(server.address, timeout=2.0)
        finally:
            sender.close()
            server.close()
        return server.stats, result

    stats, result = asyncio.run(scenario())
    assert (stats.received, stats.answered, stats.dropped) == (3, 1, 2)
    assert result.mapped[0] == "127.0.0.1"


def test_coturn_stunclient_learns_its_reflexive_address_from_our_server(tool, free_udp_port):
    """coturn's client sends unpadded requests: the answer may be no larger than the request plus
    the mapped address (no amplification), so it carries no RFC 5780 addresses. Our own client
    pads its requests and gets them (test_change_request_is_answered_from_the_alternate)."""
    stunclient = tool("turnutils_stunclient")
    port = free_udp_port("127.0.0.1", ALT_HOST, span=2)

    async def scenario():
        server = await start_stun_server("127.0.0.1", port, alt=(ALT_HOST, port + 1))
        try:
            return await run_tool(stunclient, "-p", str(port), "-L", "127.0.0.1", "127.0.0.1")
        finally:
            server.close()

    out = asyncio.run(scenario())
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out), out
    assert "Other addr" not in out, out


def test_rfc3489_stun_client_gets_a_classic_answer_from_our_server(tool, free_udp_port):
    """RFC 3489 requests cannot be padded: the answer fits the request plus the mapped address."""
    stun = tool("stun")
    port = free_udp_port("127.0.0.1", span=2)
    source = free_udp_port("127.0.0.1")

    async def scenario():
        server = await start_stun_server("127.0.0.1", port, alt=("127.0.0.1", port + 1))
        try:
            return await run_tool(stun, f"127.0.0.1:{port}", "1", "-v", "-p", str(source))
        finally:
            server.close()

    out = asyncio.run(scenario())
    assert f"MappedAddress = 127.0.0.1:{source}" in out, out
    assert "Received stun message: 32 bytes" in out, out


def test_a_flood_from_one_source_is_answered_only_up_to_its_limit():
    """Issue 13, finding 6: a spoofed victim gets a bounded number of small answers."""
    requests = [BindingTransaction(n.to_bytes(12, "big"), 0.0).request() for n in range(400)]

    async def scenario():
        server = await start_stun_server("127.0.0.1", 0)
        sender = bound_socket()
        sender.setblocking(False)
        try:
            for request in requests:
                sender.sendto(request, server.address)
            await asyncio.sleep(0.3)
            replies = []
            while True:
                try:
                    replies.append(sender.recv(2048))
                except BlockingIOError:
                    break
        finally:
            sender.close()
            server.close()
        return server.stats, replies

    stats, replies = asyncio.run(scenario())
    assert stats.received > PER_SOURCE_BURST + 10, "the socket buffer took enough of the flood"
    assert len(replies) == stats.answered <= PER_SOURCE_BURST + 10
    assert stats.limited == stats.received - stats.answered
    assert all(len(reply) <= len(requests[0]) + 12 for reply in replies)
