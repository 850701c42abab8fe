"""The DNS responder's shell on loopback: real UDP queries, forwarding to a second responder,
garbage dropped and counted, the directory swapped while it runs."""

from __future__ import annotations

import asyncio

import dnslib
import pytest

from meshvpn.config import Address
from meshvpn.lan import dnsserver
from meshvpn.lan.dnsserver import serve_dns
from meshvpn.lan.names import Directory, Host

pytestmark = pytest.mark.timeout(30)

PARTY = Directory("party", "mesh", [Host("bob", "100.64.0.2")])


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.answers.put_nowait(data)


async def ask(port: int, name: str, qtype: str = "A", raw: bytes | None = None, wait: float = 2.0) -> dnslib.DNSRecord | None:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(raw if raw is not None else dnslib.DNSRecord.question(name, qtype).pack())
        return dnslib.DNSRecord.parse(await asyncio.wait_for(client.answers.get(), wait))
    except asyncio.TimeoutError:
        return None
    finally:
        transport.close()


def port_of(responder: dnsserver.DnsResponder) -> int:
    return responder.transport.get_extra_info("sockname")[1]


def test_answers_mesh_names_refuses_others_and_drops_garbage() -> None:
    async def scenario():
        responder = await serve_dns("127.0.0.1", 0, PARTY)
        port = port_of(responder)
        try:
            bob = await ask(port, "bob.party.mesh")
            other = await ask(port, "example.com")
            garbage = await ask(port, "", raw=b"\x00\x01garbage", wait=0.3)
            responder.directory = Directory("party", "mesh", [Host("bob", "100.64.0.7")])
            moved = await ask(port, "bob")
            return bob, other, garbage, moved, dict(responder.counters)
        finally:
            responder.close()

    bob, other, garbage, moved, counters = asyncio.run(scenario())
    assert [str(rr.rdata) for rr in bob.rr] == ["100.64.0.2"]
    assert other.header.rcode == dnslib.RCODE.REFUSED
    assert garbage is None
    assert [str(rr.rdata) for rr in moved.rr] == ["100.64.0.7"]
    assert counters == {"answered": 3, "malformed": 1}


def test_other_names_are_forwarded_and_an_upstream_that_never_answers_times_out(monkeypatch) -> None:
    monkeypatch.setattr(dnsserver, "FORWARD_TIMEOUT", 0.3)

    async def scenario():
        upstream = await serve_dns("127.0.0.1", 0, Directory("example", "com", [Host("www", "192.0.2.80")]))
        responder = await serve_dns("127.0.0.1", 0, PARTY, Address("127.0.0.1", port_of(upstream)))
        silent = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        mute = await serve_dns("127.0.0.1", 0, PARTY, Address("127.0.0.1", silent[0].get_extra_info("sockname")[1]))
        try:
            www = await ask(port_of(responder), "www.example.com")
            bob = await ask(port_of(responder), "bob")
            lost = await ask(port_of(mute), "www.example.com", wait=1.0)
            return www, bob, lost, dict(responder.counters), dict(mute.counters)
        finally:
            for server in (upstream, responder, mute):
                server.close()
            silent[0].close()

    www, bob, lost, counters, mute_counters = asyncio.run(scenario())
    assert [str(rr.rdata) for rr in www.rr] == ["192.0.2.80"]
    assert [str(rr.rdata) for rr in bob.rr] == ["100.64.0.2"]
    assert lost is None
    assert counters == {"forwarded": 1, "answered": 1}
    assert mute_counters == {"forward_failed": 1}
