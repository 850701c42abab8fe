"""Optional Prometheus endpoint: each role's counters, read at scrape time.

Nothing here runs per packet.  The data path already counts what it does (per-peer
counters, drops by reason, relay stats); a scrape reads those structures and turns them
into metric families.  The HTTP endpoint is served by the role's own event loop, so a
scrape reads the counters between two callbacks and never races the data path (no
thread, no lock).  One registry per process keeps the role's families apart from any
library's default metrics.

prometheus-client is an optional dependency (``pip install meshvpn[metrics]``): without
it a configured ``metrics.listen`` is reported once in the log and the role runs on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sized

from meshvpn import __version__
from meshvpn.config import Address
from meshvpn.errors import MeshError

log = logging.getLogger("meshvpn.metrics")

PATH_KINDS = ("lan", "direct", "relay", "none")
"""Values of the ``kind`` label of ``meshvpn_peer_path``; "none" while a peer has no path."""
REQUEST_TIMEOUT = 5.0
"""Seconds a scraper has to send its request line and headers."""
REQUEST_LIMIT = 8192
"""Bytes of request head accepted; a scrape request is a few hundred."""


@dataclass
class Family:
    """One metric as a role reports it, independent of prometheus-client."""

    name: str
    """Full name without the ``_total`` suffix of counters (the exposition adds it)."""
    help: str
    kind: str
    """"counter" or "gauge"."""
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    """(label values, value) pairs."""

    def add(self, value: float, *label_values: str) -> "Family":
        self.samples.append((label_values, float(value)))
        return self


Collect = Callable[[], Iterable[Family]]


def _counter(name: str, help: str, *labels: str) -> Family:
    return Family(name, help, "counter", labels)


def _gauge(name: str, help: str, *labels: str) -> Family:
    return Family(name, help, "gauge", labels)


def _by_reason(family: Family, counts: dict, *labels: str) -> Family:
    for reason, count in counts.items():
        family.add(count, *labels, str(reason))
    return family


# ---- the three roles ---------------------------------------------------------------


def node_families(core, dataplane) -> list[Family]:
    """``meshvpn daemon``: per-peer traffic, path, handshakes and drops; node-wide drops and relay use."""
    rx_bytes = _counter("meshvpn_peer_rx_bytes", "Inner bytes received from the peer and written to the TUN.", "peer")
    tx_bytes = _counter("meshvpn_peer_tx_bytes", "Inner bytes sealed and sent to the peer.", "peer")
    rx_packets = _counter("meshvpn_peer_rx_packets", "Inner packets received from the peer.", "peer")
    tx_packets = _counter("meshvpn_peer_tx_packets", "Inner packets sealed and sent to the peer.", "peer")
    handshakes = _counter("meshvpn_peer_handshakes", "Handshakes completed with the peer.", "peer")
    rekeys = _counter("meshvpn_peer_rekeys", "Handshakes that replaced a live session with the peer.", "peer")
    path = _gauge("meshvpn_peer_path", "1 for the kind of path the peer is reached by now.", "peer", "kind")
    peer_drops = _counter("meshvpn_peer_drops", "Packets to or from the peer dropped, by reason.", "peer", "reason")
    drops = _counter("meshvpn_drops", "Datagrams and packets dropped before a peer was known, by reason.", "reason")
    peers = _gauge("meshvpn_peers", "Peers by the kind of path they are reached by.", "kind")
    relay = _gauge("meshvpn_relay_connected", "1 while the relay transport is ready.")
    changes = _counter("meshvpn_peer_path_changes", "Changes of the peer's path, by reason.", "peer", "reason")
    change_seconds = _counter("meshvpn_peer_path_change_seconds", "Seconds the timed path changes took "
                              "(search or silence before it, docs/paths.md), summed by reason.", "peer", "reason")
    by_kind = dict.fromkeys(PATH_KINDS, 0)
    for peer in core.peers:
        name, counters = peer.name, peer.counters
        rx_bytes.add(counters.rx_bytes, name)
        tx_bytes.add(counters.tx_bytes, name)
        rx_packets.add(counters.rx_packets, name)
        tx_packets.add(counters.tx_packets, name)
        handshakes.add(counters.handshakes, name)
        rekeys.add(counters.rekeys, name)
        kind = peer.route.path.kind.value if peer.route is not None else "none"
        by_kind[kind] += 1
        for each in PATH_KINDS:
            path.add(each == kind, name, each)
        _by_reason(peer_drops, counters.drops, name)
        _by_reason(changes, peer.path_log.counts, name)
        _by_reason(change_seconds, peer.path_log.seconds, name)
    _by_reason(drops, core.drops + dataplane.drops)
    for kind, count in by_kind.items():
        peers.add(count, kind)
    relay.add(core.routes.relay_endpoint is not None)
    lan = getattr(dataplane, "lan", None)
    return [rx_bytes, tx_bytes, rx_packets, tx_packets, handshakes, rekeys, path, peer_drops, drops, peers, relay,
            changes, change_seconds, *([] if lan is None else lan_families(lan.status()))]


def socket_families(sockets: list[dict], udp_errors: dict[str, int]) -> list[Family]:
    """``meshvpn daemon``: kernel drops on each of its UDP sockets and the namespace's UDP errors."""
    drops = _counter("meshvpn_socket_drops", "Datagrams the kernel dropped on the node's socket "
                     "(receive buffer full), from /proc/net/udp.", "socket")
    rcvbuf = _gauge("meshvpn_socket_rcvbuf_bytes", "Receive buffer the kernel granted the socket.", "socket")
    for entry in sockets:
        drops.add(entry["drops"], entry["socket"])
        rcvbuf.add(entry["rcvbuf"], entry["socket"])
    errors = _by_reason(_counter("meshvpn_udp_errors", "UDP receive errors of the network namespace "
                                 "(/proc/net/snmp), by kind.", "kind"), udp_errors)
    return [drops, rcvbuf, errors]


