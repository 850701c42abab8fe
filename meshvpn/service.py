"""Running as a system service: the systemd notify protocol and where log lines go.

Every long-running verb (``daemon``, ``coord``, ``relay``) tells systemd when it is
ready, what it is doing and that its event loop is alive, and logs to journald with
structured fields when systemd runs it.  Outside systemd the same calls cost nothing
and logs are plain stderr lines.

The notify protocol goes through systemd-python (``systemd.daemon.notify``) when it is
installed.  Without it the daemon still runs: it says so once and speaks the protocol
itself (one datagram per state change to ``$NOTIFY_SOCKET``), so a ``Type=notify``
unit never hangs waiting for READY=1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Protocol

from meshvpn.errors import MeshError

log = logging.getLogger("meshvpn.service")

# Fields a caller may pass with ``extra=`` that journald indexes and stderr shows.
STRUCTURED_FIELDS = ("PEER", "PATH", "REASON", "ENDPOINT", "NODE", "RELAY")


def _sd_notify_fallback(state: str) -> bool:
    """The notify protocol itself: one datagram to $NOTIFY_SOCKET (sd_notify(3))."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", address, exc)
            return False
    return True


def _load_notify() -> Callable[[str], bool]:
    try:
        from systemd import daemon as sd_daemon
    except ImportError:
        if os.environ.get("NOTIFY_SOCKET"):
            log.info("systemd-python is not installed: speaking the notify protocol directly")
        return _sd_notify_fallback
    return sd_daemon.notify


@dataclass
class Notifier:
    """Readiness, status and watchdog notifications for systemd.

    ``send`` is injectable so tests can observe what would be sent.
    """

    send: Callable[[str], bool]
    """Sends one notify state string; returns whether anything was sent."""

    watchdog_interval: Optional[float] = None
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when disabled."""

    @classmethod
    def from_environment(cls) -> "Notifier":
        return cls(send=_load_notify(), watchdog_interval=watchdog_interval(os.environ, os.getpid()))

    def ready(self, status: str = "") -> None:
        self.send("READY=1\nSTATUS=" + status if status else "READY=1")

    def status(self, text: str) -> None:
        self.send("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")


def watchdog_interval(environ, pid: int) -> Optional[float]:
    """Half of the watchdog timeout systemd asked for, as sd_watchdog_enabled(3) reads it."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != pid:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def start_watchdog(loop, notifier: Notifier) -> None:
    """Ping the watchdog from the event loop itself, so a hung loop gets restarted."""
    interval = notifier.watchdog_interval
    if interval is None:
        return

    def ping() -> None:
        notifier.watchdog()
        loop.call_later(interval, ping)

    ping()


class Service(Protocol):
    """A started server that `serve_until_stopped` can run: it reports, reloads and closes."""

    def status(self) -> str: ...
    def reload(self, settings: Any) -> None: ...
    def close(self) -> Awaitable[None]: ...


def run_server(role: str, settings: Any, make_server: Callable[[Any], Any],
               load_settings: Callable[[], Any], status_interval: float) -> int:
    """The whole life of a server verb (`coord`, `relay`): log set-up, start, serve, close."""
    setup_logging(settings.log.level, role)
    asyncio.run(start_and_serve(lambda: make_server(settings), load_settings, Notifier.from_environment(),
                                status_interval))
    return 0


async def start_and_serve(make_server: Callable[[], Any], load_settings: Callable[[], Any], notifier: Notifier,
                          status_interval: float) -> None:
    """Start a server and serve it until stopped (`serve_until_stopped`).

    A SIGHUP that comes while it starts (after it logged that it listens, say) is kept and
    applied once it serves: before, it was lost, or ended the process (SIGHUP's default)."""
    asked: list[bool] = []
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, asked.append, True)
    server = make_server()
    await server.start()
    await serve_until_stopped(server, load_settings, notifier, status_interval, reload_now=bool(asked))


async def first_set(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set (the daemon's READY waits for the coord or a stop)."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()


async def serve_until_stopped(
    server: Service, load_settings: Callable[[], Any], notifier: Notifier, status_interval: float = 10.0,
    reload_now: bool = False,
) -> None:
    """Run a started `server` until SIGTERM or SIGINT, then close it.

    Tells systemd READY=1, the watchdog pings and STATUS= changes; SIGHUP reloads with
    `load_settings()` (a failed reload is logged and the running configuration kept), and so
    does ``reload_now`` (a SIGHUP came while the server started).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def reload() -> None:
        notifier.reloading()
        try:
            server.reload(load_settings())
        except MeshError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        except Exception:
            log.exception("reload failed, keeping the running configuration")
        notifier.ready(server.status())

    async def report_status() -> None:
        last = None
        while True:
            status = server.status()
            if status != last:
                notifier.status(status)
                last = status
            await asyncio.sleep(status_interval)

    loop.add_signal_handler(signal.SIGHUP, reload)
    if reload_now:
        reload()
    notifier.ready(server.status())
    start_watchdog(loop, notifier)
    reporter = asyncio.create_task(report_status())
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        notifier.stopping()
        reporter.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await server.close()


class FieldFormatter(logging.Formatter):
    """Plain stderr lines, with any structured fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{name.lower()}={getattr(record, name)}" for name in STRUCTURED_FIELDS if hasattr(record, name)]
        return line + (" " + " ".join(fields) if fields else "")


def under_journald(environ=os.environ, stream=sys.stderr) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str, role: str) -> logging.Handler:
    """Send meshvpn's log lines to journald under systemd, else to stderr.

    Returns the handler so that a reload can change the level in place.
    """
    handler: logging.Handler = logging.StreamHandler()
    handler.setFormatter(FieldFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if under_journald():
        try:
            from systemd.journal import JournalHandler
        except ImportError:
            pass
        else:
            handler = JournalHandler(SYSLOG_IDENTIFIER=f"meshvpn-{role}")
    root = logging.getLogger("meshvpn")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    root.propagate = False
    return handler


def set_level(level: str) -> None:
    logging.getLogger("meshvpn").setLevel(level.upper())

