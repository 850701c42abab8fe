"""A throwaway PostgreSQL server for tests and the bench: Debian's postgresql package, run as
the ``postgres`` user in a fresh temporary directory, listening only on a unix socket there.

initdb refuses to run as root, so every server program runs through ``runuser -u postgres``;
the directory (data, socket, log) belongs to that user and is removed afterwards, also when the
caller fails. Nothing listens on TCP (``listen_addresses=''``) and nothing outside the directory
is touched. fsync is off: a test database need not survive a power cut.

``pg_ctl`` detaches the server, so a caller killed outright (SIGKILL, a CI timeout) leaves it
running with its directory. Each directory therefore names its starter (`STARTER`: PID and
start time, so a reused PID does not pass for it), and every start first stops with ``pg_ctl``
the servers of directories whose starter is gone, and removes those directories (`reap_leftovers`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

BIN = Path("/usr/lib/postgresql/15/bin")
"""Where Debian 12's postgresql-15 package puts initdb and pg_ctl."""
USER = "postgres"
START_TIMEOUT = 60
PREFIX = "meshvpn-pg-"
STARTER = "starter"
"""File in a server's directory: the PID and start time (clock ticks since boot) of the process
that started it."""


class PostgresUnavailable(Exception):
    """This machine cannot run a throwaway server (no package, no postgres user, not root)."""


def unavailable_reason() -> str | None:
    """Why `throwaway_postgres` cannot work here, or None when it can."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return f"no {BIN}/initdb and pg_ctl (Debian package postgresql-15)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} user"
    if os.geteuid() != 0:
        return "needs root to run the server as the postgres user"
    if shutil.which("runuser") is None:
        return "no runuser (util-linux)"
    return None


def _as_postgres(*argv: str) -> None:
    done = subprocess.run(["runuser", "-u", USER, "--", *argv], capture_output=True, text=True,
                          timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise PostgresUnavailable(f"{Path(argv[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _starter_gone(directory: Path) -> bool:
    """Whether the process that started `directory`'s server has ended; False without a record
    (a directory being set up, or one this module did not make)."""
    try:
        pid_text, start = (directory / STARTER).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return _process_start(pid) != start


def reap_leftovers(root: Path | None = None) -> list[Path]:
    """Stop the servers of throwaway directories in `root` (the temporary directory) whose
    starter is gone, and remove the directories; the ones reaped."""
    reaped = []
    for directory in sorted(Path(root or tempfile.gettempdir()).glob(PREFIX + "*")):
        if directory.is_dir() and _starter_gone(directory):
            if (directory / "data" / "postmaster.pid").exists():
                _stop(directory / "data")
            shutil.rmtree(directory, ignore_errors=True)
            reaped.append(directory)
    return reaped


@contextlib.contextmanager
def throwaway_postgres(prefix: str = PREFIX) -> Iterator[str]:
    """Start a server, yield the libpq URI of its ``postgres`` database, then stop and remove it."""
    reason = unavailable_reason()
    if reason is not None:
        raise PostgresUnavailable(reason)
    reap_leftovers()
    user = pwd.getpwnam(USER)
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    data = directory / "data"
    started = False
    try:
        (directory / STARTER).write_text(f"{os.getpid()} {_process_start(os.getpid())}\n")
        os.chown(directory, user.pw_uid, user.pw_gid)
        _as_postgres(str(BIN / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8")
        options = f"-c listen_addresses='' -k {directory} -c fsync=off -c max_connections=50"
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"),
                     "-o", options, "-w", "-t", str(START_TIMEOUT), "start")
        started = True
        yield f"postgresql://{USER}@/postgres?host={directory}"
    finally:
        if started:
            _stop(data)
        shutil.rmtree(directory, ignore_errors=True)


def _stop(data: Path) -> None:
    """Stop the server; if pg_ctl cannot, end the postmaster this module started, by its PID
    (when that process is still a postgres server of `data`)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        if str(data) not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            pid = None
    except (OSError, ValueError, IndexError):
        pid = None
    try:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    except (PostgresUnavailable, subprocess.TimeoutExpired):
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
