"""`meshvpn join` and `meshvpn leave`: one command in place of keygen, copy, YAML and start.

`join` reads a join string (`meshvpn.joinstring`), checks that the coordination server answers
with the key the string pins (so a typo in the address or a wrong server fails here, not in a
daemon log), keeps or creates the node key (0600), writes a commented node config (0600: it
holds the pre-auth key) and starts the `meshvpn` unit when systemd runs, or says how to start
the daemon. Running it again with the same string finds the same config and changes nothing;
a config for another server is never overwritten. `leave` stops the unit, asks the server to
forget the node (`leave`, sent with the node's key, so only the node itself can), and removes
the config and key: the machine is out, and a new join makes it a new node.

Every path lies under a root (`--root`, or `MESHVPN_ROOT`, default `/`), so tests and
containers write into a directory of their own instead of the machine's /etc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from meshvpn import joinstring, keys
from meshvpn.config import Address, NodeConfig, load_node_config
from meshvpn.configdocs import field_docs
from meshvpn.errors import ConfigError, MeshError

ROOT_ENV = "MESHVPN_ROOT"
UNIT = "meshvpn"
CHECK_TIMEOUT = 5.0
"""Seconds join waits for the coordination server's handshake."""
_DOCS = {doc.path: doc.doc for doc in field_docs(NodeConfig)}


@dataclass(frozen=True)
class Layout:
    """Where a joined node keeps its files, all under `root`."""

    root: Path
    config: Path

    @classmethod
    def of(cls, args: argparse.Namespace) -> Layout:
        root = Path(args.root or os.environ.get(ROOT_ENV) or "/")
        config = args.config if args.config is not None else root / "etc/meshvpn/node.yaml"
        return cls(root, Path(config))

    @property
    def key(self) -> Path:
        return self.config.parent / "node.key"

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/meshvpn"

    @property
    def control_socket(self) -> Path:
        return self.root / "run/meshvpn/meshvpn.sock"

    @property
    def systemd(self) -> bool:
        """Whether systemd runs this machine (its own test, sd_booted)."""
        return (self.root / "run/systemd/system").is_dir()


def join_main(args: argparse.Namespace) -> int:
    """`meshvpn join [COORD] --key JOIN-STRING [--name NAME]`."""
    join = joinstring.decode(args.key)
    coord = join.coord if args.coord is None else args.coord
    layout = Layout.of(args)
    name = args.name or default_name(platform.node())
    text = render_config(layout, name, coord, join)
    if layout.config.exists():
        current = _check_same_network(layout, coord, join)
        print(f"already joined to {coord} as {current.hostname or 'this host'} ({layout.config}); nothing changed"
              + ("" if current.hostname == name else "; to take another name, `meshvpn leave` and join again"))
        return _start(layout)
    private = keys.read_private_key(layout.key) if layout.key.exists() else keys.generate_private_key()
    if not args.no_check:
        asyncio.run(check_coord(coord, join.coord_key, private))
        print(f"coordination server {coord} answered with the pinned key")
    if not layout.key.exists():
        layout.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys.write_private_key(layout.key, private)
    layout.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(layout.config, text)
    load_node_config(layout.config)
    print(f"wrote {layout.config}; this node's public key is {keys.encode_key(keys.public_key(private))}")
    return _start(layout)


def leave_main(args: argparse.Namespace) -> int:
    """`meshvpn leave`: stop the unit, have the coord forget the node, remove the config and the node key."""
    layout = Layout.of(args)
    if not layout.config.exists() and not layout.key.exists():
        print(f"not joined: {layout.config} is not there; nothing changed")
        return 0
    try:
        config = load_node_config(layout.config)
    except ConfigError as exc:
        config = None
        print(f"cannot read the config, so the coordination server is not told: {exc}")
    if layout.systemd:
        _systemctl("disable", "--now", UNIT)
    if config is not None:
        _refuse_while_running(config)
        print(asyncio.run(tell_coord(config)))
    for path in (layout.config, layout.key):
        path.unlink(missing_ok=True)
    print(f"left: removed {layout.config} and {layout.key}")
    return 0


