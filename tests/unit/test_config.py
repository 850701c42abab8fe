"""Config loading: typed values, one-line errors that name file, line and key, and the
example configs and reference doc kept in step with the schema."""

import dataclasses
import ipaddress
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn import config, keys
from meshvpn.config import Address, CoordConfig, NodeConfig, RelayConfig
from meshvpn.configkinds import parse_address
from meshvpn.configdocs import KeyDoc, field_docs
from meshvpn.durations import format_duration, parse_duration
from meshvpn.errors import ConfigError

from fuzzing import mutated

REPO = Path(__file__).resolve().parents[2]
ROLES = {"node": NodeConfig, "coord": CoordConfig, "relay": RelayConfig}
LOADERS = {NodeConfig: config.load_node_config, CoordConfig: config.load_coord_config, RelayConfig: config.load_relay_config}
COORD_KEY = keys.encode_key(bytes(range(32)))
MINIMAL_NODE = f"""\
private_key_file: node.key
coord:
  address: 198.51.100.10:7400
  public_key: {COORD_KEY}
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    for role in ROLES:
        keys.write_private_key(tmp_path / f"{role}.key")
    return tmp_path


def load_node(directory: Path, text: str) -> NodeConfig:
    path = directory / "node.yaml"
    path.write_text(text)
    return config.load_node_config(path)


def node_error(directory: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_node(directory, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_minimal_node_config_gets_every_default(config_dir: Path) -> None:
    loaded = load_node(config_dir, MINIMAL_NODE)
    assert loaded.private_key_file == config_dir / "node.key"
    assert loaded.coord.address == Address("198.51.100.10", 7400)
    assert loaded.coord.public_key == bytes(range(32))
    assert loaded.coord.stun_port == 3478
    assert loaded.tun == config.TunConfig(name="meshvpn0", mtu=1380)
    assert loaded.listen == config.ListenConfig(address="0.0.0.0", port=41641)
    assert loaded.paths == config.PathTimers(keepalive=25.0, relay_after=2.0, path_timeout=10.0)
    assert loaded.log.level == "info"
    assert loaded.metrics.listen is None
    assert loaded.state_dir == Path("/var/lib/meshvpn")


def test_values_are_typed_and_relative_paths_follow_the_config_file(config_dir: Path) -> None:
    loaded = load_node(config_dir, MINIMAL_NODE + """\
state_dir: state
listen: {address: "::", port: 0}
paths: {keepalive: 500ms, relay_after: 1.5, path_timeout: 1m30s}
metrics: {listen: "[::1]:9100"}
log: {level: debug}
""")
    assert loaded.state_dir == config_dir / "state"
    assert loaded.listen == config.ListenConfig(address="::", port=0)
    assert loaded.paths == config.PathTimers(keepalive=0.5, relay_after=1.5, path_timeout=90.0)
    assert loaded.metrics.listen == Address("::1", 9100)
    assert str(loaded.metrics.listen) == "[::1]:9100"
    assert loaded.log.level == "debug"


def test_coord_config_reads_lists_of_entries(config_dir: Path) -> None:
    path = config_dir / "coord.yaml"
    path.write_text(f"""\
private_key_file: coord.key
networks:
  - {{name: home, cidr: 100.64.0.0/24, approval_required: true}}
  - {{name: lab, cidr: "fd00:6d65:7368::/48"}}
relays:
  - {{name: r1, address: "relay.example.net:7500", public_key: {COORD_KEY}}}
