"""YAML configuration for the three roles (node, coord, relay) as typed, frozen dataclasses.

The dataclasses below are the schema: each field's type says how its value is read, and its
metadata holds the one-line meaning and whether a SIGHUP reload applies it (`live`). The
generic reader (`meshvpn.configreader`) walks the YAML node tree (so every value keeps its line)
and turns every mistake into a one-line `ConfigError`: `FILE:LINE: KEY.PATH: what is wrong`.
Relative paths are relative to the directory of the config file. `meshvpn.configdocs` lists the
keys with their meanings for the docs and the example files.
"""

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from meshvpn.configreader import Kind, load
from meshvpn.durations import format_duration, parse_duration
from meshvpn.configkinds import (
    Address, Cidr, ConfigPath, Database, Duration, Flag, HostPort, Hostname, IPAddress, InterfaceName, LogLevel,
    OptionalHostPort, OptionalPath, Port, PrivateKeyFile, PublicKey, String, expect_str, int_range,
)
from meshvpn.control.messages import MAX_RULES
from meshvpn.portspec import Service, parse_service



DEFAULT_CONTROL_SOCKET = Path("/run/meshvpn/meshvpn.sock")
DEFAULT_ADMIN_SOCKET = Path("/run/meshvpn/coord.sock")


def option(doc: str, default: Any = dataclasses.MISSING, *, live: bool = False, unique: str = "", key: str = "",
           secret: bool = False) -> Any:
    """Declare a config key: its meaning, its default (none: required), whether SIGHUP applies it,
    for a list of entries the entry key that must not repeat, its YAML name when that is not the
    field's (`from` is a Python keyword), and whether a value is a secret (then the file holding
    it must be private to its owner, as key files are)."""
    metadata = {"doc": doc, "live": live, "unique": unique, "key": key, "secret": secret}
    if isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_section = dataclasses.dataclass(frozen=True, kw_only=True)


@_section
class LogConfig:
    """Logging."""

    level: LogLevel = option("least severe level written to the log", "info", live=True)


@_section
class MetricsConfig:
    """Prometheus metrics endpoint."""

    listen: OptionalHostPort = option('address of the HTTP metrics endpoint; "" turns it off', None)


_COORD_KEY = "coordination server's public key, pinned: no other server is trusted"
_BUSY_POLL = ("microseconds the native data-path thread keeps looking at its socket after traffic before it "
              "sleeps, so a reply that comes right back finds it awake (docs/benchmarks.md); 0 turns it off")
BusyPoll = Annotated[int, int_range(0, 1000)]


@_section
class CoordTrust:
    """Which coordination server to trust, without reaching it (a relay checks its tokens)."""

    public_key: PublicKey = option(_COORD_KEY)


@_section
class NodeCoordLink:
    """A node's link to the coordination server: the pinned server, how to join, where its STUN is."""

    address: HostPort = option("coordination server's control channel (TCP)")
    public_key: PublicKey = option(_COORD_KEY)
    auth_key: String = option("pre-auth key from `meshvpn coord key create`; needed on first join only "
                              "(the file must then be mode 0600)", "", secret=True)
    stun_port: Port = option("UDP port of the coordination server's STUN service (same host)", 3478)
    other_addresses: tuple[HostPort, ...] = option(
        "more instances of the same coordination server (same key and database), raced with "
        "coord.address (IPv6 first, 250 ms apart) when one does not answer; a name may also resolve to "
        "several instances, in both families", ())
    tls_port: Annotated[int, int_range(0, 65535)] = option(
        "TCP port of the coordination server's TLS listener (its `tls.listen`, usually 443) on the same hosts, "
        "tried when plain TCP reaches none of them; 0 when it has none", 0)


@_section
class TunConfig:
    """The TUN device that carries the node's mesh traffic."""

    name: InterfaceName = option("name of the TUN device", "meshvpn0")
    mtu: Annotated[int, int_range(576, 65535)] = option("MTU of the TUN device; leaves room for UDP and tunnel headers", 1380)


@_section
class ListenConfig:
    """The node's one UDP socket, used for peers, STUN and relays."""

    address: IPAddress = option("local IP address the UDP socket binds to", "0.0.0.0")
    port: Port = option("UDP port; 0 picks any free port", 41641)
    ipv6: Flag = option("on the wildcard address, one socket carries IPv6 too: the node announces its global "
                        "IPv6 addresses and takes direct IPv6 paths", True)
    ipv6_ula: Flag = option("announce unique local IPv6 addresses (fc00::/7) as IPv6 endpoints too, where such "
                            "a prefix is routed between the sites", False)
    busy_poll_us: BusyPoll = option(_BUSY_POLL, 100)


