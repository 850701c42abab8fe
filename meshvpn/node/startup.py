"""What a node checks before it opens anything, and the words for the failures a newcomer meets.

A first run fails for ordinary reasons: no `/dev/net/tun` in a container, not root, the UDP
port taken by a daemon already running, a coordination server that does not answer or holds
another key, a pre-auth key that expired or was used. Each gets one line that says what to do,
instead of a traceback or a retry loop that says nothing. `preflight` runs once before the
daemon starts (and creates the state directory, as systemd's StateDirectory= would); the
`explain_*` functions turn coord failures into those lines for the daemon's log and `meshvpn join`.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
from pathlib import Path

from meshvpn.node.datapath import fastpath
from meshvpn.config import Address, NodeConfig
from meshvpn.errors import MeshError

log = logging.getLogger("meshvpn.node")

TUN_DEVICE = Path("/dev/net/tun")
CAP_NET_ADMIN = 12
DESCRIPTORS = 8192
"""Descriptors the daemon asks for: birthday probing holds up to 256 UDP sockets and a TCP
campaign about 1,000 connections at once, past the 1,024 many systems give a process."""

REFUSALS = {
    "auth_key_invalid": "the coordination server does not know this pre-auth key: ask its admin for a new join "
                        "string (`meshvpn coord key create`) and run `meshvpn join` with it",
    "auth_key_expired": "the pre-auth key has expired: ask the coordination server's admin for a new one "
                        "(`meshvpn coord key create --expires 1h`), then `meshvpn leave` and `meshvpn join` with it",
    "auth_key_used": "the pre-auth key was one-off and another machine used it: ask for a new one (or a "
                     "--reusable one), then `meshvpn leave` and `meshvpn join` with it",
    "approval_pending": "this network needs an admin's approval: on the coordination server, "
                        "`meshvpn coord nodes approve NAME`; the node comes online by itself then",
    "network_full": "the network's address range is used up: its admin can widen networks[].cidr in coord.yaml",
    "revoked": "an admin revoked this node: it cannot come back with this key; if that was a mistake, "
               "`meshvpn leave` and `meshvpn join` again with a new join string (a new node)",
}


def preflight(config: NodeConfig, config_path: Path | str) -> None:
    """Refuse with a line that says what to do, before anything is opened; create the state dir."""
    _check_tun()
    _check_port(config, config_path)
    raise_descriptor_limit()
    if not config.state_dir.is_dir():
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log.info("created the state directory %s", config.state_dir)
    log.info("data path: %s", fastpath.DATA_PATH_TEXT)


def raise_descriptor_limit(wanted: int = DESCRIPTORS) -> int:
    """Raise the soft descriptor limit towards `wanted` (never past the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("descriptor limit raised from %d to %d", soft, target)
        return target
    return soft


def _check_tun() -> None:
    if not TUN_DEVICE.exists():
        raise MeshError(f"{TUN_DEVICE} is missing: load the module (`modprobe tun`), or in a container pass the "
                        "device (`--device /dev/net/tun --cap-add NET_ADMIN`)")
    if os.geteuid() != 0 and not _has_net_admin():
        raise MeshError("making the TUN device needs root or CAP_NET_ADMIN: run it as root (sudo), or through "
                        "the systemd unit (`systemctl enable --now meshvpn`), which grants that capability")


def _has_net_admin() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return True  # cannot tell: let the TUN open say it
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return True


def _check_port(config: NodeConfig, config_path: Path | str) -> None:
    listen = config.listen
    if listen.port == 0:
        return
    family = socket.AF_INET6 if ":" in listen.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((listen.address, listen.port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise MeshError(f"cannot bind UDP {listen.address}:{listen.port}: {exc.strerror}") from None
            raise MeshError(f"UDP port {listen.port} is in use, perhaps by a meshvpn daemon already running "
                            f"(`ss -ulpn 'sport = :{listen.port}'` shows which); set listen.port in {config_path} "
                            "to another port, or 0 for any") from None


def explain_coord_failure(coord: Address, exc: BaseException) -> str:
    """One line for a coord link that did not come up: what was tried, and what to check."""
    from meshvpn.node.coordclient import CoordHandshakeFailed, CoordUnreachable

    if isinstance(exc, CoordUnreachable):
        if exc.unresolved:
            return f"cannot resolve the coordination server's name {coord.host!r} ({exc.reason}): check the name " \
                   "and this machine's DNS"
        return (f"cannot reach the coordination server at {coord} over TCP ({exc.reason}): is `meshvpn coord` "
                f"running there, and does the server's firewall let TCP port {coord.port} in?")
    if isinstance(exc, CoordHandshakeFailed):
        return (f"the server at {coord} did not finish the handshake ({exc.reason}): it does not hold the pinned "
                "coord.public_key, or it is not a meshvpn coordination server; compare with `meshvpn pubkey -k "
                "coord.key` on the server, or join again with a fresh join string")
    return f"coord link to {coord} lost: {exc or type(exc).__name__}"


def explain_refusal(code: str, message: str) -> str:
    """The coord's `error` answer, and what to do about it."""
    advice = REFUSALS.get(code)
    said = message or code
    return f"the coordination server refused this node: {said}" + (f"; {advice}" if advice else f" ({code})")
