"""Every relay a node knows, and which one is home: sans-IO, around one `RelayLink` per relay.

The coordination server announces relays and tokens (``registered``, ``relay_tokens``); the
node keeps a link to each, so any of them can carry its traffic (every node registers with
every relay, and a relay forwards to any node registered with it). The *home* relay is the
ready link with the lowest hello round-trip time, kept while it is ready: another ready link
takes over only when its RTT has stayed below `SWITCH_RATIO` of home's for `HOME_HOLD`
(`meshvpn.node.relay.home`), so home does not flap between two similar relays, nor with a peer
relay whose path comes and goes. The node routes relayed packets through home and reports it to
the server (``relay_home``).

Inputs take ``now`` (monotonic seconds). Outputs are pulled: `datagrams_to_send`,
`frames_to_send` (for TCP links), and `home_changed()`.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable, Mapping, Optional

from meshvpn.control import messages as m
from meshvpn.node import events as ev
from meshvpn.node.relay.home import HomeChoice
from meshvpn.node.relay.link import ReadyChanged, RelayLink, RelayLinkConfig, SendTcp, SendUdp, Transport, endpoint_of
from meshvpn.node.streamdial import StreamTarget
from meshvpn.wire import Endpoint

class RelaySet:
    """The node's relay links by name and by endpoint, and the choice of home."""

    def __init__(
        self,
        private_key: bytes,
        public_key: bytes,
        random_bytes: Callable[[int], bytes],
        wall_offset: float,
        config: Optional[RelayLinkConfig] = None,
    ) -> None:
        self.links: dict[str, RelayLink] = {}
        self.by_endpoint: dict[Endpoint, RelayLink] = {}
        self.home: Optional[RelayLink] = None
        self.skipped: list[str] = []
        """Relays announced with a DNS name instead of an address (not resolved by the core)."""
        self.addresses_of: dict[str, tuple[str, ...]] = {}
        """An address a relay's DNS name resolved to → every address of that name (its AAAA and A
        records), kept by the shell's lookups (`meshvpn.node.names`): a link races them."""
        self._private = private_key
        self._public = public_key
        self._random_bytes = random_bytes
        self._wall_offset = wall_offset
        self._on_tcp: dict[Endpoint, str] = {}
        """Relay endpoints on TCP as `streams_moved` last saw them, with their link's name."""
        self._config = config
        self._datagrams: list[tuple[Endpoint, bytes]] = []
        self._frames: list[tuple[RelayLink, bytes]] = []
        self._streams: set[str] = set()
        """Relays the shell holds (or is opening) a stream to."""
        self._home_changed = False
        self._choice = HomeChoice()

    # ---- inputs ---------------------------------------------------------------------

    def configure(self, relays: Iterable[m.RelayInfo], tokens: Iterable[m.RelayToken], now: float) -> None:
        """The relays of a ``registered`` message; links to relays no longer announced are dropped."""
        wanted = {}
        self.skipped = []
        for info in relays:
            if info.public_key == self._public:
                continue  # ourselves, as a peer relay: never a relay of our own
            if is_ip(info.host):
                wanted[info.name] = info
            else:
                self.skipped.append(info.name)
        for name in [n for n, link in self.links.items()
                     if wanted.get(n) != link.info or set(self._addresses(link.info)) != set(link.addresses.given)]:
            link = self.links.pop(name)
            for endpoint in link.addresses.all:
                del self.by_endpoint[endpoint]
        for name, info in wanted.items():
            if name not in self.links:
                link = RelayLink(info, self._private, self._public, self._random_bytes, self._wall_offset, self._config,
                                 self._addresses(info))
                self.links[name] = link
                self.by_endpoint.update(dict.fromkeys(link.addresses.all, link))
        self.set_tokens(tokens, now)
        self._choose_home(now, force=True)

    def set_tokens(self, tokens: Iterable[m.RelayToken], now: float) -> None:
        """Fresh tokens (``registered`` or ``relay_tokens``); tokens for unknown relays are ignored."""
        for token in tokens:
            link = self.links.get(token.relay)
            if link is not None:
                link.set_token(token.token, token.expires, now)
        self._drain(now)

    def receive(self, data: bytes, src: Endpoint, via: Transport, now: float) -> bool:
        """A RELAY_HELLO_ACK or RELAY_COOKIE from the relay at `src`; False if no link accepts it."""
        link = self.by_endpoint.get(src)
        before = None if link is None else link.endpoint
        if link is None or not link.receive(data, via, now, src):
            return False
        if link.endpoint != before:
            self._home_changed = True  # the core's relay endpoints: packets now go to its other address
        self._drain(now)
        return True

    def set_way(self, link: RelayLink, way: Endpoint, now: float) -> None:
        """Our direct path to peer relay `link`'s node goes to `way`: its hellos go there first
        (`RelayAddresses.set_way`), at once while it has no answer, and what comes from there is
        the relay's."""
        before, endpoint = link.addresses.all, link.endpoint
        if not link.addresses.set_way(way):
            return
        for address in before:
            if self.by_endpoint.get(address) is link:
                del self.by_endpoint[address]
        self.by_endpoint.update(dict.fromkeys(link.addresses.all, link))
        self._home_changed |= link.endpoint != endpoint
        if not link.ready:
            link.hello_now(now)
            self._drain(now)

    def tcp_up(self, name: str, now: float, target: Optional[StreamTarget] = None) -> None:
        """The stream to relay `name` is established (its channel is up), to `target`."""
        link = self.links.get(name)
        if link is not None and name in self._streams:
            link.tcp_up(now, target)
            self._drain(now)

    def tcp_down(self, name: str, now: float, reset: bool = False) -> None:
        """The stream to relay `name` closed or failed (the relay `reset` it); its link reconnects."""
        if name in self._streams:
            self._streams.discard(name)
            link = self.links.get(name)
            if link is not None:
                link.tcp_down(now, reset)
                self._drain(now)

    def drop_streams(self, now: float) -> list[ev.CloseRelayStream]:
        """The streams' local address is gone: close every one; each link reconnects with its backoff."""
        names = list(self._streams)
        for name in names:
            self.tcp_down(name, now)
        return [ev.CloseRelayStream(name) for name in names]

    def network_back(self, retransmitting: Mapping[str, Optional[bool]], now: float) -> None:
        """The host's network is usable again, under the streams the shell holds too, by relay name with
        what the kernel says of each (`RelayLink.network_back`): each checks that it carries, and a
        stream still connecting, or waiting out its backoff, is raced again at once."""
        for name, link in self.links.items():
            link.network_back(now, retransmitting.get(name))
        self._drain(now)

    def hello_now(self, now: float) -> None:
        """Every link says hello at once (our address changed: each relay must learn the new one)."""
        for link in self.links.values():
            link.hello_now(now)
        self._drain(now)

    def check(self, now: float, moved: bool = False, names: Optional[Iterable[str]] = None) -> None:
        """Relayed traffic went unanswered, or our mapping may have `moved`: every ready link (of
        those `names`, when given) says hello now (which also re-registers a moved mapping); one that
        does not answer within a second is left, and with `moved` a peer relay at once until it
        answers (`RelayLink.check`)."""
        links = self.links.values() if names is None else [self.links[n] for n in names if n in self.links]
        for link in links:
            link.check(now, moved)
        self._drain(now)

    def handle_timer(self, now: float) -> None:
        for link in self.links.values():
            link.handle_timer(now)
        self._drain(now)

    # ---- outputs --------------------------------------------------------------------

    def get_timer(self) -> Optional[float]:
        deadlines = [link.get_timer() for link in self.links.values()] + [self._choice.deadline()]
        return min((t for t in deadlines if t is not None), default=None)

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        out, self._datagrams = self._datagrams, []
        return out

    def frames_to_send(self) -> list[tuple[RelayLink, bytes]]:
        out, self._frames = self._frames, []
        return out

    def stream_wishes(self, now: float) -> list[ev.OpenRelayStream | ev.CloseRelayStream]:
        """Open a stream to each relay that wants one (when its backoff allows), close the unwanted."""
        out: list[ev.OpenRelayStream | ev.CloseRelayStream] = []
        for name, link in self.links.items():
            if link.stream.replacing:  # closed for a new race, at once (`StreamDial.replace`)
                link.stream.replacing = False
                link.stream_endpoint = None
                if name in self._streams:
                    self._streams.discard(name)
                    out.append(ev.CloseRelayStream(name))
            if name not in self._streams and link.stream.due(now):
                link.stream.attempt()
                self._streams.add(name)
                targets = link.stream.targets(link.addresses.order(), link.info.port)
                out.append(ev.OpenRelayStream(name, targets, link.info.public_key))
            elif name in self._streams and not link.stream.wanted:
                self._streams.discard(name)
                out.append(ev.CloseRelayStream(name))
                link.tcp_down(now)
        for name in [n for n in self._streams if n not in self.links]:
            self._streams.discard(name)
            out.append(ev.CloseRelayStream(name))
        if out:
            self._drain(now)
        return out

    def home_changed(self) -> bool:
        """Whether home changed (or became ready or not) since the last call."""
        changed, self._home_changed = self._home_changed, False
        return changed

    def ready_endpoints(self) -> dict[str, Endpoint]:
        """Every ready relay's endpoint by name: where a peer whose home it is can be reached."""
        return {name: link.endpoint for name, link in self.links.items() if link.ready}

    def known_endpoints(self) -> list[tuple[str, Endpoint, bool]]:
        """Every relay's (name, endpoint, is home), ready or not: the STUN servers a mapping test may ask."""
        return [(name, endpoint_of(link.info), link is self.home) for name, link in self.links.items()]

    def home_endpoint(self) -> Optional[Endpoint]:
        """Where relayed packets go: home's endpoint, or None without a ready relay."""
        return None if self.home is None else self.home.endpoint

    def is_tcp(self, endpoint: Endpoint) -> Optional[RelayLink]:
        """The link to send to `endpoint` over TCP, if `endpoint` is a relay on TCP."""
        link = self.by_endpoint.get(endpoint)
        return link if link is not None and link.transport is Transport.TCP else None

    def streams_moved(self) -> set[Endpoint]:
        """The relay endpoints that went over to TCP or back (or to another link) since the last call:
        a link changes its transport on its own, so this compares with what the last call saw; its
        cost is the relays' addresses, not the peers'."""
        streams = {endpoint: link.name for endpoint, link in self.by_endpoint.items() if link.transport is Transport.TCP}
        if streams == self._on_tcp:
            return set()
        old, self._on_tcp = self._on_tcp, streams
        return {endpoint for endpoint in old.keys() | streams.keys() if old.get(endpoint) != streams.get(endpoint)}

    def status(self) -> list[dict]:
        return [
            {
                "name": name,
                "address": str(link.reached_at),
                "addresses": [str(address) for address in link.addresses.all],
                "tls_port": link.info.tls_port,
                "ready": link.ready,
                "transport": link.transport_name,
                "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 2),
                "cookies": link.cookies,
                "home": link is self.home,
                "peer": bool(link.info.peer),
            }
            for name, link in self.links.items()
        ]

    # ---- internals ------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        readiness = False
        for link in self.links.values():
            for action in link.next_actions():
                if isinstance(action, SendUdp):
                    self._datagrams.append((action.endpoint, action.data))
                elif isinstance(action, SendTcp):
                    self._frames.append((link, action.data))
                elif isinstance(action, ReadyChanged):
                    readiness = True
        self._choose_home(now, force=readiness)

    def _addresses(self, info: m.RelayInfo) -> tuple[Endpoint, ...]:
        """Where relay `info` may be reached: its address, and the others of the name it came from."""
        hosts = self.addresses_of.get(ipaddress.ip_address(info.host).compressed, ()) or (info.host,)
        return tuple(Endpoint(ipaddress.ip_address(host).compressed, info.port) for host in hosts)

    def _choose_home(self, now: float, force: bool = False) -> None:
        home = self._choice.choose(self.links.values(), now)
        if home is not self.home or force:
            self._home_changed = True
        self.home = home


def is_ip(host: str) -> bool:
    """Whether `host` is an IP literal rather than a DNS name (which only a shell resolves)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