@_section
class PathTimers:
    """Timers of the per-peer path state machine."""

    keepalive: Duration = option("interval of keepalives on an idle path, to keep NAT mappings open", 25.0, live=True)
    relay_after: Duration = option("send through a relay when no direct path has answered by then", 2.0)
    path_timeout: Duration = option("a path that has not answered for this long is dead", 10.0)


@_section
class FanoutConfig:
    """The per-node budget for broadcast and multicast copies (one copy per receiving peer)."""

    packets_per_second: Annotated[int, int_range(1, 10**7)] = option("broadcast/multicast copies sent per second, summed over peers", 500)
    bytes_per_second: Annotated[int, int_range(1, 2**40)] = option("bytes of broadcast/multicast copies sent per second, summed over peers", 1048576)
    burst: Duration = option("seconds of each rate that may go out at once after a quiet spell", 1.0)


@_section
class DnsConfig:
    """The node's DNS responder for peer names, on its overlay address."""

    enabled: Flag = option("answer DNS for peer names on the overlay address", True)
    port: Port = option("UDP port of the DNS responder", 53)
    suffix: Hostname = option("names are NAME and NAME.NETWORK.SUFFIX", "mesh")
    other_names: Literal["refuse", "forward"] = option("what to do with names outside the mesh", "refuse")
    forward_to: OptionalHostPort = option('DNS server other names go to when other_names is forward; "" for none', None)
    resolved: Flag = option("register the responder with systemd-resolved for the mesh domain on the TUN device", True)


@_section
class LanConfig:
    """Broadcast, multicast and names across the mesh."""

    fanout: FanoutConfig = option("broadcast and multicast rate limit", FanoutConfig)
    dns: DnsConfig = option("names", DnsConfig)


PortMapProtocol = Literal["pcp", "nat-pmp", "upnp"]


def _lease(value: object, _directory: Path) -> float:
    seconds = parse_duration(value)
    if not 120 <= seconds <= 86400:
        raise ValueError("a lease from 2m to 24h (PCP servers grant at least 2 minutes)")
    return seconds


Lease = Annotated[float, Kind("duration", _lease, format_duration)]


@_section
class PortMapConfig:
    """Router port mapping: ports on the gateway forwarded to the node's UDP port and TCP punch port."""

    enabled: Flag = option("ask the gateway for mappings of the UDP port and the TCP punch port (UPnP IGD, NAT-PMP, PCP) "
                           "and announce them", True)
    protocols: tuple[PortMapProtocol, ...] = option("protocols to try; the best that answers is used (pcp, then nat-pmp, then upnp)",
                                                     ("pcp", "nat-pmp", "upnp"))
    lease: Lease = option("lifetime asked of the gateway; renewed at half, deleted on exit", 7200.0)
    tcp_443: Flag = option("ask the gateway for external TCP port 443 for the TCP punch port first, so that peers on networks that let out only TCP to port 443 can connect; a port 443 the gateway already maps (a web server's) is never taken, and the punch port's own number is asked instead", True)


@_section
class ForwardLimits:
    """Per-node forwarding rates of a relay, so one node cannot starve the others: a server relay's,
    and a peer relay's on its one UDP port (which has no TCP queues)."""

    packets_per_second: Annotated[int, int_range(1, 10**9)] = option("sustained packets per second per node", 200000, live=True)
    burst: Annotated[int, int_range(1, 10**9)] = option("packets a node may send at once above the sustained rate", 400000, live=True)


@_section
class RelayLimits(ForwardLimits):
    """Per-node forwarding limits of a relay, so one node cannot starve the others."""

    queue_bytes: Annotated[int, int_range(1, 2**31)] = option("bytes queued per TCP-connected node before dropping", 1048576, live=True)


@_section
class NodeConfig:
    """Configuration of `meshvpn daemon`."""

    private_key_file: PrivateKeyFile = option("this node's private key file (mode 0600), from `meshvpn keygen`")
    hostname: Hostname = option('name announced to the mesh; "" uses the system host name', "")
    state_dir: ConfigPath = option("directory for state kept across restarts", Path("/var/lib/meshvpn"))
    control_socket: ConfigPath = option("unix socket of `meshvpn status`, `peers` and `ping`", DEFAULT_CONTROL_SOCKET)
    coord: NodeCoordLink = option("coordination server")
    tun: TunConfig = option("TUN device", TunConfig)
    listen: ListenConfig = option("UDP socket", ListenConfig)
    paths: PathTimers = option("path timers", PathTimers)
    portmap: PortMapConfig = option("router port mapping", PortMapConfig)
    peer_relay: ForwardLimits = option("forwarding limits while the coord lets this node relay for its network "
                                       "(a peer relay): the rates of `meshvpn relay`'s `limits`", ForwardLimits)
    lan: LanConfig = option("LAN party: broadcast, multicast, names", LanConfig)
    log: LogConfig = option("logging", LogConfig)
    metrics: MetricsConfig = option("metrics", MetricsConfig)


