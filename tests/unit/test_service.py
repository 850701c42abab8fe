"""The systemd notify protocol against a real notify socket, log routing, and the unit files."""

import heapq
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from meshvpn import service

UNITS = sorted((Path(__file__).parents[2] / "systemd").glob("*.service"))


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.mark.parametrize("send", [service._sd_notify_fallback, service._load_notify()], ids=["builtin", "installed"])
def test_states_arrive_on_the_notify_socket(notify_socket, send):
    notifier = service.Notifier(send=send)
    notifier.ready("2 peers: 1 direct, 1 relay")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=2 peers: 1 direct, 1 relay"
    notifier.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    notifier.status("line one\nline two")
    assert notify_socket.recv(4096) == b"STATUS=line one line two"
    notifier.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_notify_socket(monkeypatch):
    name = f"meshvpn-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert service._sd_notify_fallback("READY=1")
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert service._sd_notify_fallback("READY=1") is False


@pytest.mark.parametrize(
    "env, pid, expected",
    [
        ({}, 10, None),
        ({"WATCHDOG_USEC": "30000000"}, 10, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None),
        ({"WATCHDOG_USEC": "zero"}, 10, None),
        ({"WATCHDOG_USEC": "0"}, 10, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env, pid, expected):
    assert service.watchdog_interval(env, pid) == expected


class TimerLoop:
    """The one loop method the watchdog uses, `call_later`, on a plain float clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.now + delay, next(self._order), callback))

    def run_until(self, end: float) -> None:
        while self._timers and self._timers[0][0] <= end:
            self.now, _, callback = heapq.heappop(self._timers)
            callback()
        self.now = end


def test_watchdog_pings_from_the_loop():
    # Timed by the loop's own timers, so a loaded machine cannot make pings late or few.
    loop = TimerLoop()
    pinged_at = []
    notifier = service.Notifier(send=lambda s: pinged_at.append((s, loop.now)) or True, watchdog_interval=0.01)
    service.start_watchdog(loop, notifier)
    loop.run_until(0.055)
    assert [s for s, _ in pinged_at] == ["WATCHDOG=1"] * 6
    assert [t for _, t in pinged_at] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])


def test_structured_fields_on_stderr_lines():
    record = logging.LogRecord("meshvpn.node", logging.INFO, __file__, 1, "path changed", None, None)
    record.PEER = "bob"
    record.PATH = "direct"
    line = service.FieldFormatter("%(message)s").format(record)
    assert line == "path changed peer=bob path=direct"


def test_journald_detection_matches_stderr_inode(tmp_path):
    with open(tmp_path / "f", "w") as stream:
        st = os.fstat(stream.fileno())
        assert service.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not service.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not service.under_journald({}, stream)


@pytest.mark.needs(shutil.which("systemd-analyze") is None, "systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit, tmp_path):
    # verify checks that ExecStart exists: point it at this environment's interpreter.
    text = unit.read_text().replace("/usr/local/bin/meshvpn", sys.executable)
    (tmp_path / unit.name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit.name)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Unknown" not in proc.stderr and "Ignoring" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_has_the_service_essentials(unit):
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                 "StateDirectory=meshvpn", "RuntimeDirectory=meshvpn", "ConfigurationDirectory=meshvpn",
                 "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "RestrictAddressFamilies=", "CapabilityBoundingSet="):
        assert line in text, f"{unit.name} lacks {line}"
    if unit.name == "meshvpn.service":
        assert "DeviceAllow=/dev/net/tun rw" in text
