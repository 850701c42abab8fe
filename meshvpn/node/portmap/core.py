"""Which router port-mapping protocol to use, and the life of the one mapping we hold.

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
* **Map** our UDP port, asking for the same external port and `lease` seconds. A refusal or
  silence moves on to the next protocol that answered.
* **Renew** at half the granted lifetime; a mapping that lapses unrenewed is dropped and the
  gateway probed again. `probe` (network change) drops the mapping and starts over.
* **Restart**: every NAT-PMP and PCP answer carries the gateway's epoch (`epoch.py`); one that
  says the gateway restarted, and so forgot our mapping, has it mapped again at once.
* **Delete** on `close`: lifetime 0 (NAT-PMP, PCP with the same nonce) or DeletePortMapping.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from meshvpn.node.portmap import natpmp, pcp
from meshvpn.node.portmap.epoch import EpochWatch
from meshvpn.node.portmap.natpmp import PortMapError


class Protocol(enum.StrEnum):
    """A port-mapping protocol, in order of preference."""

    PCP = "pcp"
    NATPMP = "nat-pmp"
    UPNP = "upnp"


PREFERENCE = (Protocol.PCP, Protocol.NATPMP, Protocol.UPNP)
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


@dataclass(frozen=True)
class Mapping:
    """A port the gateway forwards to our UDP port."""

    protocol: Protocol
    external: tuple[str, int]
    lifetime: float
    """Seconds granted; 0: until deleted (UPnP IGD permanent mappings)."""
    granted: float

    @property
    def renew_at(self) -> float:
        return self.granted + self.lifetime / 2 if self.lifetime else math.inf

    @property
    def expires(self) -> float:
        return self.granted + self.lifetime if self.lifetime else math.inf


@dataclass(frozen=True)
class SendToGateway:
    """Send `data` to the gateway's port 5351 (NAT-PMP and PCP share it)."""

    data: bytes


@dataclass(frozen=True)
class UpnpDiscover:
    """Look for an IGD on the LAN; answer with `upnp_found`."""


@dataclass(frozen=True)
class UpnpMap:
    """AddPortMapping for our UDP port; answer with `upnp_mapped`."""

    internal_port: int
    external_port: int
    lifetime: int


@dataclass(frozen=True)
class UpnpUnmap:
    """DeletePortMapping; no answer needed."""

    external_port: int


@dataclass(frozen=True)
class MappingChanged:
    """The endpoint to announce changed (None: we hold no mapping)."""

    mapping: Optional[Mapping]


Output = Union[SendToGateway, UpnpDiscover, UpnpMap, UpnpUnmap, MappingChanged]


@dataclass
class _Asking:
    """One request to the gateway, retransmitted until answered or out of tries."""

    data: bytes
    next_at: float
    interval: float = RTO
    left: int = TRIES - 1


