"""YAML configuration for the three roles (node, coord, relay) as typed, frozen dataclasses.

The dataclasses below are the schema: each field's type says how its value is read, and its
metadata holds the one-line meaning and whether a SIGHUP reload applies it (`live`). The
generic reader (`meshvpn.configreader`) walks the YAML node tree (so every value keeps its line)
and turns every mistake into a one-line `ConfigError`: `FILE:LINE: KEY.PATH: what is wrong`.
Relative paths are relative to the directory of the config file. `meshvpn.configdocs` lists the
keys with their meanings for the docs and the example files.
"""

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from meshvpn import keys
from meshvpn.configreader import Kind, describe, load
from meshvpn.durations import format_duration, parse_duration
from meshvpn.control.messages import MAX_RULES
from meshvpn.portspec import Service, parse_service


class Address(NamedTuple):
    """A host (IP literal or DNS name; IPv6 without brackets) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_DNS_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def parse_ip(text: object) -> str:
    """Check an IPv4 or IPv6 literal (no brackets) and return it in canonical form."""
    try:
        return str(ipaddress.ip_address(_expect_str(text, "an IP address")))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def parse_address(text: object) -> Address:
    """Parse `host:port` or `[IPv6]:port`; raise ValueError saying which part is wrong."""
    text = _expect_str(text, "host:port")
    if text.startswith("["):
        host, closed, port = text[1:].partition("]:")
        if not closed:
            raise ValueError(f"expected [IPv6]:port, got {text!r}")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"not an IPv6 address in {text!r}") from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"expected host:port, got {text!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, as in [{host}]:{port}")
        if re.fullmatch(r"[0-9.]+", host):
            host = parse_ip(host)
        elif not _DNS_NAME.fullmatch(host):
            raise ValueError(f"not a host name or IP address: {host!r}")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad port {port!r} in {text!r}: must be 0 to 65535")
    return Address(host, int(port))


def _expect_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {describe(value)}")
    return value


def _plain(python_type: type, name: str) -> Kind:
    article = "an" if name[0] in "aeiou" else "a"

    def parse(value: object, _directory: Path) -> object:
        if type(value) is not python_type:
            raise ValueError(f"expected {article} {name}, got {describe(value)}")
        return value

    return Kind(name, parse, lambda value: repr(value).lower() if python_type is bool else _quoted(value))


def _range(low: int, high: int) -> Kind:
    integer = _plain(int, "integer")

    def parse(value: object, directory: Path) -> int:
        number = integer.parse(value, directory)
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range {low} to {high}")
        return number

    return Kind(f"integer {low}..{high}", parse)


def _path(value: object, directory: Path) -> Path:
    return directory / _expect_str(value, "a path")


_CONNINFO = re.compile(r"^\s*[a-z_]+\s*=")


def _database(value: object, directory: Path) -> Path | str:
    """A SQLite file (a path, relative to the config's directory) or, kept as written, a
    PostgreSQL connection string: a ``postgresql://`` URI or a libpq ``key=value`` DSN."""
    text = _expect_str(value, "a path or a postgresql:// URI")
    if text.startswith(("postgresql://", "postgres://")) or _CONNINFO.match(text):
        return text
    return directory / text


def _private_key_file(value: object, directory: Path) -> Path:
    path = _path(value, directory)
    keys.read_private_key(path)
    return path


def _cidr(value: object, _directory: Path) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_expect_str(value, "a CIDR such as 100.64.0.0/24"))
    except ValueError as err:
        raise ValueError(f"bad CIDR {value!r}: {err}") from None


def _interface_name(value: object, _directory: Path) -> str:
    name = _expect_str(value, "an interface name")
    if not 0 < len(name) <= 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad interface name {name!r}: 1 to 15 letters, digits, '_', '.' or '-'")
    return name


def parse_hostname(value: object, _directory: Path | None = None) -> str:
    """Check a node name: one DNS label of lowercase letters, digits and '-' (or "")."""
    name = _expect_str(value, "a host name")
    if name and not _DNS_LABEL.fullmatch(name):
        raise ValueError(f"bad host name {name!r}: one DNS label of lowercase letters, digits and '-'")
    return name


