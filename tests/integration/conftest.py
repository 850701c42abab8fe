"""Shared set-up for loopback integration tests: external tools, free ports and coturn."""

import os
import shutil
import socket
import subprocess

import pytest


@pytest.fixture
def tool():
    """Find an external program; skip without it, but fail under CI, which must have it."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            reason = f"`{name}` is not installed (`make setup` installs it)"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        return path

    return find


@pytest.fixture
def free_udp_port():
    """A UDP port free on every given loopback host, and the `span - 1` ports after it."""

    def find(*hosts: str, span: int = 1) -> int:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((hosts[0], 0))
                port = probe.getsockname()[1]
            if port + span <= 65536 and all(_udp_free(h, p) for h in hosts for p in range(port, port + span)):
                return port
        raise RuntimeError(f"no {span} free UDP ports on {hosts}")

    return find


def _udp_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@pytest.fixture
def start_coturn(tool, tmp_path):
    """start_coturn(*options) -> the coturn process, stopped by its PID after the test.

    coturn runs in the foreground with no configuration file (`-n`), no TLS, DTLS, TCP or CLI,
    and its log (`turnserver.log`), pid file and database in the test's temporary directory.
    """
    procs: list[subprocess.Popen] = []

    def start(*options: str) -> subprocess.Popen:
        argv = [
            tool("turnserver"), "-n", *options, "--no-tls", "--no-dtls", "--no-tcp", "--no-cli",
            "--log-file", str(tmp_path / "turnserver.log"), "--simple-log", "--no-stdout-log",
            "--pidfile", str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turndb"),
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path))
        return procs[-1]

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
