"""Registered peers without a daemon behind them, for measuring a node that has many peers.

`python -m meshvpn.bench.fakepeers COORD_HOST:PORT COORD_KEY AUTH_KEY COUNT` opens COUNT coord
channels, each with its own key, registers each as a node of the auth key's network (with a
public endpoint in 203.0.113.0/24 at which nothing answers) and holds them open, pinging, until
it is terminated. The coord then lists them to every node as online peers, so a real daemon
keeps a path finder, probes and a peer entry for each, as it would in a network that size.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from meshvpn import __version__, keys
from meshvpn.control import messages as m
from meshvpn.node.coordclient import CoordClient, connect

KEEPALIVE = 5.0
"""Seconds between the channels' pings (the coord drops a channel silent for three of its own)."""
SILENT_HOST = "203.0.113.250"
"""The peers' public endpoints: an address of the documentation range no lab host has."""


async def register(coord: tuple[str, int], coord_key: bytes, auth_key: str, index: int) -> CoordClient:
    client = await connect(coord, coord_key, keys.generate_private_key(), keepalive=KEEPALIVE)
    await client.register(m.Register(
        hostname=f"peer{index}", version=__version__, local_endpoints=(), auth_key=auth_key,
        public_endpoint=m.Endpoint(SILENT_HOST, 20000 + index), deltas=True))
    return client


async def hold(coord: tuple[str, int], coord_key: bytes, auth_key: str, count: int) -> None:
    clients = [await register(coord, coord_key, auth_key, index) for index in range(count)]
    print(f"fakepeers: {len(clients)} registered", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    drains = [asyncio.ensure_future(_drain(client)) for client in clients]
    await stop.wait()
    for task in drains:
        task.cancel()
    for client in clients:
        client.close()


async def _drain(client: CoordClient) -> None:
    """Read and drop what the coord sends, so its buffers never fill."""
    async for _ in client:
        pass


def main(argv: list[str]) -> int:
    host, port = argv[0].rsplit(":", 1)
    asyncio.run(hold((host, int(port)), keys.decode_key(argv[1]), argv[2], int(argv[3])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