def _quoted(value: object) -> str:
    return '""' if value in ("", None) else str(value)


String = Annotated[str, _plain(str, "string")]
Hostname = Annotated[str, Kind("host name", parse_hostname, _quoted)]
InterfaceName = Annotated[str, Kind("interface name", _interface_name)]
Port = Annotated[int, _range(0, 65535)]
Flag = Annotated[bool, _plain(bool, "boolean")]
ConfigPath = Annotated[Path, Kind("path", _path)]
Database = Annotated[Path | str, Kind("path or PostgreSQL URI", _database)]
PrivateKeyFile = Annotated[Path, Kind("path to a private key file", _private_key_file)]
def _public_key(value: object, _directory: Path) -> bytes:
    key = keys.decode_key(_expect_str(value, "a base64 key"))
    if not any(key):
        raise ValueError("this is the example config's placeholder key (all zero): put the server's real public "
                         "key here (`meshvpn pubkey -k KEY-FILE` on that server prints it), or let "
                         "`meshvpn join` write this file from a join string (`meshvpn coord key create`)")
    return key


PublicKey = Annotated[bytes, Kind("base64 key", _public_key, keys.encode_key)]
Duration = Annotated[float, Kind("duration", lambda value, _d: parse_duration(value), format_duration)]
Cidr = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, Kind("CIDR", _cidr)]
IPAddress = Annotated[str, Kind("IP address", lambda value, _d: parse_ip(value))]
HostPort = Annotated[Address, Kind("host:port", lambda value, _d: parse_address(value))]
OptionalHostPort = Annotated[
    Address | None,
    Kind('host:port or ""', lambda value, _d: parse_address(value) if value not in ("", None) else None, _quoted),
]
OptionalPath = Annotated[
    Path | None, Kind('path or ""', lambda value, d: _path(value, d) if value not in ("", None) else None, _quoted)
]
LogLevel = Literal["debug", "info", "warning", "error"]

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
        "more instances of the same coordination server (same key and database), tried in turn when "
        "one does not answer; a name may also resolve to several instances", ())
    tls_port: Annotated[int, _range(0, 65535)] = option(
        "TCP port of the coordination server's TLS listener (its `tls.listen`, usually 443) on the same hosts, "
        "tried when plain TCP reaches none of them; 0 when it has none", 0)


@_section
class TunConfig:
    """The TUN device that carries the node's mesh traffic."""

    name: InterfaceName = option("name of the TUN device", "meshvpn0")
    mtu: Annotated[int, _range(576, 65535)] = option("MTU of the TUN device; leaves room for UDP and tunnel headers", 1380)


@_section
class ListenConfig:
    """The node's one UDP socket, used for peers, STUN and relays."""

    address: IPAddress = option("local IP address the UDP socket binds to", "0.0.0.0")
    port: Port = option("UDP port; 0 picks any free port", 41641)


@_section
class PathTimers:
    """Timers of the per-peer path state machine."""

    keepalive: Duration = option("interval of keepalives on an idle path, to keep NAT mappings open", 25.0, live=True)
    relay_after: Duration = option("send through a relay when no direct path has answered by then", 2.0)
    path_timeout: Duration = option("a path that has not answered for this long is dead", 10.0)


@_section
class FanoutConfig:
    """The per-node budget for broadcast and multicast copies (one copy per receiving peer)."""

    packets_per_second: Annotated[int, _range(1, 10**7)] = option("broadcast/multicast copies sent per second, summed over peers", 500)
    bytes_per_second: Annotated[int, _range(1, 2**40)] = option("bytes of broadcast/multicast copies sent per second, summed over peers", 1048576)
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
    """Router port mapping: a port on the gateway forwarded to the node's UDP port."""

    enabled: Flag = option("ask the gateway for a mapping of the UDP port (UPnP IGD, NAT-PMP, PCP) and announce it", True)
    protocols: tuple[PortMapProtocol, ...] = option("protocols to try; the best that answers is used (pcp, then nat-pmp, then upnp)",
                                                     ("pcp", "nat-pmp", "upnp"))
    lease: Lease = option("lifetime asked of the gateway; renewed at half, deleted on exit", 7200.0)


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
    lan: LanConfig = option("LAN party: broadcast, multicast, names", LanConfig)
    log: LogConfig = option("logging", LogConfig)
    metrics: MetricsConfig = option("metrics", MetricsConfig)