def lan_families(status: dict) -> list[Family]:
    """Broadcast and multicast across the mesh (``meshvpn status``'s ``self.lan``)."""
    sent = _counter("meshvpn_lan_sent_packets", "Broadcast and multicast packets fanned out to peers, by kind.", "kind")
    copies = _counter("meshvpn_lan_sent_copies", "Copies of fanned-out packets sealed, one per receiving peer.")
    received = _counter("meshvpn_lan_received_packets", "Broadcast and multicast packets from peers delivered.", "kind")
    drops = _counter("meshvpn_lan_drops", "Broadcast, multicast and filtered packets dropped, by reason "
                     "(rate_packets, rate_bytes, access rule N...).", "reason")
    groups = _gauge("meshvpn_lan_groups", "Multicast groups this node's applications joined.")
    copies.add(status["sent"]["copies"])
    for kind in ("broadcast", "multicast"):
        sent.add(status["sent"][kind], kind)
        received.add(status["received"][kind], kind)
    return [sent, copies, received, _by_reason(drops, status["dropped"]), groups.add(len(status["groups"]))]


def coord_families(membership, connections: Sized, rounds=None, backlog=None) -> list[Family]:
    """``meshvpn coord``: nodes online, open connections, control messages by type, refusals,
    with `rounds` (`fanout.RoundTimes`) where the fan-out's time goes, and with `backlog`
    (`backlog.WriteBacklog`) how often slow readers held it back."""
    online = _gauge("meshvpn_coord_nodes_online", "Nodes registered and connected now.").add(membership.online_count())
    open_connections = _gauge("meshvpn_coord_connections", "Open control-channel connections.").add(len(connections))
    received = _counter("meshvpn_coord_messages", "Control messages received from nodes, by type.", "type")
    refused = _counter("meshvpn_coord_auth_failures", "Connections refused, by error code.", "code")
    limited = _counter("meshvpn_coord_rate_limited", "Requests dropped by a rate limit, by message type.", "type")
    dropped = _counter("meshvpn_coord_endpoints_dropped",
                       "Reported endpoints not passed on: loopback, link-local, not a LAN address...")
    punches = _counter("meshvpn_coord_punches_dropped",
                       "Punches another coord instance asked for a node online here that were not sent: the "
                       "requester is no member online elsewhere.")
    return [online, open_connections, _by_reason(received, membership.received), _by_reason(refused, membership.refused),
            _by_reason(limited, membership.limited), dropped.add(membership.endpoints_dropped),
            punches.add(membership.punches_dropped)] + ([] if rounds is None else fanout_families(rounds)) + (
        [] if backlog is None else [_counter("meshvpn_coord_fanout_backlog_waits", "Fan-out slices held back because "
                                             "slowly reading nodes held the backlog budget.").add(backlog.waits)])


def fanout_families(rounds) -> list[Family]:
    """The fan-out's rounds of updates (`fanout.RoundTimes`): averages per round are the
    differences of the sums over those of the count between two scrapes."""
    return [
        _counter("meshvpn_coord_fanout_rounds", "Rounds of peer updates served to every node online.").add(rounds.rounds),
        _counter("meshvpn_coord_fanout_wait_seconds", "Seconds from a window's first change to the start of its "
                 "round, summed over rounds.").add(rounds.waited),
        _counter("meshvpn_coord_fanout_serve_seconds", "Seconds from a round's start to its last node served, "
                 "summed over rounds.").add(rounds.served),
    ]


