"""Shared set-up for loopback integration tests: external tools and free ports."""

import os
import shutil
import socket

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
