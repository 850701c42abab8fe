"""`meshvpn daemon` as systemd runs it: real daemons in namespaces, a notify socket the test binds.

Stage 1: READY=1 comes only once the TUN exists with its overlay address, watchdog pings follow
at the asked rate, and STATUS counts the peers. Stage 2: SIGHUP changes the log level and the
keepalive while a ping runs through the tunnel: nothing is lost and the log says what was
applied. Stage 3: SIGTERM says STOPPING=1, removes the TUN and its overlay route, and the peer
sees the node offline. Without a reachable coord the daemon is still READY, and says offline.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from meshvpn.lab import Namespace, Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

WATCHDOG_USEC = 600_000
"""Asks for a ping every 0.3 s."""
PING_WAIT = 3.0
"""Seconds an echo may take to count as answered: a reply delayed by a loaded 2-core machine's
scheduler (other daemons and tests run beside) is late, not lost."""
READ_POLL = 0.1
"""Seconds between the notify reader's looks at whether its socket was closed."""
TUN = "mvtun0"
COORD_ADDR = "203.0.113.10"


class NotifySocket:
    """The socket systemd would listen on, read all the time as systemd reads it, and every state
    the daemon sent to it with the time it arrived.

    A unix datagram socket queues only `net.unix.max_dgram_qlen` datagrams (10 by default); the
    daemon's next sd_notify() then blocks its event loop until someone reads. A socket read only
    when a test waits on it would stall a daemon three seconds of watchdog pings after its READY=1.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(READ_POLL)
        self.states: list[tuple[float, str]] = []
        self._arrived = threading.Condition()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"notify {path.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                state = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._arrived:
                self.states.append((time.monotonic(), state))
                self._arrived.notify_all()

    def wait(self, match: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first state so far or within `timeout` that matches."""
        deadline, seen = time.monotonic() + timeout, 0
        with self._arrived:
            while True:
                for _, state in self.states[seen:]:
                    if match(state):
                        return state
                seen = len(self.states)
                if (left := deadline - time.monotonic()) <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; got {[s for _, s in self.states]}")
                self._arrived.wait(left)

    def drain(self, seconds: float) -> list[str]:
        """Every state that arrives in the next `seconds`."""
        start = time.monotonic()
        time.sleep(seconds)
        with self._arrived:
            return [state for at, state in self.states if start <= at < start + seconds]

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], NotifySocket]]:
    """notify(name) binds a socket and points the next started child at it, as systemd does."""
    sockets: list[NotifySocket] = []

    def bind(name: str) -> NotifySocket:
        receiver = NotifySocket(tmp_path / f"{name}.notify")
        sockets.append(receiver)
        monkeypatch.setenv("NOTIFY_SOCKET", str(receiver.path))
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        return receiver

    yield bind
    for receiver in sockets:
        receiver.close()


@pytest.fixture
def two_nodes(topo: Topology, tmp_path: Path, notify, meshes) -> Iterator[tuple[Mesh, NotifySocket, NotifySocket]]:
    """A coord and daemons a1 and b1 behind their own NATs, each with its own notify socket;
    a failed test's report carries their logs (the `meshes` fixture)."""
    topo.add_site("a")
    topo.add_site("b")
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    sockets = []
    for name in ("a1", "b1"):
        sockets.append(notify(name))
        mesh.start_node(name, topo.host(name), key, tun=TUN)
    try:
        yield mesh, sockets[0], sockets[1]
    finally:
        mesh.stop_nodes()
        mesh.stop_coord()


def tun_addresses(ns: Namespace) -> str | None:
    """`ip addr show` of the TUN in `ns`, or None when there is no TUN."""
    done = ns.run(["ip", "addr", "show", TUN], check=False)
    return done.stdout if done.returncode == 0 else None


