"""The kinds of value a config key holds, each with how it is read and written back.

`meshvpn.config` declares the schema with these (`Port`, `HostPort`, `Duration`, ...); each is an
`Annotated` type whose `meshvpn.configreader.Kind` turns a YAML value into a Python one or
raises ValueError with the words the config error shows. `Address` is a configured address,
which may still be a DNS name (a resolved one is a `meshvpn.wire.Endpoint`).
"""

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from meshvpn import keys
from meshvpn.configreader import Kind, describe
from meshvpn.durations import format_duration, parse_duration


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
        return str(ipaddress.ip_address(expect_str(text, "an IP address")))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def parse_address(text: object) -> Address:
    """Parse `host:port` or `[IPv6]:port`; raise ValueError saying which part is wrong."""
    text = expect_str(text, "host:port")
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


def expect_str(value: object, what: str) -> str:
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


def int_range(low: int, high: int) -> Kind:
    integer = _plain(int, "integer")

    def parse(value: object, directory: Path) -> int:
        number = integer.parse(value, directory)
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range {low} to {high}")
        return number

    return Kind(f"integer {low}..{high}", parse)


def _path(value: object, directory: Path) -> Path:
    return directory / expect_str(value, "a path")


_CONNINFO = re.compile(r"^\s*[a-z_]+\s*=")


def _database(value: object, directory: Path) -> Path | str:
    """A SQLite file (a path, relative to the config's directory) or, kept as written, a
    PostgreSQL connection string: a ``postgresql://`` URI or a libpq ``key=value`` DSN."""
    text = expect_str(value, "a path or a postgresql:// URI")
    if text.startswith(("postgresql://", "postgres://")) or _CONNINFO.match(text):
        return text
    return directory / text


def _private_key_file(value: object, directory: Path) -> Path:
    path = _path(value, directory)
    keys.read_private_key(path)
    return path


def _cidr(value: object, _directory: Path) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(expect_str(value, "a CIDR such as 100.64.0.0/24"))
    except ValueError as err:
        raise ValueError(f"bad CIDR {value!r}: {err}") from None


def _interface_name(value: object, _directory: Path) -> str:
    name = expect_str(value, "an interface name")
    if not 0 < len(name) <= 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad interface name {name!r}: 1 to 15 letters, digits, '_', '.' or '-'")
    return name


def parse_hostname(value: object, _directory: Path | None = None) -> str:
    """Check a node name: one DNS label of lowercase letters, digits and '-' (or "")."""
    name = expect_str(value, "a host name")
    if name and not _DNS_LABEL.fullmatch(name):
        raise ValueError(f"bad host name {name!r}: one DNS label of lowercase letters, digits and '-'")
    return name


def _quoted(value: object) -> str:
    return '""' if value in ("", None) else str(value)


String = Annotated[str, _plain(str, "string")]
Hostname = Annotated[str, Kind("host name", parse_hostname, _quoted)]
InterfaceName = Annotated[str, Kind("interface name", _interface_name)]
Port = Annotated[int, int_range(0, 65535)]
Flag = Annotated[bool, _plain(bool, "boolean")]
ConfigPath = Annotated[Path, Kind("path", _path)]
Database = Annotated[Path | str, Kind("path or PostgreSQL URI", _database)]
PrivateKeyFile = Annotated[Path, Kind("path to a private key file", _private_key_file)]
def _public_key(value: object, _directory: Path) -> bytes:
    key = keys.decode_key(expect_str(value, "a base64 key"))
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
