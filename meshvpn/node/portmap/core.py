"""Which router port-mapping protocol to use, and the life of the mappings we hold.

Sans-IO: `now` and the PCP nonce's randomness are arguments; the shell carries out `outputs()`
(datagrams for the gateway's port 5351, UPnP calls for a thread) and follows `get_timer()`.

Rules (the daemon's `meshvpn.node.portmap.shell` drives them):

* **Probe** all allowed protocols at once: PCP ANNOUNCE and the NAT-PMP external-address query
  to the gateway (retried at 0.25, 0.5, 1 s, as RFC 6886 §3.1 starts), UPnP IGD discovery in
  the shell. Nothing waits on it: the node runs without a mapping until one is granted.
* **Choose** by preference, PCP > NAT-PMP > UPnP IGD (PCP and NAT-PMP say how long a mapping
  lives and answer in one round trip; UPnP IGD is SOAP over HTTP): the best protocol that
  answered, once no better one is still being asked. Nothing answered: no mapping, and the
  reason is kept for `status` and `netcheck`.
* **Map** each of our ports (the UDP port, and the TCP punch port when the node listens on one:
  `transports`), asking for the same external port (for the TCP port `tcp_external`, 443, first)
  and `lease` seconds. Each mapping is a
  `_Lease` of its own, asked with the best protocol that answered: the probe, the gateway
  socket and the epoch watch serve them all. A refusal or silence moves that mapping on to the
  next protocol that answered.
* **Renew** at half the granted lifetime; a mapping that lapses unrenewed is dropped and the
  gateway probed again. `probe` (network change) drops the mapping and starts over.
* **Restart**: every NAT-PMP and PCP answer carries the gateway's epoch (`epoch.py`); one that
  says the gateway restarted, and so forgot our mappings, has each mapped again at once. An
  announcement in the protocol we do not use counts too (miniupnpd announces only in PCP).
* **Delete** on `close`: lifetime 0 (NAT-PMP, PCP with the same nonce) or DeletePortMapping.

`mapping`, `phase` and `error` speak of the first transport (the UDP port); `mapping_of` of any.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from meshvpn.node.portmap import natpmp, pcp
from meshvpn.node.portmap.epoch import EpochWatch
from meshvpn.node.portmap.events import (
    Mapping, MappingChanged, Output, Protocol, SendToGateway, Transport, UpnpDiscover, UpnpMap, UpnpUnmap,
)
from meshvpn.node.portmap.natpmp import PortMapError

PREFERENCE = (Protocol.PCP, Protocol.NATPMP, Protocol.UPNP)
EPOCH_PROTOCOLS = (Protocol.PCP, Protocol.NATPMP)
"""The protocols whose every answer carries the gateway's epoch."""
RTO = 0.25
"""First retransmission timeout of a request to the gateway; it doubles."""
TRIES = 3
RENEW_MIN = 5.0
"""Seconds at least between renewal attempts after one failed."""


class Phase(enum.StrEnum):
    PROBING = "probing"
    MAPPING = "mapping"
    MAPPED = "mapped"
    NONE = "none"
    """No protocol answered, or every one refused."""
    PROBED = "probed"
    """Every protocol answered or gave up, and nothing was to be mapped (`map_port` off: netcheck)."""
    CLOSED = "closed"


@dataclass
class _Asking:
    """One request to the gateway, retransmitted until answered or out of tries."""

    data: bytes
    next_at: float
    interval: float = RTO
    left: int = TRIES - 1


@dataclass
class _Lease:
    """One of our ports and its mapping: asked, granted, renewed and deleted on its own."""

    transport: Transport
    phase: Phase = Phase.PROBING
    mapping: Optional[Mapping] = None
    using: Optional[Protocol] = None
    tried: set = field(default_factory=set)
    nonce: bytes = b""
    """PCP's mapping nonce: a renewal or deletion repeats it."""
    next_renew: float = math.inf
    error: Optional[str] = None
    """Why there is no mapping, or the last refusal."""

    def status(self, now: float) -> dict:
        mapping = self.mapping
        return {
            "state": self.phase.value,
            "protocol": None if mapping is None else mapping.protocol.value,
            "external": None if mapping is None else f"{mapping.external[0]}:{mapping.external[1]}",
            "expires_in": None if mapping is None or not mapping.lifetime else round(mapping.expires - now, 1),
            "error": self.error,
        }


AskKey = tuple[Protocol, Optional[Transport]]
"""Whose request: a protocol's probe (transport None) or its mapping of one transport."""


