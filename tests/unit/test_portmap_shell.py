"""The port-mapping shell around miniupnpc: an IGD that is not there is "no UPnP gateway", and no
UPnP call's exception is left in a task nobody asks (asyncio would log "never retrieved").

miniupnpc raises a bare ``Exception`` when no device answers the discovery, its text whatever
errno held, often "Success"; `FakeIgd` does the same, so no miniupnpc and no network is needed.
The gateway is loopback: the NAT-PMP and PCP requests the shell sends there go nowhere.
"""

from __future__ import annotations

import asyncio
import gc
import threading

from meshvpn.config import PortMapConfig
from meshvpn.node.portmap.core import Phase
from meshvpn.node.portmap.events import Transport
from meshvpn.node.portmap.shell import NoGateway, PortMapShell, _Upnp


class FakeIgd:
    """miniupnpc.UPnP's discovery as it fails: `discover` raises Exception("Success"), after `gate` opens."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.discoverdelay = 0

    def discover(self) -> int:
        if self.gate is not None:
            self.gate.wait(5.0)
        raise Exception("Success")


def shell_with(igd: FakeIgd, loop: asyncio.AbstractEventLoop) -> PortMapShell:
    config = PortMapConfig(protocols=("upnp",))
    return PortMapShell(loop, config, lambda: None, map_port=False, upnp=lambda: _Upnp(igd),
                        gateway=lambda: "127.0.0.1")


async def settle(shell: PortMapShell, seconds: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while shell.mapper is not None and shell.mapper.phase is Phase.PROBING and loop.time() < deadline:
        await asyncio.sleep(0.01)


def unretrieved(run) -> list[dict]:
    """Run `run(loop)` on a fresh loop; the contexts of every exception the loop was told of."""
    seen: list[dict] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        loop.run_until_complete(run(loop))
        gc.collect()
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.close()
    gc.collect()
    return seen


def test_the_bare_exception_of_an_absent_igd_is_no_upnp_gateway():
    try:
        _Upnp(FakeIgd()).discover()
    except NoGateway as exc:
        assert str(exc) == "no UPnP gateway (Success)"
    else:
        raise AssertionError("no NoGateway")


def test_discovery_that_finds_nothing_says_so_and_leaves_no_exception_behind():
    status = {}

    async def run(loop):
        shell = shell_with(FakeIgd(), loop)
        await shell.start(41641)
        await settle(shell)
        status.update(shell.status())
        await shell.close()

    assert unretrieved(run) == []
    assert (status["state"], status["error"], status["available"]) == ("probed", "upnp: no UPnP gateway (Success)", [])


def test_a_reprobe_while_the_old_discovery_runs_still_takes_its_exception():
    gate = threading.Event()
    status = {}

    async def run(loop):
        shell = shell_with(FakeIgd(gate), loop)
        await shell.start(41641)
        await asyncio.sleep(0.05)  # the first discovery waits in the worker thread
        shell.reprobe()  # a new mapper: the first discovery's answer is nobody's now
        await asyncio.sleep(0.05)
        gate.set()
        await settle(shell)
        status.update(shell.status())
        await shell.close()

    assert unretrieved(run) == []
    assert (status["state"], status["error"]) == ("probed", "upnp: no UPnP gateway (Success)")


class MappingIgd:
    """miniupnpc.UPnP's mapping calls against a table of (external port, protocol) -> (client,
    internal port), as miniupnpd keeps it: AddPortMapping replaces an entry of the same client
    (IGD v1, 2.4.16) and refuses another client's, or a port `denied` by a permission rule."""

    lanaddr = "10.1.0.11"

    def __init__(self, table: dict | None = None, denied: set = frozenset(), specific_raises: bool = False) -> None:
        self.table = dict(table or {})
        self.denied = denied
        self.specific_raises = specific_raises
        """GetSpecificPortMappingEntry of a free port raises NoSuchEntryInArray (newer miniupnpc)
        instead of returning None."""

    def getspecificportmapping(self, port: int, proto: str):
        entry = self.table.get((port, proto))
        if entry is None and self.specific_raises:
            raise Exception("NoSuchEntryInArray")
        return None if entry is None else (*entry, "desc", True, 0)

    def addportmapping(self, port, proto, client, internal, desc, remote, lifetime):
        held = self.table.get((port, proto))
        if port in self.denied or held is not None and held[0] != client:
            raise Exception("ConflictInMappingEntry")
        self.table[(port, proto)] = (client, internal)
        return True

    def addanyportmapping(self, port, proto, client, internal, desc, remote, lifetime):
        while (port, proto) in self.table:
            port += 1
        self.table[(port, proto)] = (client, internal)
        return port


def test_443_is_asked_for_while_free_and_the_punch_port_when_taken():
    free = MappingIgd()
    assert _Upnp(free).map(41641, 443, 7200, Transport.TCP, fallback=41641) == 443
    assert free.table == {(443, "TCP"): ("10.1.0.11", 41641)}
    assert _Upnp(MappingIgd(specific_raises=True)).map(41641, 443, 7200, Transport.TCP, fallback=41641) == 443
    ours = MappingIgd({(443, "TCP"): ("10.1.0.11", 41641)})
    assert _Upnp(ours).map(41641, 443, 7200, Transport.TCP, fallback=41641) == 443, "our own leftover"


def test_a_port_443_held_by_a_web_server_is_never_replaced():
    """The web server runs on this very host: AddPortMapping would overwrite its entry, so the
    entry is looked up first and 443 left alone."""
    for web in ("10.1.0.11", "10.1.0.12"):
        igd = MappingIgd({(443, "TCP"): (web, 443)})
        assert _Upnp(igd).map(41641, 443, 7200, Transport.TCP, fallback=41641) == 41641
        assert igd.table[(443, "TCP")] == (web, 443) and igd.table[(41641, "TCP")] == ("10.1.0.11", 41641)
    denied = MappingIgd(denied={443})
    assert _Upnp(denied).map(41641, 443, 7200, Transport.TCP, fallback=41641) == 41641, "a permission rule"
