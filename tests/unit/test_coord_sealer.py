"""Fan-out slices sealed on two threads (`meshvpn.coord.sealer`): real channels, every frame
opened by its node in order, whichever thread sealed it."""

import os
from types import SimpleNamespace

from meshvpn.channel import ClientChannel
from meshvpn.coord import sealer
from meshvpn.coord.connection import Connection
from meshvpn.coord.server import ServerLimits
from meshvpn.noise import StaticIdentity

SERVER = StaticIdentity.from_private(bytes(range(1, 33)))
NOW = 1_700_000_000.0


class Transport:
    """What the coord's connection needs of an asyncio transport: the bytes it was given."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def node(index: int) -> tuple[Connection, ClientChannel]:
    """A coord connection with an established channel to a node's client channel."""
    conn = Connection(SimpleNamespace(identity=SERVER, limits=ServerLimits()))
    conn.transport = Transport()
    client = ClientChannel(StaticIdentity.from_private(os.urandom(32)), SERVER.public, os.urandom(32), NOW)
    while not (conn.channel.established and client.established):
        conn.channel.receive_data(client.data_to_send())
        client.receive_data(conn.channel.data_to_send())
    assert conn.channel.established and client.established
    return conn, client


def test_a_slice_is_sealed_on_two_threads_and_every_node_opens_its_frames_in_order():
    nodes = [node(index) for index in range(3 * sealer.PARALLEL_FROM)]
    held, closing = nodes[1][0], nodes[2][0]
    held.held = []
    closing.transport.closing = True
    deliveries = [(conn, [b"round %d for %d" % (r, i) + bytes(4000)]) for r in (1, 2)
                  for i, (conn, _) in enumerate(nodes)]  # a connection in both rounds of one slice
    out = sealer.Sealer()
    try:
        out.send(deliveries)
    finally:
        out.close()
    assert held.held == [b"round 1 for 1" + bytes(4000), b"round 2 for 1" + bytes(4000)]
    assert not closing.transport.written
    for index, (conn, client) in enumerate(nodes):
        if index in (1, 2):
            continue
        got = client.receive_data(bytes(conn.transport.written))
        assert got == [b"round 1 for %d" % index + bytes(4000), b"round 2 for %d" % index + bytes(4000)]