@dataclass
class PortMapper:
    """One node's port mapping for its UDP port `internal_port`, asked from address `client`."""

    internal_port: int
    client: str
    random_bytes: Callable[[int], bytes]
    lease: int = 7200
    protocols: tuple[Protocol, ...] = PREFERENCE
    map_port: bool = True
    """False: only find out which protocols the gateway speaks (`meshvpn netcheck`)."""
    phase: Phase = Phase.PROBING
    mapping: Optional[Mapping] = None
    supported: dict[Protocol, Optional[str]] = field(default_factory=dict)
    """Protocols that answered the probe, with the external address each reported (if any)."""
    error: Optional[str] = None
    """Why there is no mapping, or the last refusal."""
    drops: int = 0
    """Datagrams from the gateway that could not be read."""
    restarts: int = 0
    """Gateway restarts seen in the epochs of its answers."""
    _asking: dict[Protocol, _Asking] = field(default_factory=dict)
    _upnp_pending: bool = False
    _using: Optional[Protocol] = None
    _tried: set = field(default_factory=set)
    _nonce: bytes = b""
    _next_renew: float = math.inf
    _out: list = field(default_factory=list)
    _epochs: dict[Protocol, EpochWatch] = field(default_factory=dict)

    # ---- inputs

    def probe(self, now: float) -> None:
        """Start over: drop any mapping (re-probe after a network change) and ask every protocol."""
        self._forget(now)
        self.phase, self.error, self._using = Phase.PROBING, None, None
        self.supported.clear()
        self._tried.clear()
        self._asking.clear()
        self._epochs = {Protocol.PCP: EpochWatch(symmetric=True), Protocol.NATPMP: EpochWatch(symmetric=False)}
        if Protocol.PCP in self.protocols:
            self._ask(Protocol.PCP, pcp.announce_request(self.client), now)
        if Protocol.NATPMP in self.protocols:
            self._ask(Protocol.NATPMP, natpmp.address_request(), now)
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
            self.error = str(exc)
        self._decide(now)

    def upnp_found(self, external: Optional[str], now: float, why: str = "") -> None:
        """The shell's answer to `UpnpDiscover`: the IGD's external address, or None."""
        if not self._upnp_pending or self.phase is not Phase.PROBING:
            return
        self._upnp_pending = False
        if external is not None:
            self.supported[Protocol.UPNP] = external
        elif why:
            self.error = f"upnp: {why}"
        self._decide(now)

    def upnp_mapped(self, external_port: Optional[int], lifetime: int, now: float, why: str = "") -> None:
        """The shell's answer to `UpnpMap`: the external port granted, or None and why not."""
        if self.phase is Phase.CLOSED and self._using is Protocol.UPNP and external_port is not None:
            self._out.append(UpnpUnmap(external_port))  # granted while we were closing
            return
        if self._using is not Protocol.UPNP or self.phase not in (Phase.MAPPING, Phase.MAPPED):
            return
        if external_port is None:
            self._refused(f"upnp: {why or 'mapping refused'}", now)
            return
        self._granted(Protocol.UPNP, self.supported.get(Protocol.UPNP), external_port, lifetime, now)

    def handle_timer(self, now: float) -> None:
        for protocol, asking in list(self._asking.items()):
            if now < asking.next_at:
                continue
            if asking.left:
                asking.left -= 1
                asking.interval *= 2
                asking.next_at = now + asking.interval
                self._out.append(SendToGateway(asking.data))
            else:
                del self._asking[protocol]
                if protocol is self._using:
                    self._refused(f"{protocol}: no answer from the gateway", now)
        mapping = self.mapping
        if mapping is not None and now >= mapping.expires:
            self.probe(now)
            self.error = self.error or f"{mapping.protocol}: the mapping lapsed unrenewed"
            return
        if self.phase is Phase.MAPPED and mapping is not None and now >= self._next_renew:
            # Half of what is left, so a gateway that misses renewals is asked a few more times.
            self._next_renew = now + max(RENEW_MIN, (mapping.expires - now) / 2)
            self._request(mapping.protocol, now)
        self._decide(now)

    def close(self, now: float) -> None:
        """Delete our mapping (best effort: nothing waits for the answer)."""
        self._forget(now)
        self.phase = Phase.CLOSED
        self._asking.clear()

    # ---- outputs

    def outputs(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> Optional[float]:
        times = [asking.next_at for asking in self._asking.values()]
        if self.mapping is not None:
            times += [self._next_renew, self.mapping.expires]
        finite = [t for t in times if t != math.inf]
        return min(finite, default=None)

    def status(self, now: float) -> dict:
        """For `meshvpn status` and `netcheck`: protocol, endpoint, lease left, what answered."""
        mapping = self.mapping
        return {
            "state": self.phase.value,
            "protocol": None if mapping is None else mapping.protocol.value,
            "external": None if mapping is None else f"{mapping.external[0]}:{mapping.external[1]}",
            "expires_in": None if mapping is None or not mapping.lifetime else round(mapping.expires - now, 1),
            "available": [p.value for p in PREFERENCE if p in self.supported],
            "error": self.error,
            "gateway_restarts": self.restarts,
        }

    # ---- the machine

    def _ask(self, protocol: Protocol, data: bytes, now: float) -> None:
        self._asking[protocol] = _Asking(data, now + RTO)
        self._out.append(SendToGateway(data))

    def _on_pcp(self, response: pcp.Response, now: float) -> None:
        self._restarted(Protocol.PCP, response.epoch, now, remap=response.opcode == pcp.OP_ANNOUNCE)
        if response.opcode == pcp.OP_ANNOUNCE:
            if self._using is not Protocol.PCP and self._asking.pop(Protocol.PCP, None) is not None:
                if response.result == 0:
                    self.supported[Protocol.PCP] = None
                elif self.mapping is None:
                    self.error = f"pcp: {pcp.result_text(response.result)}"
            return
        if self._using is not Protocol.PCP or response.nonce not in (None, self._nonce):
            return
        self._asking.pop(Protocol.PCP, None)
        if response.result or response.external_port is None:
            self._refused(f"pcp: {pcp.result_text(response.result)}", now)
        else:
            self._granted(Protocol.PCP, response.external, response.external_port, response.lifetime, now)

    def _on_natpmp(self, response: natpmp.AddressResponse | natpmp.MapResponse, now: float) -> None:
        address = isinstance(response, natpmp.AddressResponse)
        self._restarted(Protocol.NATPMP, response.epoch, now, remap=address)
        if address:
            if self._using is not Protocol.NATPMP and self._asking.pop(Protocol.NATPMP, None) is not None:
                if response.result == 0:
                    self.supported[Protocol.NATPMP] = response.external
                elif self.mapping is None:
                    self.error = f"nat-pmp: {natpmp.result_text(response.result)}"
            return
        if self._using is not Protocol.NATPMP or response.internal_port != self.internal_port:
            return
        self._asking.pop(Protocol.NATPMP, None)
        if response.result or not response.lifetime:
            self._refused(f"nat-pmp: {natpmp.result_text(response.result)}", now)
        else:
            external = self.supported.get(Protocol.NATPMP)
            self._granted(Protocol.NATPMP, external, response.external_port, response.lifetime, now)

    def _restarted(self, protocol: Protocol, epoch: int, now: float, remap: bool) -> None:
        """Count a restart that `epoch` reveals; with `remap`, map again at once if we map with it.

        A MAP answer that reveals one is itself the new mapping (the renewal made it afresh);
        any other answer (the gateway's announcement after a restart) leaves us without one."""
        watch = self._epochs.get(protocol)
        if watch is None or not watch.restarted(epoch, now):
            return
        self.restarts += 1
        if remap and self._using is protocol and self.phase is Phase.MAPPED:
            self.error = f"{protocol}: the gateway restarted (epoch {epoch}), mapping again"
            self._request(protocol, now)

    def _decide(self, now: float) -> None:
        """In the probe: map with the best protocol that answered once no better one is pending."""
        if self.phase is not Phase.PROBING:
            return
        if not self.map_port:
            if not any(self._pending(protocol) for protocol in PREFERENCE):
                self.phase = Phase.PROBED
            return
        for protocol in PREFERENCE:
            if protocol in self.supported and protocol not in self._tried:
                self._tried.add(protocol)
                self._request(protocol, now)
                return
            if self._pending(protocol):
                return
        self.phase = Phase.NONE
        if self.error is None:
            self.error = "the gateway answered none of " + ", ".join(p.value for p in self.protocols)

    def _pending(self, protocol: Protocol) -> bool:
        if protocol is Protocol.UPNP:
            return self._upnp_pending
        return protocol in self._asking and protocol not in self._tried

    def _request(self, protocol: Protocol, now: float) -> None:
        """Ask `protocol` for the mapping (or its renewal: same nonce, same external port)."""
        self._using = protocol
        if self.phase is Phase.PROBING:
            self.phase = Phase.MAPPING
        wanted = self.mapping.external[1] if self.mapping is not None else self.internal_port
        if protocol is Protocol.UPNP:
            self._out.append(UpnpMap(self.internal_port, wanted, self.lease))
        elif protocol is Protocol.NATPMP:
            self._ask(protocol, natpmp.map_request(self.internal_port, wanted, self.lease), now)
        else:
            if self.mapping is None or self.mapping.protocol is not Protocol.PCP:
                self._nonce = self.random_bytes(pcp.NONCE_SIZE)
            self._ask(protocol, pcp.map_request(self.client, self._nonce, self.internal_port, wanted, self.lease), now)

    def _granted(self, protocol: Protocol, host: Optional[str], port: int, lifetime: int, now: float) -> None:
        if host is None:
            self._refused(f"{protocol}: the gateway gave no external address", now)
            return
        old, self.mapping = self.mapping, Mapping(protocol, (host, port), float(lifetime), now)
        self.phase, self.error, self._next_renew = Phase.MAPPED, None, self.mapping.renew_at
        if old is None or old.external != self.mapping.external:
            self._out.append(MappingChanged(self.mapping))

    def _refused(self, why: str, now: float) -> None:
        """The protocol in use refused or went silent: keep a live mapping's last grant, else move on."""
        self.error = why
        if self.phase is Phase.MAPPED:
            return  # a renewal failed: the mapping lives until it lapses, then we probe again
        self.phase = Phase.PROBING
        self._decide(now)

    def _forget(self, now: float) -> None:
        """Delete the mapping we hold, if any, and say so."""
        mapping, self.mapping = self.mapping, None
        if mapping is None:
            return
        if mapping.protocol is Protocol.UPNP:
            self._out.append(UpnpUnmap(mapping.external[1]))
        elif mapping.protocol is Protocol.NATPMP:
            self._out.append(SendToGateway(natpmp.map_request(self.internal_port, 0, 0)))
        else:
            self._out.append(SendToGateway(
                pcp.map_request(self.client, self._nonce, self.internal_port, 0, 0)))
        self._out.append(MappingChanged(None))