async def tell_coord(config: NodeConfig) -> str:
    """Ask the coordination server to forget this node (`leave`); what happened, as a line to print."""
    from meshvpn.control import messages as m
    from meshvpn.node.coordclient import CoordLinkClosed, connect

    coord = config.coord.address
    try:
        client = await connect((coord.host, coord.port), config.coord.public_key,
                               keys.read_private_key(config.private_key_file), timeout=CHECK_TIMEOUT)
        client.send(m.Leave())
        answer = await client.recv(CHECK_TIMEOUT)
    except CoordLinkClosed as exc:
        if str(exc) == "closed by the server":
            return f"the coordination server at {coord} forgot this node; its peers were told"
        reason = exc
    except (OSError, asyncio.TimeoutError) as exc:
        reason = exc or "no answer"
    else:
        client.close()
        reason = getattr(answer, "message", None) or answer.TYPE
    return (f"could not tell the coordination server at {coord} ({reason}): it lists this node as offline "
            f"until its admin runs `meshvpn coord nodes revoke {config.hostname or 'NAME'}`")


def _refuse_while_running(config: NodeConfig) -> None:
    """A daemon still connected would come back with the config's pre-auth key as a new node."""
    from meshvpn.localsock import DaemonNotRunning, request

    try:
        list(request(str(config.control_socket), {"cmd": "status"}, timeout=2.0))
    except (DaemonNotRunning, OSError, ValueError):
        return
    raise MeshError(f"a meshvpn daemon runs with this config (it answers on {config.control_socket}): stop it "
                    "first (Ctrl-C in its terminal), then run `meshvpn leave` again")


def default_name(hostname: str) -> str:
    """The machine's host name as one DNS label (what `hostname` must be), or "node"."""
    label = re.sub(r"[^a-z0-9-]+", "-", hostname.split(".")[0].lower()).strip("-")[:63].strip("-")
    return label or "node"


def render_config(layout: Layout, name: str, coord: Address, join: joinstring.JoinString) -> str:
    """The node config `join` writes: the keys it sets, each with the schema's comment."""
    entries = [
        ("private_key_file", os.path.relpath(layout.key, layout.config.parent)),
        ("hostname", name),
        ("state_dir", str(layout.state_dir)),
        ("control_socket", str(layout.control_socket)),
        ("coord.address", str(coord)),
        ("coord.public_key", keys.encode_key(join.coord_key)),
        ("coord.auth_key", join.auth_key),
    ]
    lines = ["# meshvpn node configuration, written by `meshvpn join`; `meshvpn leave` removes it.",
             "# Keys not written here keep their defaults; config/node.yaml in the source shows every key.",
             "# Start with: meshvpn daemon -c THIS-FILE (or systemctl enable --now meshvpn)."]
    section = ""
    for path, value in entries:
        head, _, key = path.rpartition(".")
        indent = "  " if head else ""
        if head and head != section:
            lines += ["", f"{head}:"]
        elif not head:
            lines.append("")
        section = head
        lines += [f"{indent}# {_DOCS[path]}.", f"{indent}{key}: {value}"]
    return "\n".join(lines) + "\n"


async def check_coord(coord: Address, coord_key: bytes, private: bytes) -> None:
    """Open the control channel and finish the handshake: the server holds the pinned key."""
    from meshvpn.node.coordclient import connect
    from meshvpn.node.startup import explain_coord_failure

    try:
        client = await connect((coord.host, coord.port), coord_key, private, timeout=CHECK_TIMEOUT)
    except MeshError as exc:
        raise MeshError(explain_coord_failure(coord, exc) + " (`meshvpn join --no-check` writes the config anyway)") \
            from None
    client.close()


def _check_same_network(layout: Layout, coord: Address, join: joinstring.JoinString) -> NodeConfig:
    try:
        current = load_node_config(layout.config)
    except ConfigError as exc:
        raise MeshError(f"{exc}; fix it, or run `meshvpn leave` and join again") from None
    if current.coord.public_key != join.coord_key or current.coord.address != coord:
        raise MeshError(f"{layout.config} already joins the coordination server at {current.coord.address}; "
                        "run `meshvpn leave` first to join another")
    return current


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600) through a temporary file, so a reader never sees half."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)


def _start(layout: Layout) -> int:
    if not layout.systemd:
        print(f"systemd does not run here; start the daemon with: meshvpn daemon -c {layout.config}")
        return 0
    if layout.config != Path("/etc/meshvpn/node.yaml"):
        print(f"the {UNIT} unit reads /etc/meshvpn/node.yaml, not {layout.config}; "
              f"start the daemon with: meshvpn daemon -c {layout.config}")
        return 0
    return _systemctl("enable", "--now", UNIT)


def _systemctl(*argv: str) -> int:
    done = subprocess.run(["systemctl", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"meshvpn: systemctl {' '.join(argv)} failed: {done.stderr.strip()}", file=sys.stderr)
        if "not found" in done.stderr or "does not exist" in done.stderr:
            print("meshvpn: install the units first: make install (or scripts/install)", file=sys.stderr)
    else:
        print(f"systemctl {' '.join(argv)}: done")
    return done.returncode
