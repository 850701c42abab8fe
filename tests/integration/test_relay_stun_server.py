"""The relay server answers STUN on its UDP port: a real socket on loopback, the node's STUN client."""

import asyncio
import socket

import pytest

from meshvpn import keys
from meshvpn.config import Address, CoordTrust, RelayConfig
from meshvpn.metrics import relay_families
from meshvpn.relay.server import RelayServer
from meshvpn.stunio import stun_binding

pytestmark = pytest.mark.timeout(60)


def test_a_binding_query_to_the_relay_port_gets_the_socket_s_endpoint(tmp_path):
    asyncio.run(_query_the_relay(tmp_path))


async def _query_the_relay(tmp_path):
    keys.write_private_key(tmp_path / "relay.key")
    config = RelayConfig(private_key_file=tmp_path / "relay.key", state_dir=tmp_path / "state",
                         listen=Address("127.0.0.1", 0),
                         coord=CoordTrust(public_key=keys.public_key(keys.generate_private_key())))
    server = RelayServer(config)
    await server.start()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()
        result = await asyncio.wait_for(stun_binding(server.address, sock=sock, timeout=3.0), 5.0)
        assert result.mapped == local
        answers = [f for f in relay_families(server.core) if f.name == "meshvpn_relay_stun_answers"]
        assert answers[0].samples == [((), 1.0)]
    finally:
        await server.close()