""")
    loaded = config.load_coord_config(path)
    assert [(n.name, n.cidr, n.approval_required) for n in loaded.networks] == [
        ("home", ipaddress.ip_network("100.64.0.0/24"), True),
        ("lab", ipaddress.ip_network("fd00:6d65:7368::/48"), False),
    ]
    assert loaded.relays[0].address == Address("relay.example.net", 7500)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.keepalive = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "extra, line, key, problem",
    [
        ("tun:\n  mtu: 1380\n  nmae: x\n", 7, "tun.nmae", "unknown key (did you mean 'name'?)"),
        ("zzz: blue\n", 5, "zzz", "unknown key (known keys: private_key_file, hostname,"),
        ("tun:\n  mtu: large\n", 6, "tun.mtu", "expected an integer, got str 'large'"),
        ("tun:\n  mtu: 100\n", 6, "tun.mtu", "100 is out of range 576 to 65535"),
        ("listen:\n  port: true\n", 6, "listen.port", "expected an integer, got bool True"),
        ("listen:\n  address: 1.2.3\n", 6, "listen.address", "not an IP address"),
        ("paths:\n  keepalive: 25 seconds\n", 6, "paths.keepalive", "bad duration '25 seconds'"),
        ("paths:\n  keepalive: -1\n", 6, "paths.keepalive", "bad duration -1: must be positive"),
        ("paths:\n  keepalive: [1]\n", 6, "paths.keepalive", "expected duration, got a list"),
        ("metrics:\n  listen: localhost\n", 6, "metrics.listen", "expected host:port, got 'localhost'"),
        ("metrics:\n  listen: ::1:9100\n", 6, "metrics.listen", "IPv6 addresses need brackets, as in [::1]:9100"),
        ("metrics:\n  listen: '[::g]:1'\n", 6, "metrics.listen", "not an IPv6 address"),
        ("metrics:\n  listen: host:99999\n", 6, "metrics.listen", "bad port '99999'"),
        ("log:\n  level: loud\n", 6, "log.level", "expected one of debug, info, warning, error"),
        ("tun: meshvpn0\n", 5, "tun", "expected a mapping of keys"),
        ("hostname: My_Laptop\n", 5, "hostname", "bad host name"),
        ("hostname: a\nhostname: b\n", 6, "hostname", "key given twice"),
        ("  other_addresses:\n    - 198.51.100.11:7400\n    - nope\n", 7, "coord.other_addresses[1]",
         "expected host:port, got 'nope'"),
        ("  other_addresses: {a: 1}\n", 5, "coord.other_addresses", "expected host:port"),
    ],
)
def test_each_mistake_names_file_line_and_key(config_dir: Path, extra: str, line: int, key: str, problem: str) -> None:
    message = node_error(config_dir, MINIMAL_NODE + extra)
    assert message.startswith(f"{config_dir / 'node.yaml'}:{line}: {key}: {problem}")


def test_the_node_takes_several_coord_addresses_or_one(config_dir: Path) -> None:
    several = load_node(config_dir, MINIMAL_NODE + "  other_addresses: [coord2.example.net:7400, '[2001:db8::2]:7400']\n")
    assert several.coord.other_addresses == (Address("coord2.example.net", 7400), Address("2001:db8::2", 7400))
    one = load_node(config_dir, MINIMAL_NODE + "  other_addresses: 198.51.100.11:7400\n")
    assert one.coord.other_addresses == (Address("198.51.100.11", 7400),)
    assert load_node(config_dir, MINIMAL_NODE).coord.other_addresses == ()


def test_missing_required_key_points_at_its_section(config_dir: Path) -> None:
    message = node_error(config_dir, "private_key_file: node.key\ncoord:\n  address: 198.51.100.10:7400\n")
    assert message == f"{config_dir / 'node.yaml'}:2: coord.public_key: missing required key"
    message = node_error(config_dir, "private_key_file: node.key\n")
    assert message == f"{config_dir / 'node.yaml'}:1: coord.address: missing required key"


def test_bad_public_key_is_named(config_dir: Path) -> None:
    message = node_error(config_dir, MINIMAL_NODE.replace(COORD_KEY, "c2hvcnQ="))
    assert message.startswith(f"{config_dir / 'node.yaml'}:4: coord.public_key: a key is 32 bytes, this one is 5")


def test_a_duration_too_large_for_a_float_is_named(config_dir: Path) -> None:
    message = node_error(config_dir, MINIMAL_NODE + "paths:\n  keepalive: 1" + "0" * 400 + "\n")
    assert message.startswith(f"{config_dir / 'node.yaml'}:6: paths.keepalive: bad duration 1000")
    assert message.endswith("must be positive and finite")


def test_missing_key_file(config_dir: Path) -> None:
    message = node_error(config_dir, MINIMAL_NODE.replace("node.key", "absent.key"))
    assert message == (
        f"{config_dir / 'node.yaml'}:1: private_key_file: "
        f"cannot read key file {config_dir / 'absent.key'}: No such file or directory"
    )


def test_key_file_readable_by_others(config_dir: Path) -> None:
    (config_dir / "node.key").chmod(0o644)
    message = node_error(config_dir, MINIMAL_NODE)
    assert message.startswith(f"{config_dir / 'node.yaml'}:1: private_key_file: key file {config_dir / 'node.key'}")
    assert message.endswith(f"run: chmod 600 {config_dir / 'node.key'}")


def test_coord_list_errors_name_the_entry(config_dir: Path) -> None:
    path = config_dir / "coord.yaml"
    cases = {
        "networks:\n  - name: a\n    cidr: 10.0.0.1/24\n": "4: networks[0].cidr: bad CIDR '10.0.0.1/24': 10.0.0.1/24 has host bits set",
        "networks:\n  - name: a\n    cidr: 10.0.0.0/33\n": "4: networks[0].cidr: bad CIDR '10.0.0.0/33'",
        "networks:\n  - {name: a, cidr: 10.0.0.0/24}\n  - {name: a, cidr: 10.1.0.0/24}\n": "4: networks[1].name: 'a' is used twice",
        "networks:\n  - name: a\n": "3: networks[0].cidr: missing required key",
        "networks: home\n": "2: networks: expected a list",
        "relays:\n  - {name: r, address: 203.0.113.1, public_key: x}\n": "3: relays[0].address: expected host:port",
    }
    for text, expected in cases.items():
        path.write_text("private_key_file: coord.key\n" + text)
        with pytest.raises(ConfigError) as caught:
            config.load_coord_config(path)
        assert str(caught.value).startswith(f"{path}:{expected}")


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("a: [1\n", 2, "invalid YAML"),
        ("", 1, "private_key_file: missing required key"),
        ("- one\n", 1, "(top level): expected a mapping of keys"),
        ("---\na: 1\n---\nb: 2\n", 3, "invalid YAML"),
    ],
)
def test_malformed_files(config_dir: Path, text: str, line: int, problem: str) -> None:
    assert node_error(config_dir, text).startswith(f"{config_dir / 'node.yaml'}:{line}: {problem}")


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'absent.yaml'}: cannot read config: No such file"):
        config.load_node_config(tmp_path / "absent.yaml")


durations = st.lists(st.tuples(st.integers(0, 999).map(str), st.sampled_from(["ms", "s", "m", "h"])), min_size=1, max_size=3).map(
    lambda terms: "".join(number + unit for number, unit in terms))
"""Durations as a config file spells them: 25s, 2m, 1m30s, 500ms."""


FUZZ_ALPHABET = list("abkp_:[]{}-,.'\" \n\t#&*!|>%@`0123456789")

node_configs = st.builds(
    "{}tun:\n  mtu: {}\nlisten:\n  port: {}\npaths:\n  keepalive: {}\nlog:\n  level: {}\n".format,
    st.just(MINIMAL_NODE), st.integers(1280, 1500), st.integers(0, 65535), durations,
    st.sampled_from(["debug", "info", "warning", "error"]),
)
"""Node configs with a few optional keys set to valid values."""


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.sampled_from([MINIMAL_NODE[:n] for n in range(0, len(MINIMAL_NODE) + 1, 7)]),
                 st.text(alphabet=st.sampled_from(FUZZ_ALPHABET), max_size=60)).map("".join)
       | mutated(node_configs, st.text(alphabet=st.sampled_from(FUZZ_ALPHABET), max_size=2)))
def test_loader_raises_only_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    directory = tmp_path_factory.mktemp("fuzz", numbered=True)
    keys.write_private_key(directory / "node.key")
    try:
        load_node(directory, text)
    except ConfigError as err:
        event("refused")
        assert "\n" not in str(err) and str(err).startswith(str(directory / "node.yaml"))
    else:
        event("loaded")


@settings(max_examples=300)
@given(st.integers(min_value=1, max_value=10**9))
def test_duration_round_trip(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=12), durations, mutated(durations, st.text(alphabet="0123456789.msh -e", max_size=2)),
                 st.integers(), st.integers(10**300, 10**400), st.floats(), st.none(), st.booleans()))
def test_parse_duration_raises_only_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        event("refused")
        return
    event("parsed")
    assert 0 < seconds < float("inf")


@pytest.mark.parametrize("text, seconds", [("25s", 25), ("2m", 120), ("1h", 3600), ("500ms", 0.5), ("1m30s", 90), ("7", 7)])
def test_duration_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


hosts = st.one_of(st.ip_addresses().map(str), st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{2,5}){0,2}", fullmatch=True))


@settings(max_examples=300)
@given(hosts, st.integers(0, 65535))
def test_address_round_trip(host: str, port: int) -> None:
    address = parse_address(str(Address(host, port)))
    assert address == Address(str(ipaddress.ip_address(host)) if host[0].isdigit() or ":" in host else host, port)


@settings(max_examples=300)
@given(st.text(max_size=30) | mutated(st.builds(lambda host, port: f"{Address(host, 0)}"[:-1] + str(port), hosts, st.integers(0, 65535) | st.integers(65536, 99999)),
                                      st.text(alphabet="[]:.0123456789abf-", max_size=2) | st.text(max_size=1)))
def test_parse_address_raises_only_value_error(text: str) -> None:
    try:
        address = parse_address(text)
    except ValueError:
        event("refused")
        return
    event("parsed")
    assert 0 <= address.port <= 65535 and address.host


def default_of(schema: type, path: str) -> object:
    """The dataclass default of a dotted key path."""
    head, _, rest = path.partition(".")
    field = next(f for f in dataclasses.fields(schema) if f.name == head)
    if rest:
        return default_of(field.type, rest)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def value_at(loaded: object, path: str) -> object:
    for part in path.split("."):
        loaded = getattr(loaded, part)
    return loaded


def yaml_key_paths(node: yaml.Node, prefix: str = "") -> list[tuple[str, int]]:
    """Every leaf key of a composed document with its 0-based line; list entries as `[]`."""
    found = []
    for key, value in node.value:
        path = prefix + key.value
        if isinstance(value, yaml.MappingNode):
            found += yaml_key_paths(value, path + ".")
        elif isinstance(value, yaml.SequenceNode) and value.value:
            found.append((path, key.start_mark.line))
            for entry in value.value:
                if isinstance(entry, yaml.MappingNode):
                    found += yaml_key_paths(entry, path + "[].")
        else:
            found.append((path, key.start_mark.line))
    return found


def comment_above(lines: list[str], line: int) -> str:
    block = []
    while line > 0 and lines[line - 1].strip().startswith("#"):
        line -= 1
        block.insert(0, lines[line].strip().lstrip("#").strip())
    return " ".join(block)


@pytest.mark.parametrize("role", ROLES)
def test_example_config_documents_every_key_with_its_true_default(config_dir: Path, role: str) -> None:
    schema = ROLES[role]
    example = REPO / "config" / f"{role}.yaml"
    text = example.read_text()
    real = keys.encode_key(keys.public_key(keys.generate_private_key()))
    (config_dir / f"{role}.yaml").write_text(text.replace(PLACEHOLDER_KEY, real))
    loaded = LOADERS[schema](config_dir / f"{role}.yaml")
    docs = {doc.path: doc for doc in field_docs(schema)}
    written = yaml_key_paths(yaml.compose(text))
    assert sorted({path for path, _ in written}) == sorted(docs)
    lines = text.splitlines()
    for path, line in written:
        doc = docs[path]
        comment = comment_above(lines, line)
        reload = "live" if doc.live else "restart"
        expected = "Required." if doc.default is None else f"Default: {doc.default}."
        assert f"{expected} Reload: {reload}." in comment, f"{role}.yaml line {line + 1} ({path}): {comment!r}"
        if doc.default is not None and "[]" not in path and doc.default != "[]":
            assert value_at(loaded, path) == default_of(schema, path), f"{role}.yaml: {path}"


PLACEHOLDER_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@pytest.mark.parametrize("role", ROLES)
def test_the_examples_placeholder_key_is_refused_with_where_the_real_one_comes_from(config_dir: Path, role: str):
    shutil.copy(REPO / "config" / f"{role}.yaml", config_dir)
    text = (config_dir / f"{role}.yaml").read_text()
    line = text.splitlines().index(next(x for x in text.splitlines() if PLACEHOLDER_KEY in x)) + 1
    with pytest.raises(ConfigError) as refused:
        LOADERS[ROLES[role]](config_dir / f"{role}.yaml")
    assert f"{role}.yaml:{line}: " in str(refused.value)
    assert "placeholder" in str(refused.value) and "meshvpn pubkey -k" in str(refused.value)
    assert "meshvpn join" in str(refused.value)


def reference_row(doc: KeyDoc) -> str:
    """A key's row in docs/configuration.md."""
    default = "*required*" if doc.default is None else f"`{doc.default}`"
    return f"| `{doc.path}` | {doc.kind} | {default} | {'live' if doc.live else 'restart'} | {doc.doc} |"


@pytest.mark.parametrize("role", ROLES)
def test_reference_doc_lists_every_key(role: str) -> None:
    reference = (REPO / "docs" / "configuration.md").read_text()
    section = reference.split(f"## {role} (`config/{role}.yaml`)", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == [reference_row(doc) for doc in field_docs(ROLES[role])]


def test_field_docs_cover_nested_and_list_keys() -> None:
    paths = [doc.path for doc in field_docs(CoordConfig)]
    assert "networks[].cidr" in paths and "log.level" in paths
    relay_name = next(doc for doc in field_docs(CoordConfig) if doc.path == "relays[].name")
    assert relay_name.live and relay_name.default is None
    assert re.fullmatch(r"\d+", next(d.default for d in field_docs(NodeConfig) if d.path == "tun.mtu"))
