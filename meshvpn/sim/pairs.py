"""Two nodes behind any two kinds of NAT: the harness of the traversal, re-mapping and failure sims.

Each node is the real `NodeCore` and data path (`DataPlane`) on a simulated host behind
`meshvpn.sim` NATs; around it sit the pieces its shell would provide, as small as they can be:

* a STUN server that answers ``b"S"`` with the source endpoint (the main socket's public
  endpoint at start, after each `DiscoverEndpoints`, and each `SampleWanted` from a fresh socket
  that stays, for the node punches from it; a sample unanswered within `SAMPLE_TIMEOUT` is lost),
  and real Binding requests too, for a site whose node takes its NAT profile (`Kind.probed`); its
  TCP twin answers each `TcpSampleWanted` (`meshvpn.sim.tcpstun`), as the coord's STUN port does;
  on a dual-stack site (`Kind.ipv6`) the main socket takes both families and each endpoint round
  also asks the server's IPv6 address (`STUN6`), as the daemon asks the coord's;
* the extra sockets an `OpenMappings` asks for, and `socket_for` pinning on the way out;
* two relays (the real core, `meshvpn.sim.relays`) on UDP and on TCP streams, and the node's
  TCP: its punch port and its streams to relays (`meshvpn.sim.streams`) on the host's `TcpStack`;
* a fake coord with the real one's punch rules: a `punch_request` sends a `punch` to both
  sides, each with the other's fresh sample (at most `SAMPLE_LIFETIME` old) and NAT report;
* a TUN that records each packet and echoes every packet that is not an echo itself;
* in a world with a `peer-relay` site, a third node (`World.helper`) on a port-preserving site
  (`helper_kind`: dual-stack too, as the lab's `h` on a dual-stack topology), which the coord
  tells to relay and offers to the others as a peer relay.

The test passes the random source (``random.Random``): every run is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshvpn.control import messages as m
from meshvpn.keys import public_key
from meshvpn.node.core import CoreConfig
from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.node.events import (
    CloseRelayStream, Deliver, DiscoverEndpoints, OpenMappings, OpenRelayStream, PeerPathChanged, SampleWanted,
    SendCoord, SendDatagram, SendRelayFrames, TcpAbort, TcpConnect, TcpSampleWanted, TcpWrite,
)
from meshvpn.node.coorddial import remapped
from meshvpn.node.netchange import NetworkChanged
from meshvpn.node.node import Node as MeshNode
from meshvpn.node.traversal import nat_info
from meshvpn.sim.nat import Nat
from meshvpn.node.announce6 import announced
from meshvpn.sim.clock import Scheduler
from meshvpn.sim.dualstack import DualStackHost, firewalled_host6
from meshvpn.sim.hostnet import HostNetwork
from meshvpn.sim.natprobe import answer_stun, probe_profile
from meshvpn.sim.network import Host, Network, RandomSource
from meshvpn.relaytoken import TokenMinter
from meshvpn.sim.nodes import WALL_OFFSET, ip_packet
from meshvpn.sim.paircoord import Coord
from meshvpn.sim.relays import COORD, TLS_PORT, SimRelay, relay_tokens
from meshvpn.sim.rounds import EndpointRounds
from meshvpn.sim import tcpstun
from meshvpn.sim.streams import PunchPort, RelayStreams
from meshvpn.sim.tcp import TcpStack
from meshvpn.sim.sitekinds import HELPER, PORT, Kind, Site
from meshvpn.wire import Endpoint, MessageType

STUN = ("198.51.100.53", 3478)
STUN6 = ("2001:db8:53::53", 3478)
"""The STUN server's IPv6 address, which a dual-stack node asks for its IPv6 mapping (the coord's, in the daemon)."""
RELAYS = (("near", "198.51.100.20", 0.005), ("far", "192.0.2.200", 0.02))
"""Name, address and one-way delay of the two relays: both nodes make the near one home."""
RELAY_WARM_UP = 0.5
"""Seconds after the coord's welcome by which both nodes are registered with both relays."""
DIAL_AT, WELCOME_AT = 0.155, 0.2
"""When the nodes dial the coord, after STUN answered, and by when a node on a site with one NAT is
registered (a round trip for TCP, one for the register and the welcome: 60 ms)."""
START_LIMIT = 5.0
"""Time by which every node's first registration has arrived (behind a carrier's NAT too)."""
SAMPLE_TIMEOUT = 1.0
"""Seconds a port sample waits for STUN before it is reported lost (the daemon's `discovery.SAMPLE_TIMEOUT`)."""
HELPER_SITE = 3
"""The helper's site number (`a` and `b` have 0 and 1, a test moves a node to 2)."""
_TRANSPORT = (MessageType.DATA, MessageType.KEEPALIVE, MessageType.RELAY)
"""What an extra socket hands the data path, as the daemon does (a peer relay answers on a pinned way)."""
NETWORK = m.NetworkInfo(name="sim", cidr="100.64.0.0/24")

