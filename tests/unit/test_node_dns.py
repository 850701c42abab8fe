"""Names follow the peer map: the node's ``PeerMapChanged`` rebuilds the responder's directory at once."""

import asyncio
import random
import socket
from dataclasses import replace

import dnslib

from meshvpn.config import DnsConfig
from meshvpn.control import messages as m
from meshvpn.lan.names import respond
from meshvpn.node import events as ev
from meshvpn.node.dns import NameService, directory
from meshvpn.sim.nodes import ALICE_AT, BOB_AT, MemoryNode, seeded

from test_lan_resolved import stand_in  # noqa: F401  (the fixture: a resolvectl that logs its calls)

CAROL_AT = ("192.0.2.30", 41641)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def three() -> tuple[MemoryNode, MemoryNode, MemoryNode]:
    return (seeded(random.Random, 1, "alice", "100.64.0.1", ALICE_AT),
            seeded(random.Random, 2, "bob", "100.64.0.2", BOB_AT),
            seeded(random.Random, 3, "carol", "100.64.0.3", CAROL_AT))


def peer_maps(n: MemoryNode) -> list[ev.PeerMapChanged]:
    return [e for e in n.take_events() if isinstance(e, ev.PeerMapChanged)]


def lookup(event: ev.PeerMapChanged, name: str) -> tuple[int, list[str]]:
    """(rcode, A answers) for `name`, asked of the directory built from `event`."""
    reply = dnslib.DNSRecord.parse(respond(dnslib.DNSRecord.question(name).pack(), directory(event, "mesh"), False))
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr]


def test_registration_and_peer_map_announce_every_name_with_ours_first() -> None:
    alice, bob, carol = three()
    alice.register(bob, carol, now=5.0)
    first, second = peer_maps(alice)
    assert first == ev.PeerMapChanged("home", (("alice", "100.64.0.1"),))
    assert second.hosts == (("alice", "100.64.0.1"), ("bob", "100.64.0.2"), ("carol", "100.64.0.3"))
    assert lookup(second, "bob.home.mesh") == (dnslib.RCODE.NOERROR, ["100.64.0.2"])
    assert lookup(second, "carol") == (dnslib.RCODE.NOERROR, ["100.64.0.3"])
    assert lookup(second, "alice") == (dnslib.RCODE.NOERROR, ["100.64.0.1"])
    assert lookup(second, "dave.home.mesh")[0] == dnslib.RCODE.NXDOMAIN


def test_join_rename_readdress_and_leave_each_change_the_answer_at_the_same_instant() -> None:
    alice, bob, carol = three()
    alice.register(bob, now=0.0)
    peer_maps(alice)
    alice.from_coord(m.PeerUpdate(peer=carol.info()), 10.0)
    (joined,) = peer_maps(alice)
    assert lookup(joined, "carol.home.mesh")[1] == ["100.64.0.3"]
    alice.from_coord(m.PeerUpdate(peer=replace(bob.info(), name="robert")), 11.0)
    (renamed,) = peer_maps(alice)
    assert lookup(renamed, "bob.home.mesh")[0] == dnslib.RCODE.NXDOMAIN
    assert lookup(renamed, "robert")[1] == ["100.64.0.2"]
    alice.from_coord(m.PeerUpdate(peer=replace(carol.info(), address="100.64.0.33")), 12.0)
    (moved,) = peer_maps(alice)
    assert lookup(moved, "carol")[1] == ["100.64.0.33"]
    alice.from_coord(m.PeerRemove(key=carol.public), 13.0)
    (left,) = peer_maps(alice)
    assert lookup(left, "carol.home.mesh")[0] == dnslib.RCODE.NXDOMAIN
    alice.from_coord(m.PeerMap(peers=()), 14.0)
    (emptied,) = peer_maps(alice)
    assert emptied.hosts == (("alice", "100.64.0.1"),)


def test_messages_that_change_no_name_announce_nothing() -> None:
    alice, bob, _ = three()
    alice.register(bob, now=0.0)
    peer_maps(alice)
    alice.from_coord(m.PeerUpdate(peer=replace(bob.info(), online=False)), 1.0)
    alice.from_coord(m.PeerMap(peers=(bob.info(),)), 2.0)
    alice.tick(30.0)
    assert peer_maps(alice) == []


def test_the_service_answers_from_the_newest_map_on_a_real_socket() -> None:
    port = free_port()
    config = replace(DnsConfig(), port=port, resolved=False)

    async def scenario() -> list:
        service = NameService(config)
        service.peers_changed(ev.PeerMapChanged("home", (("alice", "127.0.0.1"), ("bob", "100.64.0.2"))))
        service.address_assigned("127.0.0.1", "lo")
        await service._task
        seen = [service.status(), await ask(port, "bob.home.mesh")]
        service.peers_changed(ev.PeerMapChanged("home", (("alice", "127.0.0.1"),)))
        seen.append(await ask(port, "bob.home.mesh"))
        await service.close()
        seen.append(service.status())
        return seen

    status, before, after, closed = asyncio.run(scenario())
    assert status == f"127.0.0.1:{port}" and closed is None
    assert before.header.rcode == dnslib.RCODE.NOERROR and [str(rr.rdata) for rr in before.rr] == ["100.64.0.2"]
    assert after.header.rcode == dnslib.RCODE.NXDOMAIN


def test_where_resolved_runs_the_domain_is_registered_on_the_tun_and_reverted_on_exit(stand_in) -> None:  # noqa: F811
    log = stand_in()
    port = free_port()

    async def scenario() -> None:
        service = NameService(replace(DnsConfig(), port=port))
        service.peers_changed(ev.PeerMapChanged("home", (("alice", "127.0.0.1"),)))
        service.address_assigned("127.0.0.1", "mvtun0")
        await service._task
        await service.close()

    asyncio.run(scenario())
    assert log.read_text().splitlines() == [
        f"dns mvtun0 127.0.0.1:{port}", "domain mvtun0 ~home.mesh ~mesh", "default-route mvtun0 no", "revert mvtun0"]


def test_a_disabled_responder_never_binds() -> None:
    async def scenario():
        service = NameService(replace(DnsConfig(), enabled=False, resolved=False))
        service.address_assigned("127.0.0.1", "lo")
        service.peers_changed(ev.PeerMapChanged("home", (("alice", "127.0.0.1"),)))
        await asyncio.sleep(0)
        status = service.status()
        await service.close()
        return status, service.responder

    assert asyncio.run(scenario()) == (None, None)


async def ask(port: int, name: str) -> dnslib.DNSRecord:
    loop = asyncio.get_running_loop()
    answer = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple) -> None:
            answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(dnslib.DNSRecord.question(name).pack())
        return dnslib.DNSRecord.parse(await asyncio.wait_for(answer, 2.0))
    finally:
        transport.close()