def test_ready_after_the_tun_watchdog_and_status(two_nodes) -> None:
    mesh, a1, _ = two_nodes
    ready = a1.wait(lambda s: s.startswith("READY=1"), 30, "READY=1")
    assert "inet 100.80.0." in tun_addresses(mesh.nodes["a1"].ns), "READY=1 only once the TUN carries its overlay address"
    assert "STATUS=0 peers" in ready or "STATUS=1 peers" in ready
    assert "offline" not in ready
    pings = a1.drain(1.5).count("WATCHDOG=1")
    assert 3 <= pings <= 7, f"one ping per {WATCHDOG_USEC / 2e6:g} s for 1.5 s, got {pings}"
    mesh.wait_registered()
    assert any(mesh.nudge("a1", "b1") for _ in range(5))
    a1.wait(lambda s: s.startswith("STATUS=1 peers: 1 direct, 0 relay"), 15, "STATUS with the direct peer")


def test_sighup_reload_keeps_the_tunnel_and_logs_what_changed(two_nodes) -> None:
    mesh, a1, _ = two_nodes
    a1.wait(lambda s: s.startswith("READY=1"), 30, "READY=1")
    mesh.wait_registered()
    b1_overlay = mesh.overlay("b1")
    node = mesh.nodes["a1"]
    assert any(mesh.nudge("a1", "b1") for _ in range(5)), "the tunnel works before the reload"
    # The reload is what is on trial: the path must be settled first (the first packets may still
    # ride a handshake or a path being confirmed), both ways, as the echo replies come back.
    settled = mesh.wait_for_paths({("a1", "b1"): ("direct",), ("b1", "a1"): ("direct",)}, timeout=15)
    assert len(settled) == 2, f"a direct path both ways before the reload: {settled}"
    config = yaml.safe_load(node.config.read_text())
    config["log"]["level"] = "info"
    config["paths"] = {"keepalive": "10s"}
    node.config.write_text(yaml.safe_dump(config))
    answered = 0
    for round_no in range(20):
        if round_no == 5:
            node.proc.send_signal(signal.SIGHUP)
        answered += node.ns.ping(b1_overlay, timeout=PING_WAIT)
    assert answered == 20, f"{20 - answered} pings lost across the reload"
    a1.wait(lambda s: s == "RELOADING=1", 5, "RELOADING=1")
    a1.wait(lambda s: s.startswith("READY=1") and len([x for _, x in a1.states if x.startswith("READY=1")]) == 2,
            5, "READY=1 after the reload")
    log = node.log.read_text()
    assert "reloaded: paths.keepalive=10.0, log.level=info" in log
    assert "needs a restart" not in log


def test_sigterm_removes_the_tun_and_its_route_and_the_peer_sees_it_leave(two_nodes) -> None:
    mesh, a1, _ = two_nodes
    a1.wait(lambda s: s.startswith("READY=1"), 30, "READY=1")
    mesh.wait_registered()
    wait_for(lambda: mesh.peer("b1", "a1")["online"], 10, "b1 to see a1 online")
    node = mesh.nodes["a1"]
    assert "100.80.0.0/24" in node.ns.ip("route")
    # A clean exit is asked for, not a quick one: the lab's 1 s grace before a kill is too short
    # for a daemon shutting down on a loaded two-core machine.
    assert node.ns.stop(node.proc, grace=10.0) == 0, "a clean exit, no kill needed"
    a1.wait(lambda s: s == "STOPPING=1", 1, "STOPPING=1")
    assert tun_addresses(mesh.nodes["a1"].ns) is None, "the TUN is gone"
    assert "100.80.0.0/24" not in node.ns.ip("route"), "and its overlay route with it"
    wait_for(lambda: not mesh.peer("b1", "a1")["online"], 5, "b1 to see a1 offline at once")


def test_ready_and_offline_when_the_coord_is_unreachable(topo: Topology, tmp_path: Path, notify) -> None:
    topo.add_site("a")
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    a1 = notify("a1")
    mesh.start_node("a1", topo.host("a1"), "mvk-000000000000-unused", tun=TUN)
    try:
        ready = a1.wait(lambda s: s.startswith("READY=1"), 30, "READY=1")
        assert "offline: coord unreachable" in ready
        assert tun_addresses(mesh.nodes["a1"].ns) is not None, "the TUN is up, waiting for the coord"
    finally:
        mesh.stop_nodes()
    a1.wait(lambda s: s == "STOPPING=1", 1, "STOPPING=1")
