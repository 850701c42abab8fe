"""Shared test set-up: lab capability gating, key-file fixtures and a throwaway PostgreSQL.

Lab tests (`@pytest.mark.lab`) need root and `ip netns`; tests on PostgreSQL need root and
Debian's postgresql package (`meshvpn.lab.postgres`). On a developer machine without them they
are skipped with the reason; under CI (`CI=true`) a missing capability fails the test, so a CI
machine that lost its capabilities cannot pass by skipping.
"""

import functools
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshvpn import keys
from meshvpn.lab.postgres import throwaway_postgres, unavailable_reason


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


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run this test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server():
    """The libpq URI of a throwaway PostgreSQL server shared by the session's tests."""
    reason = unavailable_reason()
    if reason is not None:
        _skip_or_fail(f"no throwaway PostgreSQL: {reason}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip_or_fail("no psycopg (make setup installs the postgresql extra)")
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
