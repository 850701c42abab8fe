"""The relay server answers STUN on its UDP port: a real socket on loopback, the node's STUN client."""

import asyncio
import dataclasses
import socket

import pytest

from meshvpn.config import Address
from meshvpn.metrics import relay_families
from meshvpn.node.netcheck import EIM, gather_profile, verdict
from meshvpn.stunio import start_stun_server, stun_binding
from tests.integration.test_relay_server import relay_config, running

pytestmark = pytest.mark.timeout(60)


def relay_on(host: str, tmp_path):
    """A relay listening on `host` (any port), trusting a coord key nobody holds."""
    return running(dataclasses.replace(relay_config(tmp_path), listen=Address(host, 0)))


def test_a_binding_query_to_the_relay_port_gets_the_socket_s_endpoint(tmp_path):
    async def scenario():
        async with relay_on("127.0.0.1", tmp_path) as server:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            local = sock.getsockname()
            result = await asyncio.wait_for(stun_binding(server.address, sock=sock, timeout=3.0), 5.0)
            assert result.mapped == local
            answers = [f for f in relay_families(server.core) if f.name == "meshvpn_relay_stun_answers"]
            assert answers[0].samples == [((), 1.0)]

    asyncio.run(scenario())


def test_the_profile_gathering_asks_the_relay_from_the_socket_that_asked_the_coord(tmp_path):
    """No NAT on loopback: both servers see the one socket's endpoint, so the relay (another loopback
    IP than the coord's STUN) tells the mapping: endpoint-independent, from the relay."""
    async def scenario():
        stun = await start_stun_server("127.0.0.1", 0)
        try:
            async with relay_on("127.0.0.2", tmp_path) as relay:
                obs = await gather_profile(stun.address, "127.0.0.1", ("r1", relay.address))
                assert obs.relay_mapped == obs.mapped["A1P1"] and obs.relay_mapped[0] == "127.0.0.1"
                result = verdict(obs)
                assert (result.mapping, result.mapping_source) == (EIM, "relay r1")
                assert relay.core.stun.answered == 1
        finally:
            stun.close()

    asyncio.run(scenario())