def relay_families(core, send_errors: int = 0, native: Optional[dict] = None) -> list[Family]:
    """``meshvpn relay``: forwarded packets, bytes and runs, STUN answers, drops by reason, registered nodes.

    `send_errors` are the UDP socket's sends the kernel refused (a full buffer drops, it does not wait);
    `native` what the native forwarding thread counted (`meshvpn.relay.native.TOTALS`), if it runs.
    """
    status = core.status()
    return [
        _counter("meshvpn_relay_forwarded_packets", "Relay envelopes forwarded.").add(status["forwarded"]),
        _counter("meshvpn_relay_forwarded_bytes", "Bytes of relay envelopes forwarded.").add(status["forwarded_bytes"]),
        _counter("meshvpn_relay_runs", "Runs of forwarded envelopes (one endpoint, one source, GSO).").add(status["runs"]),
        _counter("meshvpn_relay_send_errors", "UDP sends (a datagram or a run) the kernel refused.").add(send_errors),
        _counter("meshvpn_relay_hellos", "Relay hellos accepted.").add(core.stats.hellos),
        _counter("meshvpn_relay_stun_answers", "STUN Binding requests answered (the nodes' mapping test).").add(core.stun.answered),
        _gauge("meshvpn_relay_nodes", "Nodes registered now.").add(status["nodes"]),
        _gauge("meshvpn_relay_nodes_tcp", "Nodes registered over TCP now.").add(status["nodes_tcp"]),
        _by_reason(_counter("meshvpn_relay_drops", "Messages dropped, by reason.", "reason"), status["drops"]),
        _by_reason(_counter("meshvpn_relay_native", "What the native forwarding thread counted.", "count"),
                   native or {}),
    ]


# ---- the endpoint --------------------------------------------------------------------


class _Collector:
    """Adapts a role's ``Collect`` to prometheus-client at scrape time."""

    def __init__(self, role: str, collect: Collect) -> None:
        self.role = role
        self.collect_families = collect

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info = GaugeMetricFamily("meshvpn_info", "The running role and version.", labels=("role", "version"))
        info.add_metric((self.role, __version__), 1)
        yield info
        for family in self.collect_families():
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(family.name, family.help, labels=family.labels)
            for labels, value in family.samples:
                metric.add_metric(labels, value)
            yield metric


class MetricsEndpoint:
    """An HTTP endpoint on the role's event loop answering ``GET /metrics``."""

    def __init__(self, role: str, collect: Collect) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(role, collect))
        ProcessCollector(registry=self.registry)
        self._generate = generate_latest
        self._content_type = CONTENT_TYPE_LATEST
        self._server: Optional[asyncio.AbstractServer] = None
        self.address: Optional[tuple[str, int]] = None
        """Where it listens (the real port when the config says 0)."""

    async def start(self, listen: Address) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, listen.host, listen.port,
                                                      limit=REQUEST_LIMIT, reuse_address=True)
        except OSError as exc:
            raise MeshError(f"metrics cannot listen on {listen}: {exc.strerror or exc}") from None
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("metrics on http://%s/metrics", Address(*self.address))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def render(self) -> bytes:
        """The exposition text of every family, as a scrape gets it."""
        return self._generate(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, target = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if method not in (b"GET", b"HEAD"):
                writer.write(_response(b"405 Method Not Allowed", b"text/plain", b"GET only\n"))
            elif target.split(b"?", 1)[0] != b"/metrics":
                writer.write(_response(b"404 Not Found", b"text/plain", b"see /metrics\n"))
            else:
                body = self.render()
                writer.write(_response(b"200 OK", self._content_type.encode(), body, method == b"GET"))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def _response(status: bytes, content_type: bytes, body: bytes, with_body: bool = True) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status, content_type, len(body))
    return head + body if with_body else head


async def start_metrics(listen: Optional[Address], role: str, collect: Collect) -> Optional[MetricsEndpoint]:
    """Serve ``collect``'s families on ``listen``; None when it is off or prometheus-client is missing.

    Raises MeshError when the address cannot be bound, so a mistyped port stops the
    service at start instead of silently serving nothing.
    """
    if listen is None:
        return None
    try:
        endpoint = MetricsEndpoint(role, collect)
    except ImportError:
        log.warning("metrics.listen is %s but prometheus-client is not installed: no metrics "
                    "(pip install 'meshvpn[metrics]')", listen)
        return None
    await endpoint.start(listen)
    return endpoint
