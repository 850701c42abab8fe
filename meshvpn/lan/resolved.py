"""Registering the node's DNS responder with systemd-resolved, as Tailscale does on Linux.

Where resolved runs, the TUN device gets per-link DNS (the responder on the overlay address)
and a routing-only domain (`~NETWORK.SUFFIX`, plus the bare suffix), so names of the mesh go
to the node and every other name goes where it went before; `default-route no` keeps resolved
from sending other names to us. `unregister` reverts the link on exit. Commands go through
`resolvectl`, which speaks D-Bus to resolved. Where resolved does not run, nothing is changed
and docs/lan-party.md lists the alternatives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

RESOLVED_RUNTIME = Path("/run/systemd/resolve")
COMMAND_TIMEOUT = 5.0
PROC = Path("/proc")
RESOLVED_COMM = "systemd-resolve"
"""The process name of systemd-resolved as /proc shows it (cut to 15 characters)."""


def unavailable_reason() -> str:
    """Why registration cannot happen here, or "" when resolved runs."""
    if shutil.which("resolvectl") is None:
        return "resolvectl is not installed (systemd-resolved is not on this machine)"
    if not (RESOLVED_RUNTIME / "io.systemd.Resolve").exists():
        return f"systemd-resolved is not running ({RESOLVED_RUNTIME}/io.systemd.Resolve is missing)"
    if _resolved_only_elsewhere(PROC):
        return "systemd-resolved runs in another network namespace, whose links are not this node's"
    return ""


def _resolved_only_elsewhere(proc: Path) -> bool:
    """True when resolved processes are visible and none shares our network namespace.

    A daemon in a network namespace of its own (a lab, a container sharing the host's /run)
    would otherwise configure the host resolver's link of the same name or index.
    """
    try:
        ours = os.readlink(proc / "self" / "ns" / "net")
    except OSError:
        return False
    seen = False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != RESOLVED_COMM:
                continue
            if os.readlink(entry / "ns" / "net") == ours:
                return False
        except OSError:
            continue
        seen = True
    return seen


def register_commands(link: str, server: str, port: int, domains: tuple[str, ...]) -> list[list[str]]:
    """The resolvectl calls that make `server` the DNS server for `domains` on `link`."""
    address = server if port == 53 else (f"[{server}]:{port}" if ":" in server else f"{server}:{port}")
    return [
        ["resolvectl", "dns", link, address],
        ["resolvectl", "domain", link, *(f"~{domain}" for domain in domains)],
        ["resolvectl", "default-route", link, "no"],
    ]


def unregister_commands(link: str) -> list[list[str]]:
    return [["resolvectl", "revert", link]]


async def _run(commands: list[list[str]]) -> str:
    """Run each command; the first failure's message, or ""."""
    for command in commands:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            return f"{' '.join(command)}: no answer in {COMMAND_TIMEOUT:g}s"
        if process.returncode != 0:
            return f"{' '.join(command)}: {err.decode(errors='replace').strip()}"
    return ""


async def register(link: str, server: str, port: int, domains: tuple[str, ...]) -> bool:
    """Register with resolved when it runs; log why not otherwise. True when registered."""
    reason = unavailable_reason()
    if reason:
        log.info("mesh names are not registered with systemd-resolved: %s", reason)
        return False
    problem = await _run(register_commands(link, server, port, domains))
    if problem:
        log.warning("registering mesh names with systemd-resolved failed: %s", problem)
        await _run(unregister_commands(link))
        return False
    log.info("systemd-resolved sends %s to %s on %s", ", ".join(domains), server, link)
    return True


async def unregister(link: str) -> None:
    problem = await _run(unregister_commands(link))
    if problem:
        log.warning("reverting %s in systemd-resolved failed: %s", link, problem)
