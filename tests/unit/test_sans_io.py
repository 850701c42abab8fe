"""The import rules: protocol modules do no I/O, and the packages import each other one way only.

Each module in SANS_IO_MODULES (a trailing `.*` means every module of that package) is read
with `ast`, never imported, together with every meshvpn module it imports, so a helper that
pulls in asyncio is caught too; it reads no clock and draws no randomness. Modules not written
yet are skipped.

LAYERS says which package may not reach which, by any chain of imports: the node and the coord
meet only in the control schema (`meshvpn.control`), which knows neither; the LAN-party cores
(`meshvpn.lan`), which the node composes, know nothing of it.
"""

import ast
from pathlib import Path
from typing import Callable

import pytest

SANS_IO_MODULES = (
    "meshvpn.wire",
    "meshvpn.checksum",
    "meshvpn.noise",
    "meshvpn.replay",
    "meshvpn.session",
    "meshvpn.channel",
    "meshvpn.control.*",
    "meshvpn.stun",
    "meshvpn.coord.membership",
    "meshvpn.coord.connstate",
    "meshvpn.coord.candidates",
    "meshvpn.coord.events",
    "meshvpn.coord.passes",
    "meshvpn.coord.settings",
    "meshvpn.ratelimit",
    "meshvpn.prefixcap",
    "meshvpn.coord.roster",
    "meshvpn.coord.peermap",
    "meshvpn.coord.console.auth",
    "meshvpn.coord.fanout",
    "meshvpn.coord.peerchanges",
    "meshvpn.coord.mapcache",
    "meshvpn.coord.mapbudget",
    "meshvpn.coord.elsewhere",
    "meshvpn.coord.lanpush",
    "meshvpn.coord.peerrelays",
    "meshvpn.coord.nodeadmin",
    "meshvpn.node.pathfinder",
    "meshvpn.node.pathtypes",
    "meshvpn.node.pathprobes",
    "meshvpn.node.core",
    "meshvpn.node.coorddial",
    "meshvpn.node.tcpresume",
    "meshvpn.node.streamdial",
    "meshvpn.node.tcp.campaign",
    "meshvpn.node.eyeballs",
    "meshvpn.node.events",
    "meshvpn.node.node",
    "meshvpn.node.punching",
    "meshvpn.node.pings",
    "meshvpn.node.recovery",
    "meshvpn.node.coretimers",
    "meshvpn.node.coreprobes",
    "meshvpn.node.strangers",
    "meshvpn.node.peertimers",
    "meshvpn.node.silence",
    "meshvpn.node.family",
    "meshvpn.node.pathpref",
    "meshvpn.node.announce6",
    "meshvpn.node.endpointreports",
    "meshvpn.node.pathtimers",
    "meshvpn.node.routes",
    "meshvpn.node.pairrelay",
    "meshvpn.node.status",
    "meshvpn.node.transports",
    "meshvpn.node.datapath.dataplane",
    "meshvpn.node.destinations",
    "meshvpn.node.lanparty",
    "meshvpn.node.handshakes",
    "meshvpn.node.handshake_cookies",
    "meshvpn.node.peers",
    "meshvpn.node.probes",
    "meshvpn.relay.core",
    "meshvpn.relay.streamend",
    "meshvpn.relay.stunanswer",
    "meshvpn.node.natverdict",
    "meshvpn.relaytoken",
    "meshvpn.cookie",
    "meshvpn.node.relay.addresses",
    "meshvpn.node.relay.link",
    "meshvpn.node.relay.core",
    "meshvpn.node.relay.home",
    "meshvpn.node.relay.streamend",
    "meshvpn.node.peerrelay",
    "meshvpn.node.streaminbox",
    "meshvpn.node.tcpinbox",
    "meshvpn.node.tcp.core",
    "meshvpn.node.tcp.prediction",
    "meshvpn.turn",
    "meshvpn.turn_events",
    "meshvpn.turn_codec",
    "meshvpn.coord.turncreds",
    "meshvpn.node.turn.core",
    "meshvpn.node.turn.server",
    "meshvpn.node.traversal",
    "meshvpn.node.prediction",
    "meshvpn.node.pins",
    "meshvpn.node.candidates",
    "meshvpn.node.netlink",
    "meshvpn.node.netchange",
    "meshvpn.node.pathlog",
    "meshvpn.node.portmap.core",
    "meshvpn.node.portmap.epoch",
    "meshvpn.node.portmap.events",
    "meshvpn.node.portmap.natpmp",
    "meshvpn.node.portmap.pcp",
    "meshvpn.node.datapath.offload",
    "meshvpn.node.datapath.fastpath",
    "meshvpn.node.datapath.native_tables",
    "meshvpn.backoff",
    "meshvpn.joinstring",
    "meshvpn.portspec",
    "meshvpn.coord.policy",
    "meshvpn.lan.packets",
    "meshvpn.lan.packets6",
    "meshvpn.lan.igmp",
    "meshvpn.lan.groups",
    "meshvpn.lan.fanout",
    "meshvpn.lan.names",
    "meshvpn.lan.access",
    "meshvpn.lan.flowcache",
    "meshvpn.lan.sources",
    "meshvpn.sim.*",
)
FORBIDDEN = frozenset(
    {"asyncio", "socket", "pytun", "time", "random", "select", "selectors", "subprocess", "threading"}
)
SOURCE_ROOT = Path(__file__).resolve().parents[2]
LAYERS = (
    ("meshvpn.node.*", "meshvpn.coord"),
    ("meshvpn.coord.*", "meshvpn.node"),
    ("meshvpn.control.*", "meshvpn.node"),
    ("meshvpn.control.*", "meshvpn.coord"),
    ("meshvpn.lan.*", "meshvpn.node"),
)
"""(modules, package they must not import, directly or through other meshvpn modules)."""


