"""The throwaway PostgreSQL server (`meshvpn.lab.postgres`): a server whose starter was killed
outright is stopped and its directory removed at the next start; a live starter's is left alone."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from meshvpn.lab import postgres

pytestmark = pytest.mark.skipif(postgres.unavailable_reason() is not None,
                                reason=f"no throwaway PostgreSQL: {postgres.unavailable_reason()}")

STARTER = """
import sys, time
from meshvpn.lab.postgres import throwaway_postgres
with throwaway_postgres() as dsn:
    print(dsn, flush=True)
    time.sleep(120)
"""


def postmaster(directory: Path) -> int:
    return int((directory / "data" / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    try:
        return "postgres" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_a_server_whose_starter_was_killed_is_stopped_and_removed_and_a_live_one_is_kept():
    child = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    try:
        dsn = child.stdout.readline().strip()
        orphan = Path(dsn.split("host=", 1)[1])
        with postgres.throwaway_postgres() as live_dsn:
            assert orphan.is_dir() and (orphan / postgres.STARTER).read_text().split()[0] == str(child.pid)
            assert postgres.reap_leftovers() == []  # both starters are alive
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            pid = postmaster(orphan)
            assert running(pid)  # pg_ctl detached it: it outlived its starter
            assert orphan in postgres.reap_leftovers()
            assert not orphan.exists() and not running(pid)
            with psycopg.connect(live_dsn) as conn:  # this process's own server was left alone
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
