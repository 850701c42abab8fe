"""What every bench row's start function uses: start a program, wait for its device and its first reply.

A row's processes start with `Namespace.popen` (so teardown can kill them by PID), and a row fails
with `BenchError`, naming what did not happen and the tails of its logs.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from meshvpn.errors import MeshError
from meshvpn.lab import Namespace

if TYPE_CHECKING:
    from meshvpn.bench.peers import BenchNet

START_TIMEOUT = 20.0
"""Seconds a tunnel may take to come up (first reply through it) before its row fails."""
LOG_TAIL = 400
POLL_SECONDS = 0.05
"""How often a start-up condition is checked: fine enough for the time-to-first-reply figure."""

T = TypeVar("T")


class BenchError(MeshError):
    """A row's tunnel did not come up."""


@dataclass
class Tunnel:
    """A tunnel that is up: where `b` is inside it, and what bringing it up measured."""

    target: str
    """Address of `b` through the tunnel."""
    mtu: int | None
    """MTU of `a`'s tunnel interface."""
    first_ping_s: float | None = None
    """Seconds from both ends being up to the first ping reply, where the row measures it."""
    path: str | None = None
    """Path kind the row measured on, where the tunnel has several (the row waits for it after the first reply)."""
    relay_pid: int | None = None
    """The relay process of a relayed row: its CPU time is read around the transfers."""


def wait_for(probe: Callable[[], T], what: str, timeout: float = START_TIMEOUT, logs: tuple[Path, ...] = ()) -> T:
    """Poll `probe` until it returns something truthy; else raise naming `what` and the logs' tails."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"{what} not within {timeout:.0f}s{tails(logs)}")
        time.sleep(POLL_SECONDS)


def tails(logs: tuple[Path, ...]) -> str:
    """` (name: last lines | ...; ...)` of the logs that exist, for an error message; "" if none."""
    found = "; ".join(f"{log.name}: {_tail(log)}" for log in logs if log.exists())
    return f" ({found})" if found else ""


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace")[-LOG_TAIL:].split("\n")).strip(" |")


def spawn(ns: Namespace, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` in `ns` with output to `log`; `env` adds to the inherited environment."""
    with log.open("ab") as out:
        extra = {} if env is None else {"env": {**os.environ, **env}}
        return ns.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **extra)


def link_mtu(ns: Namespace, dev: str) -> int | None:
    """MTU of `dev` in `ns`, or None while it does not exist."""
    done = ns.run(["cat", f"/sys/class/net/{dev}/mtu"], check=False)
    return int(done.stdout) if done.returncode == 0 else None


def address_up(ns: Namespace, dev: str, cidr: str, log: Path, mtu: int | None = None) -> None:
    """Wait for `dev` to appear in `ns`, give it `cidr` (and `mtu`) and bring it up."""
    wait_for(lambda: link_mtu(ns, dev), f"{dev} in {ns.short}", logs=(log,))
    ns.ip("addr", "add", cidr, "dev", dev)
    ns.ip("link", "set", dev, "up", *(() if mtu is None else ("mtu", str(mtu))))


def reachable(net: BenchNet, target: str, logs: tuple[Path, ...]) -> float:
    """Wait until `a` gets a ping reply from `target` (IPv4, or IPv6 with `ping -6`); return when it did (monotonic)."""
    if ":" in target:
        ping = ["ping", "-6", "-n", "-c", "1", "-W", "0.2", target]
        wait_for(lambda: net.a.run(ping, check=False).returncode == 0, f"ping reply from {target}", logs=logs)
    else:
        wait_for(lambda: net.a.ping(target, timeout=0.2), f"ping reply from {target}", logs=logs)
    return time.monotonic()


def overlay(subnet: str, index: int) -> str:
    """The overlay address of side `index` (0 is `a`) in a row's /24 `subnet` (three octets)."""
    return f"{subnet}.{index + 1}"
