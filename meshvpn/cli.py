"""The single `meshvpn` command line.

This module only parses arguments, loads the config of the role being started and reports
errors. Each verb is a function `f(args) -> int` in the module that owns it, imported only
when that verb runs, so `meshvpn keygen` never loads the daemon and a build without a role
says so instead of crashing. Every verb finds its name in `args.command`; role verbs also get
the config path as `args.config` (for reload on SIGHUP) and the loaded config as `args.settings`.
"""

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable

from meshvpn import __version__, keys
from meshvpn.config import (
    DEFAULT_ADMIN_SOCKET,
    DEFAULT_CONTROL_SOCKET,
    load_coord_config,
    load_node_config,
    load_relay_config,
)
from meshvpn.configkinds import parse_address, parse_hostname
from meshvpn.durations import parse_duration
from meshvpn.errors import MeshError

DEFAULT_NODE_CONFIG = Path("/etc/meshvpn/node.yaml")
DEFAULT_COORD_CONFIG = Path("/etc/meshvpn/coord.yaml")
DEFAULT_RELAY_CONFIG = Path("/etc/meshvpn/relay.yaml")

# Verb -> "module:function" that runs it; the module is imported only when the verb runs.
VERB_TARGETS = {
    "daemon": "meshvpn.node.daemon:main",
    "coord": "meshvpn.coord.server:main",
    "coord-admin": "meshvpn.coord.admin:main",
    "relay": "meshvpn.relay.server:main",
    "status": "meshvpn.node.ctl:client_main",
    "peers": "meshvpn.node.ctl:client_main",
    "ping": "meshvpn.node.ctl:client_main",
    "netcheck": "meshvpn.node.netcheck:main",
    "join": "meshvpn.join:join_main",
    "leave": "meshvpn.join:leave_main",
}


