"""Shared test set-up: capability gating, external tools, key-file fixtures and a throwaway PostgreSQL.

Some tests need what a developer machine may lack: lab tests (`@pytest.mark.lab`) need root and
`ip netns`; tests on PostgreSQL need root and Debian's postgresql package (`meshvpn.lab.postgres`);
others an external program (the `tool` fixture) or something built or installed
(`@pytest.mark.needs(missing, reason)`). Without it they are skipped with the reason; under CI
(`CI=true`) a missing capability fails the test, so a CI machine that lost a capability (or
whose optional C extension did not build) cannot pass by skipping.
"""

import functools
import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, NoReturn

import pytest
from hypothesis import HealthCheck, settings

from meshvpn import keys
from meshvpn.lab.postgres import throwaway_postgres, unavailable_reason
from meshvpn.node.peertimers import PeerTimers

# Hypothesis' per-example deadline and its too-slow health check time each example by the wall
# clock, which on the suite's shared two cores (other work, four xdist workers) measures the
# machine's load, not the code: a 0.1 ms example once took 320 ms there. What a property test
# asserts is its assertions; a test that must be fast says so with its own `settings`.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _peer_timers_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node core in a test compares its kept timer with the brute force over all its peers, so a
    change to a peer that does not mark it (`meshvpn.node.peertimers`) fails the test that makes it."""
    monkeypatch.setattr(PeerTimers, "check", True)


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


def unavailable(reason: str) -> NoReturn:
    """Skip for want of a capability; under CI, which must have every one, fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run this test: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        missing, reason = mark.args
        if missing:
            unavailable(reason)
    if item.get_closest_marker("lab") is not None and (reason := lab_unavailable_reason()):
        unavailable(reason)


@pytest.fixture
def tool() -> Callable[[str], str]:
    """Find an external program by name: skip without it, but fail under CI, which must have it."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            unavailable(f"`{name}` is not installed (`make setup` installs it)")
        return path

    return find


@pytest.fixture
def private_key_file(tmp_path: Path) -> Path:
    """A fresh private key file, mode 0600, in the test's temporary directory."""
    path = tmp_path / "private.key"
    keys.write_private_key(path)
    return path


@pytest.fixture(scope="session")
def postgres_server():
    """The libpq URI of a throwaway PostgreSQL server shared by the session's tests."""
    reason = unavailable_reason()
    if reason is not None:
        unavailable(f"no throwaway PostgreSQL: {reason}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("no psycopg (make setup installs the postgresql extra)")
    with throwaway_postgres() as dsn:
        yield dsn


_databases = itertools.count()


@pytest.fixture
def postgres_dsn(postgres_server):
    """A fresh, empty database on the throwaway server, as a libpq socket DSN."""
    from psycopg.conninfo import make_conninfo

    from meshvpn.coord.pgstore import connect

    name = f"test_{os.getpid()}_{next(_databases)}"
    with connect(postgres_server) as db:
        db.execute(f"CREATE DATABASE {name}")
    return make_conninfo(postgres_server, dbname=name)
