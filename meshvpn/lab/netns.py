"""Network namespaces and the processes run in them, with cleanup that cannot be skipped.

A `Lab` owns every namespace and child process it creates and removes them on normal exit,
on exceptions, on SIGINT/SIGTERM and at interpreter exit. Namespace names embed the owner's
PID (`mv<PID>-<short>`), so `cleanup_stale()` can recognise and delete what a dead run left
behind without touching anything else. Nothing here changes the root namespace: links are
created inside a namespace (`ip -n NS link add ... peer netns OTHER`) and sysctls are set
through `ip netns exec`.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from meshvpn.errors import MeshError

NAME_PREFIX = "mv"
NAME_PATTERN = re.compile(r"^mv(\d+)-([a-z0-9][a-z0-9-]*)$")
SHORT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
STOP_GRACE_SECONDS = 1.0
NETNS_ETC = Path("/etc/netns")
"""Where `ip netns exec` finds a namespace's own files, bind-mounted over /etc's in its children."""
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

_PING_SCRIPT = r"""
import os, socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
ident = os.getpid() & 0xFFFF
body = struct.pack("!HH", ident, 1) + b"meshvpnlab"
packet = struct.pack("!BBH", 8, 0, checksum(b"\x08\x00\x00\x00" + body)) + body
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.sendto(packet, (sys.argv[1], 0))
deadline = time.monotonic() + float(sys.argv[2])
while (left := deadline - time.monotonic()) > 0:
    sock.settimeout(left)
    try:
        reply, (source, _) = sock.recvfrom(2048)
    except socket.timeout:
        break
    icmp = reply[(reply[0] & 0x0F) * 4:]
    if source == sys.argv[1] and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


class LabError(MeshError):
    """A lab command failed or the lab was asked for something it cannot build."""


def _owner_pid(name: str) -> int | None:
    match = NAME_PATTERN.match(name)
    return int(match.group(1)) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    """All network namespace names known to iproute2 (ours and everyone else's)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_namespaces() -> list[str]:
    """Namespaces that follow this lab's naming scheme, whichever run created them."""
    return [name for name in list_namespaces() if NAME_PATTERN.match(name)]


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose owning process is gone; return the names deleted.

    Only names matching `mv<PID>-<short>` with a dead PID are touched. Processes a killed run
    left inside them are not signalled: the namespace is unlinked and vanishes when they exit.
    """
    removed = []
    for name in lab_namespaces():
        pid = _owner_pid(name)
        if pid is not None and not _pid_alive(pid):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            removed.append(name)
    for etc in NETNS_ETC.glob(f"{NAME_PREFIX}*") if NETNS_ETC.is_dir() else ():
        pid = _owner_pid(etc.name)
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(etc, ignore_errors=True)
    return removed


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with this source tree importable, for `python -m meshvpn...`, and `extra`."""
    env = {**os.environ, **(extra or {})}
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def python_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` with the interpreter running the lab."""
    return [sys.executable, "-m", module, *args]


@dataclass
class Namespace:
    """One network namespace of a lab; runs commands and children inside it."""

    name: str
    """Full iproute2 name, `mv<PID>-<short>`."""
    short: str
    """The name the lab's user gave it."""
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)
    """Children started with `popen` and not yet stopped; the lab kills these at teardown."""

    def exec_prefix(self) -> list[str]:
        """Argv prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self,
        cmd: Sequence[str],
        check: bool = True,
        timeout: float = 10.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace to completion; output is captured as text."""
        return _run([*self.exec_prefix(), *cmd], check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `cmd` inside the namespace; its PID is recorded so teardown can kill it.

        A Ctrl-C or SIGTERM landing between the fork and the record would orphan the child, so
        both are held until the PID is recorded; the child starts with the caller's mask.
        """
        kwargs.setdefault("env", _child_env())
        caller_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _TEARDOWN_SIGNALS)
        try:
            proc = subprocess.Popen(
                [*self.exec_prefix(), *cmd],
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask),
                **kwargs,
            )
            self.processes.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> int:
        """SIGTERM `proc`, SIGKILL it after `grace` seconds; return its exit status."""
        if proc in self.processes:
            self.processes.remove(proc)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return proc.returncode

    def set_hosts(self, names: dict[str, Sequence[str]]) -> Path:
        """Give the namespace its own hosts file (name → addresses), as a machine with its own
        resolver sees names: ``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts`` over
        /etc/hosts for the commands started afterwards; the machine's own file is never touched.
        The lab removes the file with the namespace."""
        etc = NETNS_ETC / self.name
        etc.mkdir(parents=True, exist_ok=True)
        hosts = etc / "hosts"
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{address} {name}" for name, addresses in names.items() for address in addresses]
        hosts.write_text("\n".join(lines) + "\n")
        return hosts

    def ip(self, *args: str) -> str:
        """`ip -n <ns> args...`; returns stdout, raises LabError on failure."""
        return _run(["ip", "-n", self.name, *args]).stdout

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl of this namespace (never the root namespace's)."""
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def ping(self, address: str, timeout: float = 1.0) -> bool:
        """Whether one ICMP echo to `address` is answered within `timeout` seconds."""
        done = self.run(
            [sys.executable, "-c", _PING_SCRIPT, address, str(timeout)],
            check=False,
            timeout=timeout + 5.0,
        )
        return done.returncode == 0


_TEARDOWN_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def _run(
    argv: Sequence[str], check: bool = True, timeout: float = 10.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, env=_child_env()
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and done.returncode != 0:
        raise LabError(f"exit {done.returncode}: {' '.join(argv)}: {done.stderr.strip()}")
    return done


class Lab:
    """Owner of a set of namespaces and their children; use as a context manager.

    Teardown stops children (SIGTERM, then SIGKILL) and deletes namespaces in reverse order of
    creation. It runs at most once, from `close()`, `__exit__`, a SIGINT/SIGTERM (turned into
    KeyboardInterrupt/SystemExit so the stack unwinds) or `atexit`.
    """

    def __init__(self) -> None:
        self.prefix = f"{NAME_PREFIX}{os.getpid()}"
        self.namespaces: dict[str, Namespace] = {}
        self._closed = False
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Lab:
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[signum] = signal.signal(signum, _raise_on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def namespace(self, short: str, forwarding: bool = False) -> Namespace:
        """Create namespace `short` with `lo` up; `forwarding` enables IPv4 forwarding in it."""
        if self._closed:
            raise LabError("lab is closed")
        if not SHORT_PATTERN.match(short):
            raise LabError(f"bad namespace name {short!r}: want {SHORT_PATTERN.pattern}")
        if short in self.namespaces:
            raise LabError(f"namespace {short!r} exists already")
        ns = Namespace(f"{self.prefix}-{short}", short)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces[short] = ns
        ns.ip("link", "set", "lo", "up")
        if forwarding:
            ns.sysctl("net.ipv4.ip_forward", "1")
        return ns

    def close(self) -> None:
        """Stop every child and delete every namespace this lab created. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        spaces = list(self.namespaces.values())
        for ns in spaces:
            for proc in list(ns.processes):
                ns.stop(proc)
        for ns in reversed(spaces):
            _run(["ip", "netns", "del", ns.name], check=False)
            shutil.rmtree(NETNS_ETC / ns.name, ignore_errors=True)
        self.namespaces.clear()


def _raise_on_signal(signum: int, frame: object) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)
