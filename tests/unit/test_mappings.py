"""Birthday-probing sockets carry a pinned pair's whole data path, so they send and receive runs."""

import asyncio
import socket

from meshvpn.node.mappings import MappingSockets
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