EVERYONE = "*"
"""The group every node of the network is in."""
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def _group_name(value: object, _directory: Path) -> str:
    name = expect_str(value, "a group name")
    if name != EVERYONE and not _GROUP_NAME.fullmatch(name):
        raise ValueError(f"bad group name {name!r}: letters, digits, '_', '.', '-', or * for every node")
    return name


def check_tag(tag: str) -> str:
    """A tag as `meshvpn coord nodes tag` sets it and `tag:TAG` members name it; ValueError if bad."""
    if not _GROUP_NAME.fullmatch(tag):
        raise ValueError(f"bad tag {tag[:70]!r}: letters, digits, '_', '.' and '-', at most 63")
    return tag


def _member(value: object, _directory: Path) -> str:
    member = expect_str(value, "a node name or tag:TAG")
    if not _GROUP_NAME.fullmatch(member.removeprefix("tag:")):
        raise ValueError(f"bad member {member!r}: a node name, or tag:TAG for the nodes with that tag")
    return member


def _service(value: object, _directory: Path) -> Service:
    return parse_service(value)


GroupName = Annotated[str, Kind("group name", _group_name)]
Member = Annotated[str, Kind("node name or tag:TAG", _member)]
ServiceKind = Annotated[Service, Kind("service (any, icmp, tcp/PORT, udp/LOW-HIGH)", _service)]


@_section
class AccessGroup:
    """A named set of nodes that access rules refer to."""

    name: GroupName = option("group name, used in rules' from and to")
    members: tuple[Member, ...] = option("node names, and tag:TAG for the nodes tagged with `meshvpn coord nodes tag NODE TAG`", ())


@_section
class AccessRule:
    """Which services one group may reach on another; the first rule that matches a packet decides."""

    from_: GroupName = option("group the traffic comes from; * is every node", key="from")
    to: GroupName = option("group the traffic goes to, enforced by each receiving node; * is every node")
    services: tuple[ServiceKind, ...] = option("services the rule covers", (Service(None),))
    action: Literal["allow", "deny"] = option("what a matching packet gets", "allow")


@_section
class AccessPolicy:
    """Who may reach whom inside a network; without rules everyone reaches everyone."""

    default: Literal["allow", "deny"] = option("what a packet no rule matches gets", "allow")
    groups: tuple[AccessGroup, ...] = option("groups of nodes", (), unique="name")
    rules: tuple[AccessRule, ...] = option("rules, first match wins; replies to a flow a node started are always let in", ())

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Rules naming a group that is not defined, with where they are."""
        known = {group.name for group in self.groups} | {EVERYONE}
        found = [(("rules", index, key), f"no group {name!r} (defined: {', '.join(sorted(known))})")
                 for index, rule in enumerate(self.rules)
                 for key, name in (("from", rule.from_), ("to", rule.to)) if name not in known]
        if len(self.rules) > MAX_RULES:
            found.append((("rules",), f"{len(self.rules)} rules; at most {MAX_RULES}"))
        return found


@_section
class NetworkConfig:
    """A network the coordination server hands out addresses in."""

    name: String = option("network name, as given to `meshvpn coord key create --network`")
    cidr: Cidr = option("address range node addresses are taken from")
    approval_required: Flag = option("new nodes wait for `meshvpn coord nodes approve`", False)
    access: AccessPolicy = option("access rules; a reload applies them when nothing else of `networks` changed", AccessPolicy, live=True)
    peer_relays: tuple[Member, ...] = option(
        "nodes (names, tag:TAG) that may relay for this network, besides those `meshvpn coord relays allow` names", ())


@_section
class RelayOffer:
    """A relay the coordination server tells nodes about."""

    name: String = option("relay name, shown in `meshvpn peers` and `netcheck`")
    address: HostPort = option("relay's address (UDP and TCP)")
    public_key: PublicKey = option("relay's public key")
    tls_port: Annotated[int, int_range(0, 65535)] = option(
        "TCP port of the relay's TLS listener (its `tls.listen`, usually 443); 0 when it has none", 0)


@_section
class TurnServerConfig:
    """A standard TURN server (RFC 8656, e.g. coturn with `use-auth-secret`) offered to nodes."""

    name: String = option("TURN server name, shown in `meshvpn status`")
    address: HostPort = option("TURN server's address for UDP and TCP (a DNS name is resolved by each node)")
    secret: String = option("the server's REST API shared secret (coturn `static-auth-secret`; the file must then "
                            "be mode 0600); or use secret_file", "", secret=True)
    secret_file: OptionalPath = option('file holding the shared secret on its first line; "" uses `secret`', None)
    tls_port: Annotated[int, int_range(0, 65535)] = option(
        "TURN server's TLS port (coturn tls-listening-port, usually 5349 or 443); 0 when it has none", 0)


@_section
class ConsoleConfig:
    """The coordination server's web console for the host (see docs/console.md)."""

    enabled: Flag = option("serve the web console", False)
    listen: HostPort = option("address of the console (HTTP); keep it on localhost and tunnel to it",
                              Address("127.0.0.1", 7480))
    password_file: ConfigPath = option("file whose first line is the console password (mode 0600); "
                                       "created with a random password when missing",
                                       Path("/var/lib/meshvpn/console.password"))


