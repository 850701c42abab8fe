"""Relay and TURN servers announced by DNS name: the node resolves them, the cores see addresses only."""

import asyncio
import socket

from meshvpn.control import messages as m
from meshvpn.node import names
from meshvpn.node.names import NameWatch
from meshvpn.node.relay.core import RelaySet
from meshvpn.node.turn.core import TurnLinks

KEY = bytes(range(32))


def registered(relay_host="relay.example", turn_host="turn.example"):
    return m.Registered(
        node_key=bytes(32), name="me", address="100.64.0.1", network=m.NetworkInfo("home", "100.64.0.0/24"),
        relays=(m.RelayInfo("r1", relay_host, 7500, KEY), m.RelayInfo("r2", "198.51.100.2", 7500, KEY)),
        turn=(m.TurnServer("t1", turn_host, 3478, "user", "pass", 2e9),))


class Zone:
    """A resolver we control: name -> address, counting lookups."""

    def __init__(self, **records):
        self.records = {name.replace("_", "."): address for name, address in records.items()}
        self.asked: list[str] = []

    async def resolve(self, host, port):
        self.asked.append(host)
        return (self.records[host],) if host in self.records else ()


def watch(zone, working=lambda name: False):
    changes = []
    return NameWatch(zone.resolve, changes.append, working), changes


async def settle(watcher):
    if watcher._task is not None:
        await watcher._task


def test_addresses_pass_through_untouched():
    async def scenario():
        zone = Zone()
        watcher, changes = watch(zone)
        msg = registered("203.0.113.20", "203.0.113.30")
        assert watcher.rewrite(msg) == msg
        await settle(watcher)
        assert zone.asked == [] and changes == []

    asyncio.run(scenario())


def test_names_are_left_out_until_resolved_then_handed_on_as_addresses():
    async def scenario():
        zone = Zone(relay_example="203.0.113.20", turn_example="203.0.113.30")
        watcher, changes = watch(zone)
        first = watcher.rewrite(registered())
        assert [r.host for r in first.relays] == ["198.51.100.2"] and first.turn == ()
        await settle(watcher)
        assert sorted(zone.asked) == ["relay.example", "turn.example"]
        [moved] = changes
        assert [r.host for r in moved.relays] == ["203.0.113.20", "198.51.100.2"]
        assert [t.host for t in moved.turn] == ["203.0.113.30"]
        again = watcher.rewrite(registered())
        assert again == moved
        await settle(watcher)
        assert len(zone.asked) == 2, "known names are not looked up again"
        tokens = watcher.rewrite(m.RelayTokens(tokens=(), turn=registered().turn))
        assert [t.host for t in tokens.turn] == ["203.0.113.30"]

    asyncio.run(scenario())


def test_a_failing_server_is_looked_up_again_and_moves_when_its_address_changed():
    async def scenario():
        zone = Zone(relay_example="203.0.113.20")
        working = {"r1": True}
        watcher, changes = watch(zone, lambda name: working.get(name, False))
        watcher.rewrite(registered())
        await settle(watcher)
        assert [r.host for r in changes[-1].relays] == ["203.0.113.20", "198.51.100.2"]
        assert changes[-1].turn == (), "turn.example has no address: left out"

        zone.asked.clear()
        watcher.recheck()
        await settle(watcher)
        assert zone.asked == ["turn.example"], "only the server that does not work is looked up"

        working["r1"] = False
        zone.records["relay.example"] = "203.0.113.21"
        zone.records["turn.example"] = "203.0.113.30"
        watcher.recheck()
        await settle(watcher)
        assert [r.host for r in changes[-1].relays] == ["203.0.113.21", "198.51.100.2"]
        assert [t.host for t in changes[-1].turn] == ["203.0.113.30"]

    asyncio.run(scenario())


def test_the_cores_take_what_the_watch_hands_on():
    async def scenario():
        watcher, changes = watch(Zone(relay_example="203.0.113.20", turn_example="203.0.113.30"))
        relays = RelaySet(bytes(32), bytes(32), lambda n: bytes(n), 0.0)
        turn = TurnLinks(lambda n: bytes(n))
        first = watcher.rewrite(registered())
        relays.configure(first.relays, first.relay_tokens, 0.0)
        turn.coord_message(first, 0.0)
        assert sorted(relays.links) == ["r2"] and not turn.servers
        await settle(watcher)
        relays.configure(changes[-1].relays, changes[-1].relay_tokens, 1.0)
        turn.set_servers(changes[-1].turn, 1.0)
        assert sorted(relays.links) == ["r1", "r2"] and relays.skipped == []
        assert sorted(f"{e[0]}:{e[1]}" for e in relays.by_endpoint) == ["198.51.100.2:7500", "203.0.113.20:7500"]
        assert [f"{e[0]}:{e[1]}" for e in turn.by_endpoint] == ["203.0.113.30:3478"]

    asyncio.run(scenario())


def test_the_system_resolver_finds_localhost():
    async def scenario():
        resolve = names.resolver(asyncio.get_running_loop().getaddrinfo, socket.AF_INET)
        assert (await resolve("localhost", 7500))[0] == "127.0.0.1"

    asyncio.run(scenario())


def test_a_relays_message_has_its_named_servers_resolved_and_is_what_a_later_move_reconfigures():
    async def scenario():
        zone = Zone(relay_example="203.0.113.20")
        watcher, changes = watch(zone)
        watcher.rewrite(registered())
        peer = m.RelayInfo("host", "198.51.100.9", 41641, bytes(range(1, 33)), peer=True)
        offered = m.Relays((*registered().relays, peer), ())
        assert [r.name for r in watcher.rewrite(offered).relays] == ["r2", "host"]  # r1 not resolved yet
        await settle(watcher)
        [moved] = changes
        assert [r.host for r in moved.relays] == ["203.0.113.20", "198.51.100.2", "198.51.100.9"]
        assert [r.host for r in watcher.rewrite(offered).relays] == ["203.0.113.20", "198.51.100.2", "198.51.100.9"]

    asyncio.run(scenario())


class Records:
    """getaddrinfo at the shell's edge: a name's A and AAAA records, and the families asked for."""

    def __init__(self, **records):
        self.records = {name.replace("_", "."): addresses for name, addresses in records.items()}
        self.families: list[int] = []

    async def getaddrinfo(self, host, port, *, family=0, type=0):
        self.families.append(family)
        found = [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 0, "", (a, port))
                 for a in self.records.get(host, ())]
        return [info for info in found if family in (socket.AF_UNSPEC, info[0])]


def test_a_dual_stack_node_reaches_a_relay_named_by_aaaa_records_only_and_prefers_ipv4_otherwise():
    async def scenario():
        zone = Records(six_example=["2001:db8::20"], both_example=["2001:db8::21", "203.0.113.21"])
        dual = names.resolver(zone.getaddrinfo, socket.AF_INET, dual=True)
        ipv4 = names.resolver(zone.getaddrinfo, socket.AF_INET)
        found = [await dual("six.example", 7500), await dual("both.example", 7500), await ipv4("six.example", 7500)]
        return found, zone.families

    found, families = asyncio.run(scenario())
    assert found == [("2001:db8::20",), ("203.0.113.21", "2001:db8::21"), ()]
    assert families == [socket.AF_UNSPEC, socket.AF_UNSPEC, socket.AF_INET], "an IPv4 socket cannot send to IPv6"