def module_file(name: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source file of a dotted module name under `root`, or None if there is none."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def expand(pattern: str, root: Path = SOURCE_ROOT) -> list[str]:
    """Module names a pattern stands for; a missing package yields the pattern itself."""
    if not pattern.endswith(".*"):
        return [pattern]
    package = pattern[:-2]
    directory = root.joinpath(*package.split("."))
    names = sorted(
        ".".join((package, *path.relative_to(directory).with_suffix("").parts)).removesuffix(".__init__")
        for path in directory.rglob("*.py")
    )
    return names or [pattern]


def imported_modules(tree: ast.AST, package: str) -> list[str]:
    """Absolute names a parsed module of `package` imports, including `importlib.import_module("x")`.

    For `from meshvpn.x import y`, `meshvpn.x.y` is listed too, since `y` may be a module.
    """
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            if base.split(".")[0] == "meshvpn":
                names.extend(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def io_import_chains(module: str, root: Path = SOURCE_ROOT, banned: Callable[[str], bool] | None = None) -> list[str]:
    """Every forbidden import reachable from `module` through meshvpn modules, as `a -> b -> socket`;
    forbidden: an I/O module, or whatever `banned` says."""
    banned = banned or (lambda name: name.split(".")[0] in FORBIDDEN)
    chains, seen, todo = [], {module}, [(module, module)]
    while todo:
        name, chain = todo.pop()
        path = module_file(name, root)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imported in imported_modules(ast.parse(path.read_text(), str(path)), package):
            if banned(imported):
                chains.append(f"{chain} -> {imported}")
            elif imported.split(".")[0] == "meshvpn" and imported not in seen:
                seen.add(imported)
                todo.append((imported, f"{chain} -> {imported}"))
    return sorted(chains)


@pytest.mark.parametrize("module", [name for pattern in SANS_IO_MODULES for name in expand(pattern)])
def test_sans_io_module_does_no_io(module: str) -> None:
    if module.endswith(".*") or module_file(module) is None:
        pytest.skip(f"{module} does not exist yet")
    assert io_import_chains(module) == []


@pytest.mark.parametrize("module,package", [(name, package) for pattern, package in LAYERS for name in expand(pattern)])
def test_layer_never_imports_the_package_above_or_beside_it(module: str, package: str) -> None:
    assert io_import_chains(module, banned=lambda name: name == package or name.startswith(package + ".")) == []


def test_layer_rule_finds_a_chain_through_another_package(tmp_path: Path) -> None:
    for name, text in {"node/core.py": "from meshvpn.lan import helper\n", "lan/helper.py": "import meshvpn.coord.peermap\n",
                       "coord/peermap.py": "", "node/__init__.py": "", "lan/__init__.py": "", "coord/__init__.py": ""}.items():
        (tmp_path / "meshvpn" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "meshvpn" / name).write_text(text)

    assert io_import_chains("meshvpn.node.core", tmp_path, lambda name: name.startswith("meshvpn.coord")) == [
        "meshvpn.node.core -> meshvpn.lan.helper -> meshvpn.coord.peermap",
    ]


def test_checker_finds_direct_relative_dynamic_and_transitive_imports(tmp_path: Path) -> None:
    package = tmp_path / "meshvpn"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "clean.py").write_text("import struct\nfrom dataclasses import dataclass\n")
    (package / "core" / "helper.py").write_text("from time import monotonic\n")
    (package / "core" / "proto.py").write_text(
        "import struct\nfrom . import helper\nimport importlib\nimportlib.import_module('socket')\n"
    )
    (package / "core" / "shell.py").write_text("import asyncio.streams\n")

    assert io_import_chains("meshvpn.core.clean", tmp_path) == []
    assert io_import_chains("meshvpn.core.proto", tmp_path) == [
        "meshvpn.core.proto -> meshvpn.core.helper -> time",
        "meshvpn.core.proto -> socket",
    ]
    assert io_import_chains("meshvpn.core.shell", tmp_path) == ["meshvpn.core.shell -> asyncio.streams"]
    assert expand("meshvpn.core.*", tmp_path) == [
        "meshvpn.core", "meshvpn.core.clean", "meshvpn.core.helper", "meshvpn.core.proto", "meshvpn.core.shell",
    ]
    assert expand("meshvpn.absent.*", tmp_path) == ["meshvpn.absent.*"]
