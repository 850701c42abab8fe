"""Birthday-probing sockets carry a pinned pair's whole data path, so they send and receive runs."""

import asyncio
import socket
import tracemalloc

import pytest

from meshvpn.node.mappings import MappingSockets
from meshvpn.stunio import start_stun_server
from meshvpn.udpbatch import BatchUdpSocket
from meshvpn.wire import Endpoint


def test_a_pinned_socket_sends_a_run_and_hands_over_what_it_receives_as_runs():
    runs = []

    async def exchange() -> tuple[list, list[bytes]]:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            mappings = MappingSockets(loop, "127.0.0.1", lambda sid, run, seg, src: runs.append((sid, bytes(run), seg, src)),
                                     1 << 20)
            try:
                assert mappings.open([b"probe"], Endpoint(*peer.getsockname())) == 1
                [(sid, pinned)] = mappings.sockets().items()
                assert (await loop.sock_recvfrom(peer, 100))[0] == b"probe"
                run = bytes(range(100)) * 2 + b"tail"
                assert mappings.send_run(sid, Endpoint(*peer.getsockname()), memoryview(run), 100)
                got = [(await loop.sock_recvfrom(peer, 1000))[0] for _ in range(3)]
                BatchUdpSocket(peer).send_contiguous(pinned.getsockname(), memoryview(run), 100)
                for _ in range(100):
                    if sum(len(r[1]) for r in runs) >= len(run):
                        break
                    await asyncio.sleep(0.01)
                assert not mappings.send_run(sid + 1, Endpoint(*peer.getsockname()), memoryview(run), 100)
                return runs, got
            finally:
                mappings.close()

    handed, got = asyncio.run(exchange())
    assert got == [bytes(range(100)), bytes(range(100)), b"tail"], "one GSO send, three datagrams"
    assert b"".join(data for _, data, _, _ in handed) == bytes(range(100)) * 2 + b"tail"
    assert all(seg == 100 or data == b"tail" for _, data, seg, _ in handed)
    assert {sid for sid, _, _, _ in handed} == {1} and all(src.host == "127.0.0.1" for *_, src in handed)


def test_a_port_sample_comes_from_a_socket_that_stays_for_the_punches_after_it():
    """Behind a sequential NAT the core punches from the sample's socket: it must outlive the sample,
    be read like the others, and outlive a prune until its window is over."""
    runs = []

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        server = await start_stun_server("127.0.0.1", 0)
        in_use: set[int] = set()
        mappings = MappingSockets(loop, "127.0.0.1", lambda sid, run, seg, src: runs.append((sid, bytes(run))), 1 << 20,
                                  in_use=lambda: in_use)
        try:
            sid, mapped = await mappings.sample(Endpoint(*server.address), 1.0, keep=0.3)
            sock = mappings.sockets()[sid]
            assert mapped == Endpoint(*sock.getsockname()), "on loopback the mapping is the socket itself"
            assert runs == [], "the STUN answer went to the sample, not to the node"
            mappings.keep_only(set())
            assert sid in mappings.sockets(), "its window is not over"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.sendto(b"\x01\x04probe", sock.getsockname())
                for _ in range(100):
                    if runs:
                        break
                    await asyncio.sleep(0.01)
            assert runs == [(sid, b"\x01\x04probe")]
            in_use.add(sid)
            await asyncio.sleep(0.35)
            assert sid in mappings.sockets(), "a path uses it: its window's end keeps it"
            in_use.clear()
            mappings.prune()
            assert mappings.sockets() == {}
        finally:
            mappings.close()
            server.close()

    asyncio.run(sample())


def test_a_sample_without_an_answer_times_out():
    async def sample() -> None:
        loop = asyncio.get_running_loop()
        mappings = MappingSockets(loop, "127.0.0.1", lambda *args: None, 1 << 20)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            try:
                with pytest.raises(asyncio.TimeoutError):
                    await mappings.sample(Endpoint(*silent.getsockname()), 0.2, keep=0.0)
            finally:
                mappings.close()

    asyncio.run(sample())


def test_a_peer_with_a_direct_path_gives_its_campaign_s_unused_sockets_back_at_once():
    """Another peer's campaign needs the limit: a finished campaign's sockets close a grace after its
    path (the peer's probes on their way still get answers), long before its window would end,
    except the one a path uses; no other campaign's socket closes with them."""

    async def campaigns() -> None:
        loop = asyncio.get_running_loop()
        in_use: set[int] = set()
        mappings = MappingSockets(loop, "127.0.0.1", lambda *args: None, 1 << 20, limit=6, in_use=lambda: in_use,
                                  grace=0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            there = Endpoint(*peer.getsockname())
            try:
                assert mappings.open([b"a"] * 4, there, keep=30.0, owner=b"A") == 4
                assert mappings.open([b"b"] * 4, there, keep=30.0, owner=b"B") == 2, "the limit holds"
                first_a = min(mappings.sockets())
                in_use.add(first_a)
                mappings.release(b"A")
                assert len(mappings.sockets()) == 6, "the grace: the peer's probes on their way get answers"
                await asyncio.sleep(0.3)
                left = set(mappings.sockets())
                assert first_a in left and len(left) == 3, "A's path keeps its socket; B's two stay in their window"
                assert mappings.open([b"c"] * 4, there, keep=30.0, owner=b"C") == 3
            finally:
                mappings.close()

    asyncio.run(campaigns())


def test_a_campaign_s_sockets_receive_into_one_area_not_one_each():
    """A campaign opens up to 256 sockets: a 64 KiB receive area each was 16 MiB of the daemon's
    resident set while it ran. They are read one after the other, so they share one; what each
    hands over is still its own datagram."""
    count, runs = 64, []

    async def campaign() -> tuple[int, dict[int, socket.socket]]:
        loop = asyncio.get_running_loop()
        mappings = MappingSockets(loop, "127.0.0.1", lambda sid, run, seg, src: runs.append((sid, bytes(run))), 1 << 20)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            try:
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    assert mappings.open([b"probe"] * count, Endpoint(*peer.getsockname()), keep=30.0) == count
                    grown = tracemalloc.get_traced_memory()[0] - before
                finally:
                    tracemalloc.stop()
                sockets = mappings.sockets()
                for sid, sock in sockets.items():
                    peer.sendto(b"\x01\x04to %d" % sid, sock.getsockname())
                for _ in range(200):
                    if len(runs) == count:
                        break
                    await asyncio.sleep(0.01)
                return grown, sockets
            finally:
                mappings.close()

    grown, sockets = asyncio.run(campaign())
    assert grown < count * 16 * 1024, f"{grown} bytes for {count} sockets"
    assert sorted(runs) == sorted((sid, b"\x01\x04to %d" % sid) for sid in sockets)