def main(argv: list[str] | None = None) -> int:
    """Run the `meshvpn` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.loader is not None:
            args.settings = args.loader(args.config)
        return args.run(args)
    except MeshError as err:
        print(f"meshvpn: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """Every verb and option of `meshvpn`."""
    parser = argparse.ArgumentParser(prog="meshvpn", description="A mesh VPN: direct encrypted paths between your machines.")
    parser.add_argument("--version", action="version", version=f"meshvpn {__version__}")
    parser.set_defaults(loader=None)
    verbs = parser.add_subparsers(dest="command", metavar="VERB", required=True)

    keygen = verbs.add_parser("keygen", help="create a private key file and print its public key")
    keygen.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="key file to create (mode 0600); '-' prints the private key to stdout instead")
    keygen.set_defaults(run=_keygen)

    pubkey = verbs.add_parser("pubkey", help="print the public key of a private key file")
    pubkey.add_argument("-k", "--key", required=True, metavar="FILE", help="private key file; '-' reads stdin")
    pubkey.set_defaults(run=_pubkey)

    daemon = verbs.add_parser("daemon", help="run the node daemon")
    _role(daemon, "daemon", DEFAULT_NODE_CONFIG, load_node_config)

    coord = verbs.add_parser("coord", help="run the coordination server, or administer it")
    _role(coord, "coord", DEFAULT_COORD_CONFIG, load_coord_config)
    _add_coord_admin(coord)

    relay = verbs.add_parser("relay", help="run a relay")
    _role(relay, "relay", DEFAULT_RELAY_CONFIG, load_relay_config)

    status = verbs.add_parser("status", help="show this node's state")
    _client(status, "status")
    peers = verbs.add_parser("peers", help="list peers and the path to each")
    _client(peers, "peers")
    ping = verbs.add_parser("ping", help="ping a peer over the mesh and show the path taken")
    _client(ping, "ping", json_output=False)
    ping.add_argument("peer", metavar="PEER", help="peer name, mesh address or public key")
    ping.add_argument("-c", "--count", type=_positive_int, default=4, metavar="N", help="pings to send (default 4)")

    join = verbs.add_parser("join", help="join a network with the join string from `meshvpn coord key create`")
    join.add_argument("coord", nargs="?", type=_host_port, metavar="COORD",
                      help="the coordination server's host:port (default: the address in the join string)")
    join.add_argument("--key", required=True, metavar="JOIN-STRING", help="the mvk-... join string")
    join.add_argument("--name", type=_name, metavar="NAME", help="this node's name in the mesh (default: host name)")
    join.add_argument("--no-check", action="store_true",
                      help="write the config even when the coordination server cannot be reached now")
    _joined(join, "join")
    leave = verbs.add_parser("leave", help="undo `meshvpn join`: stop the daemon, remove its config and key")
    _joined(leave, "leave")

    netcheck = verbs.add_parser("netcheck", help="report this host's NAT behaviour and reachable relays")
    _role(netcheck, "netcheck", DEFAULT_NODE_CONFIG, load_node_config)
    netcheck.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _role(parser: argparse.ArgumentParser, verb: str, default_config: Path, loader: Callable) -> None:
    parser.add_argument("-c", "--config", type=Path, default=default_config, metavar="FILE",
                        help=f"config file (default {default_config})")
    parser.set_defaults(run=_dispatch, target=VERB_TARGETS[verb], loader=loader)


def _joined(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help=f"the node config (default ROOT{DEFAULT_NODE_CONFIG})")
    parser.add_argument("--root", type=Path, metavar="DIR",
                        help="directory every path lies under (default $MESHVPN_ROOT, or /)")
    parser.set_defaults(run=_dispatch, target=VERB_TARGETS[verb])


def _client(parser: argparse.ArgumentParser, verb: str, json_output: bool = True) -> None:
    parser.add_argument("--socket", type=Path, default=DEFAULT_CONTROL_SOCKET, metavar="PATH",
                        help=f"the daemon's control socket (default {DEFAULT_CONTROL_SOCKET})")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_dispatch, target=VERB_TARGETS[verb])


def _add_coord_admin(coord: argparse.ArgumentParser) -> None:
    admin = coord.add_subparsers(dest="admin", metavar="ADMIN-VERB",
                                 help="talk to a running server over its admin socket instead of running one")

    def admin_verb(group: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
        parser = group.add_parser(name, help=help_text)
        parser.add_argument("--socket", type=Path, default=DEFAULT_ADMIN_SOCKET, metavar="PATH",
                            help=f"the server's admin socket (default {DEFAULT_ADMIN_SOCKET})")
        parser.set_defaults(target=VERB_TARGETS["coord-admin"], loader=None)
        return parser

    key = admin.add_parser("key", help="pre-auth keys").add_subparsers(dest="action", metavar="ACTION", required=True)
    create = admin_verb(key, "create", "create a pre-auth key for joining a network")
    create.add_argument("--network", required=True, metavar="N", help="network the key joins")
    create.add_argument("--reusable", action="store_true", help="the key may join more than one node")
    create.add_argument("--expires", type=_duration, metavar="DURATION", help="key lifetime, e.g. 1h (default: no expiry)")
    create.add_argument("--ephemeral", action="store_true", help="nodes joined with it are removed when they go offline")
    create.add_argument("--address", type=_host_port, metavar="HOST:PORT",
                        help="where nodes reach this server, for the join string (default: public_address in coord.yaml)")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.add_argument("--qr", action="store_true", help="also draw the join string as a QR code")

    nodes = admin.add_parser("nodes", help="nodes").add_subparsers(dest="action", metavar="ACTION", required=True)
    admin_verb(nodes, "list", "list nodes").add_argument("--json", action="store_true", help="print JSON")
    for action, help_text in (("approve", "approve a node waiting to join"), ("revoke", "remove a node's access")):
        admin_verb(nodes, action, help_text).add_argument("node", metavar="NODE", help="node name or public key")
    for action, help_text in (("tag", "give a node a tag (access-rule groups name tag:TAG)"), ("untag", "take a tag away")):
        verb = admin_verb(nodes, action, help_text)
        verb.add_argument("node", metavar="NODE", help="node name or public key")
        verb.add_argument("tag", metavar="TAG", help="letters, digits, '_', '.', '-'")

    relays = admin.add_parser("relays", help="peer relays: nodes that relay for their network").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    for action, help_text in (("allow", "let a node, or the nodes with a tag, relay for its network"),
                              ("disallow", "take back what `relays allow` granted")):
        verb = admin_verb(relays, action, help_text)
        verb.add_argument("member", metavar="NODE|tag:TAG", help="node name or public key, or tag:TAG")
        verb.add_argument("--network", metavar="N", help="the network (required with tag:TAG)")
    admin_verb(relays, "list", "list peer-relay grants and the nodes they cover").add_argument(
        "--json", action="store_true", help="print JSON")

    networks = admin.add_parser("networks", help="networks").add_subparsers(dest="action", metavar="ACTION", required=True)
    admin_verb(networks, "list", "list networks").add_argument("--json", action="store_true", help="print JSON")


def _dispatch(args: argparse.Namespace) -> int:
    module_name, function_name = args.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise
        print(f"meshvpn: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    return getattr(module, function_name)(args)


def _keygen(args: argparse.Namespace) -> int:
    if args.output == "-":
        private = keys.generate_private_key()
        print(keys.encode_key(private))
        print(keys.encode_key(keys.public_key(private)), file=sys.stderr)
    else:
        private = keys.write_private_key(args.output)
        print(keys.encode_key(keys.public_key(private)))
    return 0


def _pubkey(args: argparse.Namespace) -> int:
    if args.key == "-":
        try:
            private = keys.decode_key(sys.stdin.readline())
        except ValueError:
            raise MeshError("stdin does not hold a base64 private key") from None
    else:
        private = keys.read_private_key(args.key)
    print(keys.encode_key(keys.public_key(private)))
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _host_port(text: str):
    try:
        return parse_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _name(text: str) -> str:
    try:
        return parse_hostname(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