@dataclass
class PortMapper:
    """One node's port mappings of its port `internal_port`, asked from address `client`."""

    internal_port: int
    client: str
    random_bytes: Callable[[int], bytes]
    lease: int = 7200
    protocols: tuple[Protocol, ...] = PREFERENCE
    map_port: bool = True
    """False: only find out which protocols the gateway speaks (`meshvpn netcheck`)."""
    transports: tuple[Transport, ...] = (Transport.UDP,)
    """Which of our ports to map: the UDP port, and the TCP punch port (the same number) if any."""
    tcp_external: Optional[int] = None
    """The external port to ask first for the TCP punch port (443, which networks that let out only
    TCP to port 443 reach); None: the punch port's own number. NAT-PMP and PCP grant another port
    when it is taken (they take no port from another mapping); UPnP asks for it only while the
    gateway holds no mapping of it (`UpnpMap.fallback`)."""
    supported: dict[Protocol, Optional[str]] = field(default_factory=dict)
    """Protocols that answered the probe, with the external address each reported (if any)."""
    drops: int = 0
    """Datagrams from the gateway that could not be read."""
    restarts: int = 0
    """Gateway restarts seen in the epochs of its answers."""
    _leases: dict[Transport, _Lease] = field(default_factory=dict)
    _asking: dict[AskKey, _Asking] = field(default_factory=dict)
    _upnp_pending: bool = False
    _out: list = field(default_factory=list)
    _epochs: dict[Protocol, EpochWatch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._leases = {transport: _Lease(transport) for transport in self.transports}

    # ---- the first transport's mapping (the UDP port), and any other's

    @property
    def phase(self) -> Phase:
        return self._first.phase

    @property
    def mapping(self) -> Optional[Mapping]:
        return self._first.mapping

    @property
    def error(self) -> Optional[str]:
        return self._first.error

    def mapping_of(self, transport: Transport) -> Optional[Mapping]:
        lease = self._leases.get(transport)
        return None if lease is None else lease.mapping

    @property
    def _first(self) -> _Lease:
        return self._leases[self.transports[0]]

    # ---- inputs

    def probe(self, now: float) -> None:
        """Start over: drop any mapping (re-probe after a network change) and ask every protocol."""
        for lease in self._leases.values():
            self._forget(lease)
        self._leases = {transport: _Lease(transport) for transport in self.transports}
        self.supported.clear()
        self._asking.clear()
        self._epochs = {Protocol.PCP: EpochWatch(symmetric=True), Protocol.NATPMP: EpochWatch(symmetric=False)}
        if Protocol.PCP in self.protocols:
            self._ask((Protocol.PCP, None), pcp.announce_request(self.client), now)
        if Protocol.NATPMP in self.protocols:
            self._ask((Protocol.NATPMP, None), natpmp.address_request(), now)
        self._upnp_pending = Protocol.UPNP in self.protocols
        if self._upnp_pending:
            self._out.append(UpnpDiscover())
        self._decide(now)

    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the gateway's port 5351."""
        try:
            if data[:1] == bytes([pcp.VERSION]):
                self._on_pcp(pcp.decode(data), now)
            else:
                self._on_natpmp(natpmp.decode(data), now)
        except PortMapError as exc:
            self.drops += 1
            for lease in self._leases.values():
                lease.error = str(exc)
        self._decide(now)

    def upnp_found(self, external: Optional[str], now: float, why: str = "") -> None:
        """The shell's answer to `UpnpDiscover`: the IGD's external address, or None."""
        unsettled = (Phase.PROBING, Phase.MAPPING)
        if not self._upnp_pending or all(lease.phase not in unsettled for lease in self._leases.values()):
            return
        self._upnp_pending = False
        if external is not None:
            self.supported[Protocol.UPNP] = external
        elif why:
            self._note(f"upnp: {why}")
        self._decide(now)

    def upnp_mapped(self, external_port: Optional[int], lifetime: int, now: float, why: str = "",
                    transport: Transport = Transport.UDP) -> None:
        """The shell's answer to `UpnpMap` of `transport`: the external port granted, or None and why not."""
        lease = self._leases.get(transport)
        if lease is None or lease.using is not Protocol.UPNP:
            return
        if lease.phase is Phase.CLOSED and external_port is not None:
            self._out.append(UpnpUnmap(external_port, transport))  # granted while we were closing
            return
        if lease.phase not in (Phase.MAPPING, Phase.MAPPED):
            return
        if external_port is None:
            self._refused(lease, f"upnp: {why or 'mapping refused'}", now)
            return
        self._granted(lease, Protocol.UPNP, self.supported.get(Protocol.UPNP), external_port, lifetime, now)

    def handle_timer(self, now: float) -> None:
        for key, asking in list(self._asking.items()):
            if now < asking.next_at:
                continue
            if asking.left:
                asking.left -= 1
                asking.interval *= 2
                asking.next_at = now + asking.interval
                self._out.append(SendToGateway(asking.data))
                continue
            del self._asking[key]
            protocol, transport = key
            lease = None if transport is None else self._leases.get(transport)
            if lease is not None and lease.using is protocol:
                self._refused(lease, f"{protocol}: no answer from the gateway", now)
        for lease in list(self._leases.values()):
            mapping = lease.mapping
            if mapping is not None and now >= mapping.expires:
                self.probe(now)
                lapsed = self._leases[lease.transport]
                lapsed.error = lapsed.error or f"{mapping.protocol}: the mapping lapsed unrenewed"
                return
            if lease.phase is Phase.MAPPED and mapping is not None and now >= lease.next_renew:
                # Half of what is left, so a gateway that misses renewals is asked a few more times.
                lease.next_renew = now + max(RENEW_MIN, (mapping.expires - now) / 2)
                self._request(lease, mapping.protocol, now)
        self._decide(now)

    def close(self, now: float) -> None:
        """Delete our mappings (best effort: nothing waits for the answers)."""
        for lease in self._leases.values():
            self._forget(lease)
            lease.phase = Phase.CLOSED
        self._asking.clear()

    # ---- outputs

    def outputs(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> Optional[float]:
        times = [asking.next_at for asking in self._asking.values()]
        for lease in self._leases.values():
            if lease.mapping is not None:
                times += [lease.next_renew, lease.mapping.expires]
        finite = [t for t in times if t != math.inf]
        return min(finite, default=None)

    def status(self, now: float) -> dict:
        """For `meshvpn status` and `netcheck`: protocol, endpoint, lease left, what answered; the
        TCP port's mapping, when we map one, under `tcp`."""
        status = {
            **self._first.status(now),
            "available": [p.value for p in PREFERENCE if p in self.supported],
            "gateway_restarts": self.restarts,
        }
        for transport, lease in self._leases.items():
            if lease is not self._first:
                status[transport.label] = lease.status(now)
        return status

    # ---- the machine

    def _ask(self, key: AskKey, data: bytes, now: float) -> None:
        self._asking[key] = _Asking(data, now + RTO)
        self._out.append(SendToGateway(data))

    def _note(self, why: str) -> None:
        """A probe's bad news: the reason for every port still without a mapping."""
        for lease in self._leases.values():
            if lease.mapping is None:
                lease.error = why

    def _on_pcp(self, response: pcp.Response, now: float) -> None:
        self._restarted(Protocol.PCP, response.epoch, now, remap=response.opcode == pcp.OP_ANNOUNCE)
        if response.opcode == pcp.OP_ANNOUNCE:
            if self._asking.pop((Protocol.PCP, None), None) is not None:
                if response.result == 0:
                    self.supported[Protocol.PCP] = None
                else:
                    self._note(f"pcp: {pcp.result_text(response.result)}")
            return
        lease = next((lease for lease in self._leases.values() if lease.using is Protocol.PCP and (
            (response.nonce, response.protocol) == (lease.nonce, lease.transport)
            if response.nonce is not None else (Protocol.PCP, lease.transport) in self._asking)), None)
        if lease is None:
            return
        self._asking.pop((Protocol.PCP, lease.transport), None)
        if response.result or response.external_port is None:
            self._refused(lease, f"pcp: {pcp.result_text(response.result)}", now)
        else:
            self._granted(lease, Protocol.PCP, response.external, response.external_port, response.lifetime, now)

    def _on_natpmp(self, response: natpmp.AddressResponse | natpmp.MapResponse, now: float) -> None:
        address = isinstance(response, natpmp.AddressResponse)
        self._restarted(Protocol.NATPMP, response.epoch, now, remap=address)
        if address:
            if self._asking.pop((Protocol.NATPMP, None), None) is not None:
                if response.result == 0:
                    self.supported[Protocol.NATPMP] = response.external
                else:
                    self._note(f"nat-pmp: {natpmp.result_text(response.result)}")
            return
        lease = self._leases.get(Transport(response.protocol))
        if lease is None or lease.using is not Protocol.NATPMP or response.internal_port != self.internal_port:
            return
        self._asking.pop((Protocol.NATPMP, lease.transport), None)
        if response.result or not response.lifetime:
            self._refused(lease, f"nat-pmp: {natpmp.result_text(response.result)}", now)
        else:
            external = self.supported.get(Protocol.NATPMP)
            self._granted(lease, Protocol.NATPMP, external, response.external_port, response.lifetime, now)

    def _restarted(self, protocol: Protocol, epoch: int, now: float, remap: bool) -> None:
        """Count a restart that `epoch` reveals; with `remap`, map again at once every port mapped
        through NAT-PMP or PCP: the restarted gateway forgot them all.

        A MAP answer that reveals one is itself the new mapping (the renewal made it afresh);
        any other answer (the gateway's announcement after a restart) leaves us without one. An
        announcement in a protocol we do not ask with is read against the epoch of one we do: a
        gateway that speaks both keeps one epoch, and miniupnpd announces its start in PCP alone,
        which a node mapping through NAT-PMP only would otherwise learn of at its renewal."""
        if protocol not in self.protocols:
            protocol = next((asked for asked in EPOCH_PROTOCOLS if asked in self.protocols), protocol)
        watch = self._epochs.get(protocol)
        if watch is None or not watch.restarted(epoch, now):
            return
        self.restarts += 1
        for lease in self._leases.values():
            if remap and lease.using in EPOCH_PROTOCOLS and lease.phase is Phase.MAPPED:
                lease.error = f"{lease.using}: the gateway restarted (epoch {epoch}), mapping again"
                self._request(lease, lease.using, now)

    def _decide(self, now: float) -> None:
        """In the probe: map each port with the best protocol that answered once no better one is pending."""
        for lease in self._leases.values():
            if lease.phase is not Phase.PROBING:
                continue
            if not self.map_port:
                if not any(self._pending(protocol) for protocol in PREFERENCE):
                    lease.phase = Phase.PROBED
                continue
            self._choose(lease, now)

    def _choose(self, lease: _Lease, now: float) -> None:
        for protocol in PREFERENCE:
            if protocol in self.supported and protocol not in lease.tried:
                lease.tried.add(protocol)
                self._request(lease, protocol, now)
                return
            if self._pending(protocol):
                return
        lease.phase = Phase.NONE
        if lease.error is None:
            lease.error = "the gateway answered none of " + ", ".join(p.value for p in self.protocols)

    def _pending(self, protocol: Protocol) -> bool:
        """Whether the probe still asks `protocol`."""
        if protocol is Protocol.UPNP:
            return self._upnp_pending
        return (protocol, None) in self._asking

    def _request(self, lease: _Lease, protocol: Protocol, now: float) -> None:
        """Ask `protocol` for the lease's mapping (or its renewal: same nonce, same external port)."""
        lease.using = protocol
        if lease.phase is Phase.PROBING:
            lease.phase = Phase.MAPPING
        transport = lease.transport
        first = self.tcp_external if transport is Transport.TCP and self.tcp_external else self.internal_port
        wanted = lease.mapping.external[1] if lease.mapping is not None else first
        if protocol is Protocol.UPNP:
            fallback = self.internal_port if wanted != self.internal_port and lease.mapping is None else None
            self._out.append(UpnpMap(self.internal_port, wanted, self.lease, transport, fallback))
        elif protocol is Protocol.NATPMP:
            self._ask((protocol, transport), natpmp.map_request(self.internal_port, wanted, self.lease, transport), now)
        else:
            if lease.mapping is None or lease.mapping.protocol is not Protocol.PCP:
                lease.nonce = self.random_bytes(pcp.NONCE_SIZE)
            request = pcp.map_request(self.client, lease.nonce, self.internal_port, wanted, self.lease,
                                      protocol=transport)
            self._ask((protocol, transport), request, now)

    def _granted(self, lease: _Lease, protocol: Protocol, host: Optional[str], port: int, lifetime: int,
                 now: float) -> None:
        if host is None:
            self._refused(lease, f"{protocol}: the gateway gave no external address", now)
            return
        old = lease.mapping
        lease.mapping = Mapping(protocol, (host, port), float(lifetime), now, lease.transport)
        lease.phase, lease.error, lease.next_renew = Phase.MAPPED, None, lease.mapping.renew_at
        if old is None or old.external != lease.mapping.external:
            self._out.append(MappingChanged(lease.mapping, lease.transport))

    def _refused(self, lease: _Lease, why: str, now: float) -> None:
        """The protocol in use refused or went silent: keep a live mapping's last grant, else move on."""
        lease.error = why
        if lease.phase is Phase.MAPPED:
            return  # a renewal failed: the mapping lives until it lapses, then we probe again
        lease.phase = Phase.PROBING
        self._decide(now)

    def _forget(self, lease: _Lease) -> None:
        """Delete the lease's mapping, if any, and say so."""
        mapping, lease.mapping = lease.mapping, None
        if mapping is None:
            return
        transport = lease.transport
        if mapping.protocol is Protocol.UPNP:
            self._out.append(UpnpUnmap(mapping.external[1], transport))
        elif mapping.protocol is Protocol.NATPMP:
            self._out.append(SendToGateway(natpmp.map_request(self.internal_port, 0, 0, transport)))
        else:
            self._out.append(SendToGateway(
                pcp.map_request(self.client, lease.nonce, self.internal_port, 0, 0, protocol=transport)))
        self._out.append(MappingChanged(None, transport))
