"""The port-mapping machine on a fake clock against a scripted gateway: probe, choose, map, renew, delete."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from meshvpn.node.portmap import natpmp, pcp
from meshvpn.node.portmap.core import (
    MappingChanged, Phase, PortMapper, Protocol, SendToGateway, Transport, UpnpDiscover, UpnpMap, UpnpUnmap,
)

PORT = 41641
EXTERNAL = "203.0.113.100"
CLIENT = "10.1.0.11"


@dataclass
class Gateway:
    """Answers NAT-PMP and PCP requests the way a router would (miniupnpd's layouts)."""

    speaks: set = field(default_factory=lambda: {"pcp", "nat-pmp"})
    external_port: int = PORT
    refuse_maps: bool = False
    refuse_tcp: bool = False
    """Refuse TCP mappings only (as a router allowing UDP forwards alone would)."""
    refuse_pcp: bool = False
    """Refuse PCP mappings only (NAT-PMP ones are granted)."""
    lifetime: int | None = None
    """Grant this lifetime instead of the one asked for."""
    taken: set | None = None
    """Grant the external port asked for unless it is one of these (then `external_port`), as a
    router does; None: always `external_port`."""
    seen: list = field(default_factory=list)
    started: float = -7.0
    """When the gateway's mapping table started, on the test's clock (its epoch counts from it)."""
    now: float = 0.0

    @property
    def epoch(self) -> int:
        return int(self.now - self.started)

    def announcement(self) -> bytes:
        """What a gateway that speaks PCP (else NAT-PMP) says on its own, e.g. after a restart."""
        if "pcp" in self.speaks:
            return struct.pack("!BBBBII", 2, 0x80, 0, 0, 0, self.epoch) + bytes(12)
        return struct.pack("!BBHI4s", 0, 128, 0, self.epoch, bytes(int(x) for x in EXTERNAL.split(".")))

    def answer(self, request: bytes) -> bytes | None:
        self.seen.append(request)
        if request[0] == 2 and "pcp" in self.speaks:
            return self._pcp(request)
        if request[0] == 0 and "nat-pmp" in self.speaks:
            return self._natpmp(request)
        return None

    def _pcp(self, request: bytes) -> bytes:
        opcode, lifetime = request[1], struct.unpack_from("!I", request, 4)[0]
        tcp = opcode == 1 and request[36] == 6
        result = 8 if (self.refuse_maps or self.refuse_pcp or self.refuse_tcp and tcp) and opcode == 1 and lifetime else 0
        granted = self.lifetime if self.lifetime is not None and lifetime else lifetime
        header = struct.pack("!BBBBII", 2, 0x80 | opcode, 0, result, granted, self.epoch) + bytes(12)
        if opcode == 0:
            return header
        nonce, protocol, internal, asked, _ = struct.unpack_from("!12sB3xHH16s", request, 24)
        external = bytes(10) + b"\xff\xff" + bytes(int(x) for x in EXTERNAL.split("."))
        return header + struct.pack("!12sB3xHH16s", nonce, protocol, internal, self._grant(asked), external)

    def _grant(self, asked: int) -> int:
        return asked if self.taken is not None and asked not in self.taken else self.external_port

    def _natpmp(self, request: bytes) -> bytes:
        if request[1] == 0:
            return struct.pack("!BBHI4s", 0, 128, 0, self.epoch, bytes(int(x) for x in EXTERNAL.split(".")))
        _, opcode, _, internal, asked, lifetime = struct.unpack("!BBHHHI", request)
        result = 2 if (self.refuse_maps or self.refuse_tcp and opcode == 2) and lifetime else 0
        granted = self.lifetime if self.lifetime is not None and lifetime else lifetime
        return struct.pack("!BBHIHHI", 0, 128 + opcode, result, self.epoch, internal,
                           self._grant(asked) if lifetime else 0, granted)


def mapper(**options) -> PortMapper:
    return PortMapper(PORT, CLIENT, lambda n: bytes(range(n)), **options)


def exchange(machine: PortMapper, gateway: Gateway, now: float) -> list:
    """Deliver every datagram the machine sends to the gateway and its answers back; the other outputs."""
    others, pending = [], machine.outputs()
    gateway.now = now
    while pending:
        out = pending.pop(0)
        if isinstance(out, SendToGateway):
            reply = gateway.answer(out.data)
            if reply is not None:
                machine.receive(reply, now)
                pending += machine.outputs()
        else:
            others.append(out)
    return others


def run_until(machine: PortMapper, gateway: Gateway, until: float, now: float = 0.0) -> list:
    """Follow the machine's timer up to `until`, answering as the gateway; the non-datagram outputs."""
    others = exchange(machine, gateway, now)
    while (timer := machine.get_timer()) is not None and timer <= until:
        machine.handle_timer(timer)
        others += exchange(machine, gateway, timer)
    return others


def test_probe_asks_pcp_and_natpmp_at_once_and_upnp_in_the_shell() -> None:
    machine = mapper()
    machine.probe(0.0)
    out = machine.outputs()
    assert out == [SendToGateway(pcp.announce_request(CLIENT)), SendToGateway(natpmp.address_request()), UpnpDiscover()]
    assert machine.phase is Phase.PROBING and machine.get_timer() == 0.25


def test_pcp_wins_when_the_gateway_speaks_everything() -> None:
    machine, gateway = mapper(), Gateway()
    machine.probe(0.0)
    others = exchange(machine, gateway, 0.0)
    assert machine.phase is Phase.MAPPED
    assert machine.mapping.protocol is Protocol.PCP and machine.mapping.external == (EXTERNAL, PORT)
    assert others == [UpnpDiscover(), MappingChanged(machine.mapping)]
    machine.upnp_found(EXTERNAL, 0.1)  # a late UPnP answer changes nothing
    assert machine.outputs() == [] and machine.mapping.protocol is Protocol.PCP
    assert machine.status(100.0) == {"state": "mapped", "protocol": "pcp", "external": f"{EXTERNAL}:{PORT}",
                                     "expires_in": 7100.0, "available": ["pcp", "nat-pmp"], "error": None,
                                     "gateway_restarts": 0}


def test_natpmp_waits_for_pcp_to_answer_or_give_up() -> None:
    machine, gateway = mapper(), Gateway(speaks={"nat-pmp"})
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    assert machine.phase is Phase.PROBING  # PCP may still answer
    run_until(machine, gateway, 2.0)
    assert machine.mapping.protocol is Protocol.NATPMP and machine.mapping.external == (EXTERNAL, PORT)
    pcp_tries = [d for d in gateway.seen if d[0] == 2]
    assert len(pcp_tries) == 3  # at 0, 0.25 and 0.75 s; given up at 1.75 s


def test_upnp_is_used_when_neither_pcp_nor_natpmp_answers() -> None:
    machine, gateway = mapper(), Gateway(speaks=set())
    machine.probe(0.0)
    run_until(machine, gateway, 0.5)
    machine.upnp_found(EXTERNAL, 0.5)
    assert machine.outputs() == []  # NAT-PMP and PCP are still being asked
    assert run_until(machine, gateway, 2.0, 0.5) == [UpnpMap(PORT, PORT, 7200)]
    machine.upnp_mapped(PORT, 7200, 2.1)
    assert machine.outputs() == [MappingChanged(machine.mapping)]
    assert machine.mapping.protocol is Protocol.UPNP and machine.mapping.external == (EXTERNAL, PORT)


def test_nothing_answers_and_the_reason_is_kept() -> None:
    machine, gateway = mapper(protocols=(Protocol.PCP, Protocol.NATPMP)), Gateway(speaks=set())
    machine.probe(0.0)
    run_until(machine, gateway, 10.0)
    assert machine.phase is Phase.NONE and machine.mapping is None and machine.get_timer() is None
    assert machine.error == "the gateway answered none of pcp, nat-pmp"


def test_a_refusal_moves_on_to_the_next_protocol_that_answered() -> None:
    machine, gateway = mapper(), Gateway(refuse_maps=True)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    assert machine.phase is Phase.PROBING  # PCP and NAT-PMP refused; UPnP still looking
    machine.upnp_mapped(PORT, 7200, 0.1)  # an answer to nothing asked is ignored
    machine.upnp_found(EXTERNAL, 0.2)
    assert machine.outputs() == [UpnpMap(PORT, PORT, 7200)]
    machine.upnp_mapped(None, 7200, 0.3, why="ConflictInMappingEntry")
    assert machine.phase is Phase.NONE and machine.error == "upnp: ConflictInMappingEntry"


def test_renewal_at_half_the_granted_lifetime_keeps_the_mapping_quietly() -> None:
    machine, gateway = mapper(lease=7200), Gateway(lifetime=600)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    assert machine.get_timer() == 300.0
    gateway.seen.clear()
    assert run_until(machine, gateway, 1000.0) == []
    renewals = [d for d in gateway.seen if d[1] == 1]
    assert len(renewals) == 3  # at 300, 600 and 900 s, the same nonce each time
    assert {d[24:36] for d in renewals} == {bytes(range(12))}
    assert machine.mapping.granted == 900.0 and machine.phase is Phase.MAPPED


def test_a_new_port_on_renewal_is_announced() -> None:
    machine, gateway = mapper(), Gateway(lifetime=600)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    gateway.external_port = 50000
    others = run_until(machine, gateway, 300.0)
    assert others == [MappingChanged(machine.mapping)] and machine.mapping.external == (EXTERNAL, 50000)


def test_a_mapping_that_lapses_unrenewed_is_dropped_and_the_gateway_probed_again() -> None:
    machine, gateway = mapper(), Gateway(lifetime=600)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    gateway.speaks = set()
    others = run_until(machine, gateway, 600.0)
    assert MappingChanged(None) in others and others[-1] == UpnpDiscover()
    assert machine.mapping is None and machine.phase is Phase.PROBING
    assert machine.error == "pcp: the mapping lapsed unrenewed"


def test_close_deletes_with_lifetime_zero_and_the_same_nonce() -> None:
    machine, gateway = mapper(), Gateway()
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    machine.close(5.0)
    delete, changed = machine.outputs()
    assert delete == SendToGateway(pcp.map_request(CLIENT, bytes(range(12)), PORT, 0, 0))
    assert changed == MappingChanged(None)
    assert machine.phase is Phase.CLOSED and machine.get_timer() is None


def test_close_deletes_a_natpmp_or_upnp_mapping_its_own_way() -> None:
    machine, gateway = mapper(protocols=(Protocol.NATPMP,)), Gateway()
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    machine.close(1.0)
    assert machine.outputs()[0] == SendToGateway(natpmp.map_request(PORT, 0, 0))
    machine = mapper(protocols=(Protocol.UPNP,))
    machine.probe(0.0)
    machine.upnp_found(EXTERNAL, 0.0)
    machine.upnp_mapped(PORT, 0, 0.1)  # a permanent mapping: no renewal timer
    assert machine.get_timer() is None
    machine.outputs()
    machine.close(1.0)
    assert machine.outputs() == [UpnpUnmap(PORT), MappingChanged(None)]


def test_reprobe_after_a_network_change_drops_the_mapping_first() -> None:
    machine, gateway = mapper(), Gateway()
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    machine.probe(10.0)
    out = machine.outputs()
    assert out[:2] == [SendToGateway(pcp.map_request(CLIENT, bytes(range(12)), PORT, 0, 0)), MappingChanged(None)]
    assert machine.phase is Phase.PROBING and machine.supported == {}


def test_garbage_from_the_gateway_is_counted_not_raised() -> None:
    machine = mapper()
    machine.probe(0.0)
    machine.outputs()
    machine.receive(b"\x02\x81", 0.1)
    machine.receive(b"", 0.1)
    assert machine.drops == 2 and machine.phase is Phase.PROBING


def test_a_probe_only_machine_finds_the_protocols_and_maps_nothing() -> None:
    machine, gateway = mapper(map_port=False), Gateway(speaks={"nat-pmp"})
    machine.probe(0.0)
    assert run_until(machine, gateway, 10.0) == [UpnpDiscover()]
    assert machine.phase is Phase.PROBING  # UPnP still looking
    machine.upnp_found(None, 3.0, why="no UPnP device answered")
    assert machine.phase is Phase.PROBED and machine.outputs() == []
    assert machine.supported == {Protocol.NATPMP: EXTERNAL} and machine.mapping is None
    assert [d for d in gateway.seen if d[:2] == b"\x00\x01"] == []


def test_a_upnp_mapping_granted_while_closing_is_deleted() -> None:
    machine = mapper(protocols=(Protocol.UPNP,))
    machine.probe(0.0)
    machine.upnp_found(EXTERNAL, 0.5)
    assert machine.outputs() == [UpnpDiscover(), UpnpMap(PORT, PORT, 7200)]
    machine.close(0.6)
    assert machine.outputs() == []  # nothing granted yet, nothing to delete
    machine.upnp_mapped(PORT, 7200, 0.7)
    assert machine.outputs() == [UpnpUnmap(PORT)] and machine.mapping is None


def test_renewals_from_a_gateway_whose_epoch_keeps_time_see_no_restart() -> None:
    machine, gateway = mapper(), Gateway(lifetime=600)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    run_until(machine, gateway, 2000.0)
    gateway.now = 2000.0
    machine.receive(gateway.announcement(), 2000.0)
    assert machine.outputs() == [] and machine.restarts == 0 and machine.error is None


def restart_then_announce(machine: PortMapper, gateway: Gateway, at: float) -> list:
    """The gateway restarts at `at` and announces itself 5 s later: what the machine sends at once."""
    gateway.started, gateway.now = at, at + 5.0
    machine.receive(gateway.announcement(), at + 5.0)
    return machine.outputs()


def test_a_restarted_pcp_gateways_smaller_epoch_maps_again_at_once() -> None:
    machine, gateway = mapper(), Gateway()
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    assert machine.get_timer() == 3600.0
    out = restart_then_announce(machine, gateway, 1000.0)
    assert out == [SendToGateway(pcp.map_request(CLIENT, bytes(range(12)), PORT, PORT, 7200))]
    assert machine.restarts == 1 and machine.error.startswith("pcp: the gateway restarted (epoch 5)")
    machine.receive(gateway.answer(out[0].data), 1005.0)
    assert machine.outputs() == []  # the same port again: nothing to announce
    assert machine.mapping.granted == 1005.0 and machine.error is None and machine.get_timer() == 1005.0 + 3600


def test_a_restarted_natpmp_gateway_is_asked_for_the_same_port_at_once() -> None:
    machine, gateway = mapper(), Gateway(speaks={"nat-pmp"})
    machine.probe(0.0)
    run_until(machine, gateway, 2.0)
    assert machine.mapping.protocol is Protocol.NATPMP
    gateway.external_port = 50000  # the restarted gateway hands out another port
    out = restart_then_announce(machine, gateway, 1000.0)
    assert out == [SendToGateway(natpmp.map_request(PORT, PORT, 7200))]
    machine.receive(gateway.answer(out[0].data), 1005.0)
    assert machine.outputs() == [MappingChanged(machine.mapping)]
    assert machine.mapping.external == (EXTERNAL, 50000) and machine.restarts == 1


def test_a_natpmp_only_node_maps_again_when_the_gateway_announces_its_restart_in_pcp() -> None:
    """miniupnpd speaks both but announces its start in PCP alone; one epoch serves both."""
    machine, gateway = mapper(protocols=(Protocol.NATPMP,)), Gateway()
    machine.probe(0.0)
    run_until(machine, gateway, 2.0)
    assert machine.mapping.protocol is Protocol.NATPMP and gateway.announcement()[0] == pcp.VERSION
    gateway.now = 500.0
    machine.receive(gateway.announcement(), 500.0)
    assert machine.outputs() == [] and machine.restarts == 0, "an epoch that kept time"
    out = restart_then_announce(machine, gateway, 1000.0)
    assert out == [SendToGateway(natpmp.map_request(PORT, PORT, 7200))]
    assert machine.restarts == 1 and machine.error.startswith("nat-pmp: the gateway restarted (epoch 5)")
    machine.receive(gateway.answer(out[0].data), 1005.0)
    assert machine.restarts == 1 and machine.mapping.granted == 1005.0 and machine.error is None


def test_a_restart_announced_in_pcp_maps_again_what_went_through_natpmp() -> None:
    machine, gateway = mapper(protocols=(Protocol.PCP, Protocol.NATPMP)), Gateway(refuse_pcp=True)
    machine.probe(0.0)
    run_until(machine, gateway, 2.0)
    assert machine.mapping.protocol is Protocol.NATPMP
    out = restart_then_announce(machine, gateway, 1000.0)
    assert out == [SendToGateway(natpmp.map_request(PORT, PORT, 7200))] and machine.restarts == 1


def test_a_renewal_answer_from_a_restarted_gateway_is_the_new_mapping() -> None:
    machine, gateway = mapper(), Gateway(lifetime=600)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    gateway.started = 100.0
    gateway.seen.clear()
    assert run_until(machine, gateway, 300.0) == []
    assert len(gateway.seen) == 1 and machine.restarts == 1  # counted, not asked twice
    assert machine.mapping.granted == 300.0 and machine.phase is Phase.MAPPED


# ---- the TCP punch port beside the UDP port: one probe, one epoch watch, a lease each

UDP, TCP = Transport.UDP, Transport.TCP
BOTH = (UDP, TCP)


def test_pcp_maps_the_udp_and_the_tcp_port_from_one_probe() -> None:
    machine, gateway = mapper(transports=BOTH), Gateway()
    machine.probe(0.0)
    others = exchange(machine, gateway, 0.0)
    udp, tcp = machine.mapping_of(UDP), machine.mapping_of(TCP)
    assert others == [UpnpDiscover(), MappingChanged(udp, UDP), MappingChanged(tcp, TCP)]
    assert (udp.protocol, udp.transport, tcp.protocol, tcp.transport) == (Protocol.PCP, UDP, Protocol.PCP, TCP)
    assert tcp.external == (EXTERNAL, PORT)
    announces = [d for d in gateway.seen if d[:2] == b"\x02\x00"]
    assert len(announces) == 1  # one probe serves both
    assert sorted(d[36] for d in gateway.seen if d[1] == 1) == [6, 17]
    status = machine.status(100.0)
    assert status["protocol"] == "pcp" and status["tcp"] == {
        "state": "mapped", "protocol": "pcp", "external": f"{EXTERNAL}:{PORT}", "expires_in": 7100.0, "error": None}


def test_natpmp_maps_tcp_with_opcode_2_and_renews_both() -> None:
    machine, gateway = mapper(transports=BOTH, protocols=(Protocol.NATPMP,), lease=7200), Gateway(lifetime=600)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    assert machine.mapping_of(TCP).protocol is Protocol.NATPMP and machine.mapping_of(UDP) is not None
    gateway.seen.clear()
    run_until(machine, gateway, 350.0)
    assert sorted(d[1] for d in gateway.seen) == [1, 2]  # one renewal each at 300 s
    assert machine.mapping_of(TCP).granted == machine.mapping_of(UDP).granted == 300.0
    machine.close(400.0)
    deletes = [out.data for out in machine.outputs() if isinstance(out, SendToGateway)]
    assert deletes == [natpmp.map_request(PORT, 0, 0), natpmp.map_request(PORT, 0, 0, natpmp.TCP)]


def test_upnp_maps_each_transport_and_deletes_each() -> None:
    machine = mapper(transports=BOTH, protocols=(Protocol.UPNP,))
    machine.probe(0.0)
    machine.upnp_found(EXTERNAL, 0.5)
    assert machine.outputs() == [UpnpDiscover(), UpnpMap(PORT, PORT, 7200, UDP), UpnpMap(PORT, PORT, 7200, TCP)]
    machine.upnp_mapped(PORT, 7200, 0.6)
    machine.upnp_mapped(PORT + 1, 7200, 0.7, transport=TCP)
    assert machine.mapping_of(TCP).external == (EXTERNAL, PORT + 1) and machine.mapping.external == (EXTERNAL, PORT)
    machine.outputs()
    machine.close(1.0)
    assert machine.outputs() == [UpnpUnmap(PORT, UDP), MappingChanged(None, UDP),
                                 UpnpUnmap(PORT + 1, TCP), MappingChanged(None, TCP)]


def test_a_refused_tcp_mapping_tries_the_next_protocol_and_leaves_udp_mapped() -> None:
    machine, gateway = mapper(transports=BOTH, protocols=(Protocol.PCP, Protocol.NATPMP)), Gateway(refuse_tcp=True)
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    assert machine.mapping_of(UDP).protocol is Protocol.PCP
    assert machine.mapping_of(TCP) is None  # PCP refused TCP; NAT-PMP too
    assert machine.status(1.0)["tcp"]["state"] == "none"
    assert machine.status(1.0)["tcp"]["error"] == "nat-pmp: not authorized or refused"
    gateway.refuse_tcp = False
    machine.probe(10.0)
    exchange(machine, gateway, 10.0)
    assert machine.mapping_of(TCP).protocol is Protocol.PCP


def test_a_restarted_gateway_has_both_ports_mapped_again_at_once() -> None:
    machine, gateway = mapper(transports=BOTH), Gateway()
    machine.probe(0.0)
    exchange(machine, gateway, 0.0)
    out = restart_then_announce(machine, gateway, 1000.0)
    assert [d.data[36] for d in out] == [17, 6] and machine.restarts == 1
    for request in out:
        machine.receive(gateway.answer(request.data), 1005.0)
    assert machine.mapping_of(UDP).granted == machine.mapping_of(TCP).granted == 1005.0
    assert machine.status(1005.0)["tcp"]["error"] is None


def test_a_pcp_answer_is_matched_by_nonce_and_protocol() -> None:
    machine = mapper(transports=BOTH, protocols=(Protocol.PCP,))
    machine.probe(0.0)
    gateway = Gateway()
    for out in machine.outputs():  # the announce only
        machine.receive(gateway.answer(out.data), 0.0)
    udp_request, tcp_request = [out.data for out in machine.outputs()]
    machine.receive(gateway.answer(tcp_request), 0.1)
    assert machine.mapping_of(TCP) is not None and machine.mapping_of(UDP) is None
    assert machine.phase is Phase.MAPPING  # the UDP request is still being asked


# ---- external TCP port 443 for the punch port (`portmap.tcp_443`)


def test_the_tcp_port_asks_for_443_and_the_udp_port_for_its_own_number() -> None:
    for protocol in (Protocol.PCP, Protocol.NATPMP):
        machine, gateway = mapper(transports=BOTH, protocols=(protocol,), tcp_external=443), Gateway(taken=set())
        machine.probe(0.0)
        exchange(machine, gateway, 0.0)
        assert machine.mapping_of(TCP).external == (EXTERNAL, 443) and machine.mapping_of(UDP).external == (EXTERNAL, PORT)
        gateway.seen.clear()
        run_until(machine, gateway, 3700.0)
        assert machine.mapping_of(TCP).external == (EXTERNAL, 443), "renewed at 443"


def test_a_gateway_that_has_443_taken_grants_another_port_and_nothing_is_replaced() -> None:
    """NAT-PMP and PCP give a port in use to no one else: the gateway picks another."""
    for protocol in (Protocol.PCP, Protocol.NATPMP):
        machine = mapper(transports=BOTH, protocols=(protocol,), tcp_external=443)
        gateway = Gateway(taken={443}, external_port=PORT + 7)
        machine.probe(0.0)
        exchange(machine, gateway, 0.0)
        assert machine.mapping_of(TCP).external == (EXTERNAL, PORT + 7)


def test_upnp_asks_for_443_only_with_the_punch_ports_number_to_fall_back_to() -> None:
    machine = mapper(transports=BOTH, protocols=(Protocol.UPNP,), tcp_external=443)
    machine.probe(0.0)
    machine.upnp_found(EXTERNAL, 0.5)
    assert machine.outputs() == [UpnpDiscover(), UpnpMap(PORT, PORT, 7200, UDP), UpnpMap(PORT, 443, 7200, TCP, PORT)]
    machine.upnp_mapped(PORT, 7200, 0.6)
    machine.upnp_mapped(443, 7200, 0.7, transport=TCP)
    assert machine.outputs() == [MappingChanged(machine.mapping_of(UDP), UDP), MappingChanged(machine.mapping_of(TCP), TCP)]
    renewals = run_until(machine, Gateway(), 3700.0)
    assert renewals == [UpnpMap(PORT, PORT, 7200, UDP), UpnpMap(PORT, 443, 7200, TCP)], "the port held, no fallback"
