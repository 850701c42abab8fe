"""How the daemon learns where it can be reached: STUN through the coord's server, NAT profile, port samples.

asyncio helpers around :mod:`meshvpn.stunio` and :mod:`meshvpn.node.netcheck`; the daemon calls
them on its endpoint refresh and when the node asks for a port sample (``SampleWanted``). Each
returns None (and logs why) when the answer cannot be had, so the caller keeps what it knew.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Iterable, Optional

from meshvpn.config import NodeConfig
from meshvpn.control import messages as m
from meshvpn.node.mappings import MappingSockets
from meshvpn.node.netcheck import gather_profile, nat_profile, verdict
from meshvpn.node.netcheck_relays import pick_relay
from meshvpn.node.prediction import NatProfile
from meshvpn.node.traversal import SAMPLE_SOCKET
from meshvpn.stunio import StunClient, stun_binding
from meshvpn.wire import Endpoint

log = logging.getLogger("meshvpn.node")

SAMPLE_TIMEOUT = 1.0
"""Seconds a fresh-socket port sample may take before the punch goes ahead without it."""
MAPPING_TIMEOUT = 5.0
"""Seconds the shared socket's STUN query may take."""


async def stun_server(config: NodeConfig, family: int, host: Optional[str] = None) -> Endpoint:
    """The coord's STUN server (port ``coord.stun_port``) in `family`: at ``host``, the coord
    instance in use, else at the first coord address with an address of that family (the link
    may have been won over the other family, `meshvpn.node.eyeballs`). OSError when none has."""
    coord = config.coord
    loop = asyncio.get_running_loop()
    failure: Optional[OSError] = None
    for name in dict.fromkeys(filter(None, (host, coord.address.host, *(a.host for a in coord.other_addresses)))):
        try:
            infos = await loop.getaddrinfo(name, coord.stun_port, family=family, type=socket.SOCK_DGRAM)
        except OSError as exc:
            failure = exc
            continue
        if infos:
            return Endpoint(*infos[0][4][:2])
    raise failure or OSError(f"no coord address for {socket.AddressFamily(family).name}")


async def public_mapping(stun: StunClient, config: NodeConfig, family: int,
                         host: Optional[str] = None) -> Optional[m.Endpoint]:
    """The shared socket's public endpoint as the coord's STUN server sees it."""
    try:
        result = await asyncio.wait_for(stun.query(await stun_server(config, family, host)), MAPPING_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        log.info("no STUN mapping from the coord: %s", exc or type(exc).__name__)
        return None
    host, port = result.mapped
    return m.Endpoint(ipaddress.ip_address(host).compressed, port)


async def own_nat_profile(config: NodeConfig, family: int, host: Optional[str] = None,
                          relays: Iterable[tuple[str, Endpoint, bool]] = ()) -> Optional[NatProfile]:
    """Our NAT's mapping and port allocation from a few fresh-socket STUN samples (netcheck's); the
    mapping test asks one of `relays` (name, endpoint, is home) too when the coord has no alternate."""
    try:
        server = await stun_server(config, family, host)
    except (OSError, ValueError):
        return None
    relay = pick_relay(relays, server)
    return nat_profile(verdict(await gather_profile(server, config.listen.address, relay)))


async def kept_port_sample(mappings: MappingSockets, config: NodeConfig, family: int,
                           host: Optional[str] = None) -> tuple[Optional[Endpoint], Optional[int]]:
    """A STUN sample from a new extra socket that stays open for the punches that follow it
    (`traversal.SAMPLE_SOCKET`): the port our NAT gave its newest mapping, and the socket's id."""
    try:
        sampled = await mappings.sample(await stun_server(config, family, host), SAMPLE_TIMEOUT, SAMPLE_SOCKET)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        log.info("no port sample: %s", exc or type(exc).__name__)
        return None, None
    if sampled is None:
        log.info("no port sample: every extra socket is in use")
        return None, None
    sid, sample = sampled
    return sample, sid


async def port_sample(config: NodeConfig, family: int, host: Optional[str] = None) -> Optional[Endpoint]:
    """A STUN sample from a new socket: the port our NAT gave its newest mapping."""
    try:
        result = await stun_binding(await stun_server(config, family, host), local=(config.listen.address, 0),
                                    timeout=SAMPLE_TIMEOUT)
        return Endpoint(*result.mapped)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        log.info("no port sample: %s", exc or type(exc).__name__)
        return None