EVERYONE = "*"
"""The group every node of the network is in."""
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def _group_name(value: object, _directory: Path) -> str:
    name = _expect_str(value, "a group name")
    if name != EVERYONE and not _GROUP_NAME.fullmatch(name):
        raise ValueError(f"bad group name {name!r}: letters, digits, '_', '.', '-', or * for every node")
    return name


def check_tag(tag: str) -> str:
    """A tag as `meshvpn coord nodes tag` sets it and `tag:TAG` members name it; ValueError if bad."""
    if not _GROUP_NAME.fullmatch(tag):
        raise ValueError(f"bad tag {tag[:70]!r}: letters, digits, '_', '.' and '-', at most 63")
    return tag


def _member(value: object, _directory: Path) -> str:
    member = _expect_str(value, "a node name or tag:TAG")
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


@_section
class RelayInfo:
    """A relay the coordination server tells nodes about."""

    name: String = option("relay name, shown in `meshvpn peers` and `netcheck`")
    address: HostPort = option("relay's address (UDP and TCP)")
    public_key: PublicKey = option("relay's public key")
    tls_port: Annotated[int, _range(0, 65535)] = option(
        "TCP port of the relay's TLS listener (its `tls.listen`, usually 443); 0 when it has none", 0)


@_section
class TurnServerConfig:
    """A standard TURN server (RFC 8656, e.g. coturn with `use-auth-secret`) offered to nodes."""

    name: String = option("TURN server name, shown in `meshvpn status`")
    address: HostPort = option("TURN server's address for UDP and TCP (a DNS name is resolved by each node)")
    secret: String = option("the server's REST API shared secret (coturn `static-auth-secret`; the file must then "
                            "be mode 0600); or use secret_file", "", secret=True)
    secret_file: OptionalPath = option('file holding the shared secret on its first line; "" uses `secret`', None)
    tls_port: Annotated[int, _range(0, 65535)] = option(
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
    stun_listen: HostPort = option("STUN service (UDP)", Address("0.0.0.0", 3478))
    stun_alt_listen: OptionalHostPort = option('second STUN address, for NAT-behaviour tests; "" turns it off', None)
    admin_socket: ConfigPath = option("unix socket of the `meshvpn coord` admin verbs", DEFAULT_ADMIN_SOCKET)
    keepalive: Duration = option("control-channel keepalive; clients silent for 3 intervals are dropped", 15.0, live=True)
    networks: tuple[NetworkConfig, ...] = option("networks served", (), unique="name")
    relays: tuple[RelayInfo, ...] = option("relays offered to nodes", (), live=True, unique="name")
    turn: tuple[TurnServerConfig, ...] = option("standard TURN servers offered to nodes, with credentials minted per node",
                                                (), unique="name")
    log: LogConfig = option("logging", LogConfig)
    metrics: MetricsConfig = option("metrics", MetricsConfig)
    console: ConsoleConfig = option("web console", ConsoleConfig)


@_section
class RelayLimits:
    """Per-node forwarding limits of a relay, so one node cannot starve the others."""

    packets_per_second: Annotated[int, _range(1, 10**9)] = option("sustained packets per second per node", 200000, live=True)
    burst: Annotated[int, _range(1, 10**9)] = option("packets a node may send at once above the sustained rate", 400000, live=True)
    queue_bytes: Annotated[int, _range(1, 2**31)] = option("bytes queued per TCP-connected node before dropping", 1048576, live=True)


@_section
class RelayConfig:
    """Configuration of `meshvpn relay`."""

    private_key_file: PrivateKeyFile = option("the relay's private key file (mode 0600), from `meshvpn keygen`")
    state_dir: ConfigPath = option("directory for state kept across restarts (the newest hello of each node)",
                                   Path("/var/lib/meshvpn"))
    listen: HostPort = option("UDP and TCP address (same port)", Address("0.0.0.0", 7500))
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