@_section
class TlsListenConfig:
    """TLS on TCP, for networks that let nothing but TCP port 443 or TLS through (docs/relay.md)."""

    listen: OptionalHostPort = option('address of the TLS listener, usually port 443; "" turns it off', None)
    cert_file: OptionalPath = option('certificate chain (PEM), e.g. from an ACME client; needed with listen', None)
    key_file: OptionalPath = option("the certificate's private key (PEM, mode 0600); needed with listen", None)


@_section
class CoordConfig:
    """Configuration of `meshvpn coord`."""

    private_key_file: PrivateKeyFile = option("the server's private key file (mode 0600), from `meshvpn keygen`")
    database: Database = option("nodes, keys and networks: a SQLite file, or a PostgreSQL database that several "
                                "instances share (postgresql://... or a libpq key=value DSN)",
                                Path("/var/lib/meshvpn/coord.db"))
    listen: HostPort = option("control channel (TCP)", Address("0.0.0.0", 7400))
    public_address: OptionalHostPort = option(
        'host:port nodes dial (a DNS name or IP), written into join strings; "" uses listen unless it is 0.0.0.0 or ::',
        None)
    tls: TlsListenConfig = option("TLS listener of the control channel", TlsListenConfig)
    stun_listen: HostPort = option("STUN service (UDP, and TCP on the same port for nodes' TCP port samples)", Address("0.0.0.0", 3478))
    stun_alt_listen: OptionalHostPort = option('second STUN address, for NAT-behaviour tests; "" turns it off', None)
    admin_socket: ConfigPath = option("unix socket of the `meshvpn coord` admin verbs", DEFAULT_ADMIN_SOCKET)
    keepalive: Duration = option("control-channel keepalive; clients silent for 3 intervals are dropped", 15.0, live=True)
    networks: tuple[NetworkConfig, ...] = option("networks served", (), unique="name")
    relays: tuple[RelayOffer, ...] = option("relays offered to nodes", (), live=True, unique="name")
    turn: tuple[TurnServerConfig, ...] = option("standard TURN servers offered to nodes, with credentials minted per node",
                                                (), unique="name")
    log: LogConfig = option("logging", LogConfig)
    metrics: MetricsConfig = option("metrics", MetricsConfig)
    console: ConsoleConfig = option("web console", ConsoleConfig)


@_section
class RelayConfig:
    """Configuration of `meshvpn relay`."""

    private_key_file: PrivateKeyFile = option("the relay's private key file (mode 0600), from `meshvpn keygen`")
    state_dir: ConfigPath = option("directory for state kept across restarts (the newest hello of each node)",
                                   Path("/var/lib/meshvpn"))
    listen: HostPort = option("UDP and TCP address (same port)", Address("0.0.0.0", 7500))
    busy_poll_us: BusyPoll = option(_BUSY_POLL, 100)
    coord: CoordTrust = option("the coordination server whose relay tokens are accepted")
    limits: RelayLimits = option("forwarding limits", RelayLimits)
    tls: TlsListenConfig = option("TLS listener", TlsListenConfig)
    log: LogConfig = option("logging", LogConfig)
    metrics: MetricsConfig = option("metrics", MetricsConfig)


def load_node_config(path: str | Path) -> NodeConfig:
    """Read a node config file; raise ConfigError on any mistake."""
    return load(NodeConfig, Path(path))


def load_coord_config(path: str | Path) -> CoordConfig:
    """Read a coordination server config file; raise ConfigError on any mistake."""
    return load(CoordConfig, Path(path))


def load_relay_config(path: str | Path) -> RelayConfig:
    """Read a relay config file; raise ConfigError on any mistake."""
    return load(RelayConfig, Path(path))
