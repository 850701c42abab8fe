"""Shared test set-up: lab capability gating and key-file fixtures.

Lab tests (`@pytest.mark.lab`) need root and `ip netns`. On a developer machine without them
they are skipped with the reason; under CI (`CI=true`) a missing capability fails the test,
so a CI machine that lost its capabilities cannot pass by skipping.
"""

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshvpn import keys


@functools.cache
def lab_unavailable_reason() -> str:
    """Why lab tests cannot run here, or "" when they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, TUN devices, nftables)"
    if shutil.which("ip") is None:
        return "lab tests need `ip` from iproute2"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"lab tests need `ip netns`, which failed: {probe.stderr.strip()}"
    return ""


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is None:
        return
    reason = lab_unavailable_reason()
    if not reason:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run lab tests: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def private_key_file(tmp_path: Path) -> Path:
    """A fresh private key file, mode 0600, in the test's temporary directory."""
    path = tmp_path / "private.key"
    keys.write_private_key(path)
    return path