class Randomness(RandomSource, Protocol):
    """The part of `random.Random` the harness uses."""

    def randbytes(self, n: int) -> bytes: ...


class Seeded(Protocol):
    """A random source made from a seed: ``random.Random``."""

    def __call__(self, seed: int) -> Randomness: ...


class Node:
    """The real `Node` and its data path, and the shell pieces they need, on one simulated host."""

    def __init__(self, world: World, index: int, site: Site) -> None:
        self.world, self.site = world, site
        self.name, self.address = f"node{index}", f"100.64.0.{index + 1}"
        private = world.seeded(index).randbytes(32)
        self.public = public_key(private)
        self.node = MeshNode(private, world.seeded(world.seed * 10 + index).randbytes,
                             CoreConfig(wall_offset=WALL_OFFSET), coord_public=public_key(COORD))
        self.data = DataPlane(self.node)
        self.profile = site.kind.reported
        """What the node reports about its NAT (`probe_nat` may learn better)."""
        self.node.set_nat_profile(self.profile)
        self.private = private
        self.mapped6: Endpoint | None = None
        """Our IPv6 endpoint as the STUN server saw it last (a dual-stack site)."""
        self._attach_host()
        self.hostnet = HostNetwork(site.host_ip)
        self.node.set_own_endpoints(self._local() + self._ipv6(), Endpoint(site.observed_host, PORT), site.mapped,
                                    site.mapped_tcp)
        self._attach_tcp()
        self.extra: list = []
        self.public_endpoint: tuple[str, int] | None = None
        self.sampling: dict[int, bytes] = {}
        """Extra socket -> the peer its port sample is for, until STUN answers or `SAMPLE_TIMEOUT`."""
        self.rounds = EndpointRounds(self)
        self.received: list[tuple[float, bytes]] = []
        """What reached the TUN: (when, payload)."""
        self.reasons: list[str] = []
        """Why the path to the peer changed, in order."""
        self._timer = None

    @property
    def core(self):
        return self.node.core

    @property
    def now(self) -> float:
        return self.world.net.scheduler.now

    @property
    def kind(self) -> Kind:
        return self.site.kind

    @property
    def nat(self) -> Nat:
        return self.site.nat

    @property
    def mapped(self) -> Endpoint | None:
        return self.site.mapped

    def info(self) -> m.PeerInfo:
        public = None if self.public_endpoint is None else m.Endpoint(*self.public_endpoint)
        mapped = None if self.mapped is None else m.Endpoint(*self.mapped)
        mapped_tcp = None if self.site.mapped_tcp is None else m.Endpoint(*self.site.mapped_tcp)
        home = self.world.coord.homes.get(self.public)
        return m.PeerInfo(self.public, self.name, self.address, True, tuple(self._local()), public,
                          ipv6_endpoints=tuple(self._ipv6()) or None,
                          observed_host=self.site.observed_host, nat=nat_info(self.profile),
                          mapped_endpoint=mapped, mapped_tcp=mapped_tcp, public_tcp=self.world.coord.public_tcp.get(self.public),
                          peer_relay=self is self.world.helper or None, home_relay=home and home.relay,
                          relay_rtts=home and home.rtts)

    def send(self, peer: Node, payload: bytes) -> None:
        self.node.packet_from_tun(self.core.peers.by_key[peer.public], ip_packet(self.address, peer.address, payload),
                                  self.now)
        self.pump()

    def route_to(self, peer: Node):
        return self.core.peers.by_key[peer.public].route

    @property
    def port(self) -> int:
        return PORT

    @property
    def connected(self) -> bool:
        """Whether the host's link is up."""
        return self.host.link.connected

    def discover(self) -> None:
        """An endpoint round (`meshvpn.sim.rounds`)."""
        self.rounds.discover()

    def ask_stun(self) -> None:
        """Ask STUN for our public endpoint from the main socket, over IPv6 too on a dual-stack site."""
        self.sock.sendto(b"S", STUN)
        if self.host6 is not None:
            self.sock.sendto(b"S", STUN6)

    def move_to(self, site: Site) -> None:
        """The host leaves its LAN and comes up on `site`'s: its sockets and connections end with its
        address, and the rest is the daemon's answer to netlink's burst (`meshvpn.sim.hostnet`): the
        birthday sockets close, the coord link reconnects at once, an endpoint round runs, and the
        node hears `network_changed` once the new endpoints are known and the coord link is up."""
        change = self.hostnet.moved(site.host_ip, self.world.coord.link(self).local_address, self.now)
        self.sock.close()
        self._close_extra()
        self.tcp.close_all("address gone")
        self.site = site
        self._attach_host()
        self._attach_tcp()
        self.profile = site.kind.reported
        self.node.set_nat_profile(self.profile)
        self.mapped6 = None
        self.node.set_own_endpoints(self._local() + self._ipv6(), None, site.mapped, site.mapped_tcp)
        self._follow(change)
        self.rounds.network_changed(change.connections_lost)

    def probe_nat(self, relay: tuple[str, Endpoint] | None) -> None:
        """Take the NAT profile as the daemon does, asking the STUN server and `relay`, and report it."""
        profile = probe_profile(self.host, self.world.net.scheduler, STUN, relay, self.world.rng.randbytes)
        if profile is not None:
            self.profile = profile
            self.node.set_nat_profile(profile)

    def link_down(self) -> None:
        """The host's link goes down (netlink says so; the coord's TCP connection survives)."""
        self.host.link.connected = False

    def link_up(self) -> None:
        """The link is back, on the same address: the daemon's answer to netlink's burst (the coord
        link reconnects if it had no connection, else it, the TCP paths and the relay streams check
        that they carry again: `meshvpn.node.tcpresume`), an endpoint round, then `network_changed`.
        The extra sockets stay (the NAT may still hold their mappings), as in the daemon."""
        self.host.link.connected = True
        change = self.hostnet.link_back(self.world.coord.link(self).local_address, self.now)
        self._follow(change)
        self.rounds.network_changed(change.connections_lost)

    def _follow(self, change: NetworkChanged) -> None:
        """What the daemon's endpoint refresh does at once with a network change: the coord link, and
        the checks of the standing connections."""
        if change.reconnect_coord:
            self.world.coord.link(self).reconnect_now()
        elif change.resumed:
            self.world.coord.link(self).network_back()
        if change.back:
            self.node.connections_resumed(self.now, self.punch.retransmitting(), self.relay_streams.retransmitting())
            self.pump()

    def registered(self) -> None:
        """The coord link registered: a network change waiting for it is told to the node now."""
        self.rounds.registered()

    def _attach_host(self) -> None:
        """The host on the site's LAN and the main socket; on a dual-stack site also the IPv6 host
        behind the site's firewall, on the same cable, and the socket on both families."""
        self.host = Host(self.world.net, self.site.host_ip, self.site.nat.lan)
        for _, address, _ in RELAYS if self.site.kind.far else ():
            self.site.nat.hold_back(address, self.site.kind.far)
        self.host6 = None
        if self.site.ip6 is not None:
            self.host6 = firewalled_host6(self.world.net, self.site.ip6, self.site.uplink6, self.host.link)
            self.sock = DualStackHost(self.host, self.host6).bind(PORT, self._receiver(None))
        else:
            self.sock = self.host.bind(PORT, self._receiver(None))

    def _local(self) -> list[Endpoint]:
        return [Endpoint(self.host.ip, PORT)]

    def _ipv6(self) -> list[Endpoint]:
        """What we announce over IPv6, as the daemon does: the global address with our port, and
        the STUN mapping when it differs."""
        local6 = [Endpoint(self.host6.ip, PORT)] if self.host6 is not None else []
        return list(announced(local6, self.mapped6)) if local6 else []

    def _attach_tcp(self) -> None:
        self.tcp = TcpStack(self.host)
        self.punch = PunchPort(self, self.tcp, PORT)
        self.relay_streams = RelayStreams(self, self.tcp, self.private)

    def _close_extra(self) -> None:
        for sock in self.extra:
            if sock is not None:
                sock.close()
        self.extra = [None] * len(self.extra)

    def from_coord(self, msg: m.Message) -> None:
        self.node.receive_coord(msg, self.now)
        self.pump()

    # ---- the shell

    def _receiver(self, via: int | None):
        def receive(data: bytes, src) -> None:
            src = Endpoint(*src)
            if data[:1] == b"s":
                self._stun_answer(via, data)
            elif via is None or data[1] in _TRANSPORT:
                self._to_tun(self.data.inbound([(data, src)], self.now))
            else:
                self.node.receive_datagram(data, src, self.now, via)
            self.pump()
        return receive

    def _to_tun(self, packets: list[bytes]) -> None:
        for packet in packets:
            peer = self.core.peers.by_overlay[packet[12:16]]
            payload = packet[20:]
            self.received.append((self.now, payload))
            if not payload.startswith(b"echo "):
                self.node.packet_from_tun(peer, ip_packet(self.address, peer.address, b"echo " + payload), self.now)

    def _stun_answer(self, via: int | None, data: bytes) -> None:
        host, port = data[1:].decode().rsplit(":", 1)
        if via is None and ":" in host:
            self._mapped6(Endpoint(host, int(port)))
        elif via is None:
            before, self.public_endpoint = self.public_endpoint, (host, int(port))
            link = self.world.coord.link(self)
            if remapped(before and Endpoint(*before), Endpoint(host, int(port)), link.registered_at,
                        self.rounds.asked_at):
                link.reconnect_now()
            self.rounds.answered(m.Endpoint(host, int(port)))
        elif via in self.sampling:
            self.node.port_sampled(self.sampling.pop(via), Endpoint(host, int(port)), self.now, via)

    def _mapped6(self, endpoint: Endpoint) -> None:
        """STUN's answer over IPv6: reported when it adds an endpoint (a prefix translator), as the
        daemon's second report of a round does."""
        self.mapped6 = endpoint
        self.rounds.learnt()

    def _report(self, public: Endpoint | None) -> None:
        self.node.set_own_endpoints(self._local() + self._ipv6(), public, self.mapped, self.site.mapped_tcp)
        self.world.coord.send_from(self, m.Endpoints(tuple(self._local()), public and m.Endpoint(*public),
                                                     ipv6=tuple(self._ipv6()) or None))

    def pump(self) -> None:
        """Carry out the node's outputs, as the daemon's ``transmit`` does, and follow its timer."""
        while outputs := self.node.outputs():
            for out in outputs:
                self.on_output(out)
        if self._timer is not None:
            self._timer.cancel()
        when = self.node.get_timer()
        self._timer = None if when is None else self.world.net.scheduler.call_at(max(when, self.now), self._on_timer)

    def on_output(self, out: object) -> None:
        """One transmission or event of the node."""
        if isinstance(out, SendDatagram):
            (self.sock if out.via is None else self.extra[out.via] or self.sock).sendto(out.data, out.dst)
        elif isinstance(out, SendCoord):
            self.world.coord.send_from(self, out.msg)
        elif isinstance(out, Deliver):
            self._to_tun(self.data.inbound(out.datagrams, self.now))
        elif isinstance(out, (TcpConnect, TcpWrite, TcpAbort, TcpSampleWanted)):
            self.punch.follow(out)
        elif isinstance(out, (OpenRelayStream, CloseRelayStream, SendRelayFrames)):
            self.relay_streams.follow(out)
        elif isinstance(out, SampleWanted):
            sock = self._new_socket()
            self.sampling[len(self.extra) - 1] = out.peer_key
            sock.sendto(b"S", STUN)
            self.world.net.scheduler.call_later(SAMPLE_TIMEOUT, self._sample_lost, len(self.extra) - 1)
        elif isinstance(out, OpenMappings):
            for probe in out.probes:
                self._new_socket().sendto(probe, out.endpoint)
        elif isinstance(out, PeerPathChanged) and out.name == self.world.peer_of(self).name:
            self.reasons.append(out.reason)
        elif isinstance(out, DiscoverEndpoints):
            if out.reconnect_coord:
                self.world.coord.link(self).reconnect_now()
            self.discover()

    def _sample_lost(self, via: int) -> None:
        """No STUN answer in time: the daemon's sample gives up and says so (None)."""
        if via in self.sampling:
            self.node.port_sampled(self.sampling.pop(via), None, self.now)
            self.pump()

    def _new_socket(self):
        sock = self.host.bind(0, None)
        sock.on_receive = self._receiver(len(self.extra))
        self.extra.append(sock)
        return sock

    def _on_timer(self) -> None:
        self._timer = None
        self.node.handle_timer(self.now)
        self.pump()


class World:
    """Two nodes, a STUN server, two relays and the fake coord on one simulated internet."""

    node_class = Node

    def __init__(self, kind_a: Kind, kind_b: Kind, seed: int, seeded: Seeded, helper_kind: Kind = HELPER) -> None:
        self.seed, self.seeded = seed, seeded
        rng = seeded(seed)
        self.net = Network(Scheduler(), rng)
        stun_host = Host(self.net, STUN[0])
        stun = stun_host.bind(STUN[1], None)
        tcpstun.serve(stun_host, STUN[1])
        stun6 = Host(self.net, STUN6[0]).bind(STUN6[1], None)
        stun6.on_receive = lambda data, src: stun6.sendto(_stun_reply(data, src), src)
        self.tcp_stun = Endpoint(*STUN)
        stun.on_receive = lambda data, src: stun.sendto(_stun_reply(data, src), src)
        self.relays = [SimRelay(self.net.scheduler, self.net, name, address, delay, rng, tls_port=TLS_PORT)
                       for name, address, delay in RELAYS]
        self.minter = TokenMinter(COORD, rng.randbytes)
        self.rng = rng
        self.coord = Coord(self)
        self.helper = None
        """The member that may relay for the others, in a world with a `peer-relay` site."""
        self.a = self.node_class(self, 0, Site(self.net, 0, kind_a))
        self.b = self.node_class(self, 1, Site(self.net, 1, kind_b))
        self.nodes = [self.a, self.b]
        if kind_a.peer_relay or kind_b.peer_relay:
            self.helper = self.node_class(self, 2, Site(self.net, HELPER_SITE, helper_kind))
            self.nodes.append(self.helper)

    def start(self) -> None:
        """STUN, then the coord's welcome with the relays; returns once both are registered with them."""
        for node in self.nodes:
            if node.kind.probed:
                node.probe_nat((self.relays[0].info.name, self.relays[0].endpoint))
        for node in self.nodes:
            node.ask_stun()
        self.net.scheduler.run_for(DIAL_AT)
        links = [self.coord.link(node) for node in self.nodes]
        for link in links:
            link.start()
        self.net.scheduler.run_for(WELCOME_AT - DIAL_AT)
        while not all(link.up for link in links) and self.net.scheduler.now < START_LIMIT:
            self.net.scheduler.run_for(0.01)
        self.net.scheduler.run_for(RELAY_WARM_UP)

    def registered(self, node: Node) -> m.Registered:
        """The coord's welcome for `node`: its address, the relays and a token for each, the helper
        offered as a peer relay to the others and told to relay itself."""
        infos = tuple(relay.info for relay in self.relays)
        helper = self.helper
        if helper is not None and node is not helper:
            infos += (m.RelayInfo(helper.name, helper.site.observed_host, PORT, helper.public, peer=True),)
        return m.Registered(node.public, node.name, node.address, NETWORK, relays=infos,
                            relay_tokens=relay_tokens(self.minter, infos, node.public, self.now),
                            relaying=node is helper or None)

    @property
    def now(self) -> float:
        return self.net.scheduler.now

    def peer_of(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    def kill_relay(self, name: str) -> None:
        """The relay named `name` dies: a server relay's process, or the helper's whole host."""
        if self.helper is not None and name == self.helper.name:
            self.helper.link_down()
        else:
            next(relay for relay in self.relays if relay.info.name == name).kill()

    def others(self, node: Node) -> list[Node]:
        return [other for other in self.nodes if other is not node]

    def by_key(self, key: bytes) -> Node | None:
        return next((node for node in self.nodes if node.public == key), None)

    def by_name(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)


def _stun_reply(data: bytes, src: Endpoint) -> bytes:
    """A Binding response to a real STUN request (`natprobe`), else the harness's short form ``s<ip>:<port>``."""
    return answer_stun(data, src) or b"s%s:%d" % (src[0].encode(), src[1])


def flow(world: World, gap: float, until: float) -> list[float]:
    """`a` sends a numbered packet to `b` every `gap` seconds until `until`; `b` echoes each.
    Returns the send times, packet number `n` at index `n` (filled as the flow runs)."""
    sent: list[float] = []

    def tick() -> None:
        world.a.send(world.b, b"%d" % len(sent))
        sent.append(world.now)
        if world.now + gap < until:
            world.net.scheduler.call_later(gap, tick)
    tick()
    return sent


def longest_gap(times: list[float], start: float, stop: float) -> float:
    """The longest stretch within [start, stop] with nothing received."""
    inside = [start] + [t for t in times if start <= t <= stop] + [stop]
    return max(b - a for a, b in zip(inside, inside[1:]))
