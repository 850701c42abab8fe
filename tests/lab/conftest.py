"""Fixtures for namespace tests: a lab that must leave nothing behind, the meshes a test builds,
and tiny UDP/TCP tools.

The tools are Python scripts run inside namespaces: an echo server that answers with the
source address and port it saw, a prober that reports those answers, and a hole puncher.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable, Iterator

import pytest

from meshvpn.lab import Lab, Namespace, Topology, lab_namespaces
from meshvpn.lab.mesh import Mesh

ECHO_PORT = 7000

ECHO_SERVER = r"""
import selectors, socket, sys
port, addrs = int(sys.argv[1]), sys.argv[2:]
sel = selectors.DefaultSelector()
for addr in addrs:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, port))
    sel.register(udp, selectors.EVENT_READ)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port))
tcp.listen()
sel.register(tcp, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is tcp:
            conn, src = tcp.accept()
            conn.sendall(f"{src[0]}:{src[1]}".encode())
            conn.close()
        else:
            _, src = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(f"{src[0]}:{src[1]}".encode(), src)
"""

PROBE = r"""
import socket, sys, time
proto, src_port, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
sock = socket.socket(socket.AF_INET, kind)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", src_port))


def udp_ask(dst):
    # A few tries on the same socket (same mapping): a loaded machine may be slow to answer
    # the first. Only the target's own answer counts, so a late reply is never misread.
    for _ in range(4):
        sock.sendto(b"probe", dst)
        deadline = time.monotonic() + 0.5
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, src = sock.recvfrom(2048)
            except socket.timeout:
                break
            if src == dst:
                return data.decode()
    return "-"


for target in targets:
    host, port = target.rsplit(":", 1)
    try:
        if proto == "udp":
            print(udp_ask((host, int(port))))
        else:
            sock.settimeout(2.0)
            sock.connect((host, int(port)))
            print(sock.recv(2048).decode())
    except OSError:
        print("-")
"""

PUNCH = r"""
import socket, sys, time
src_port, peer_host, peer_port, window = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", src_port))
sock.settimeout(0.05)
deadline, got = time.monotonic() + window, None
while time.monotonic() < deadline:
    sock.sendto(b"punch", (peer_host, peer_port))
    try:
        data, src = sock.recvfrom(2048)
    except socket.timeout:
        continue
    if got is None:
        got = f"{src[0]}:{src[1]}"
        deadline = min(deadline, time.monotonic() + 0.3)
print(got or "-")
"""

Probe = Callable[..., list[str]]


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab torn down after the test; fails the test if any of its namespaces survive."""
    with Lab() as owned:
        yield owned
    left = [name for name in lab_namespaces() if name.startswith(owned.prefix + "-")]
    assert not left, f"namespaces left behind: {left}"


BUILT_MESHES = pytest.StashKey[list[Mesh]]()


@pytest.fixture
def meshes(request: pytest.FixtureRequest) -> Iterator[list[Mesh]]:
    """The meshes a test builds (it appends them): their daemons stop after the test, and a
    failed test's report carries every process's log (`pytest_runtest_makereport`)."""
    built = request.node.stash[BUILT_MESHES] = []
    yield built
    for mesh in built:
        mesh.stop_nodes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the logs of the test's meshes to its report when set-up or the test failed."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for index, mesh in enumerate(item.stash.get(BUILT_MESHES, [])):
            report.sections.append((f"mesh {index} logs", mesh.logs()))


@pytest.fixture
def topo(lab: Lab) -> Topology:
    """An internet with `coord` at 203.0.113.10 and .11 running the echo server on port 7000."""
    net = Topology(lab)
    net.add_server("coord", addrs=["203.0.113.10", "203.0.113.11"])
    start_echo(net.host("coord"), net.node("coord").addrs)
    return net


def start_echo(ns: Namespace, addrs: list[str], port: int = ECHO_PORT) -> subprocess.Popen:
    """Start the echo server in `ns` and wait until it listens.

    UDP gets one socket per address so each reply leaves from the address that was asked,
    as a NAT's filtering demands.
    """
    proc = ns.popen([sys.executable, "-c", ECHO_SERVER, str(port), *addrs], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def probe() -> Probe:
    """probe(ns, proto, src_port, *targets) -> the `addr:port` each target saw, or "-"."""

    def run(ns: Namespace, proto: str, src_port: int, *targets: str) -> list[str]:
        done = ns.run([sys.executable, "-c", PROBE, proto, str(src_port), *targets], timeout=15)
        return done.stdout.split()

    return run


@pytest.fixture
def punch() -> Callable[..., tuple[str, str]]:
    """punch((ns, port, peer), (ns, port, peer)) -> whom each side heard from, or "-".

    Both sides send to each other's `peer` endpoint from `port` at the same time for up to
    `window` seconds, the seed article's hole punching with plain sockets.
    """

    def run(a: tuple[Namespace, int, str], b: tuple[Namespace, int, str], window: float = 2.0) -> tuple[str, str]:
        procs = [
            ns.popen([sys.executable, "-c", PUNCH, str(port), *peer.rsplit(":", 1), str(window)],
                     stdout=subprocess.PIPE, text=True)
            for ns, port, peer in (a, b)
        ]
        heard = [proc.communicate(timeout=window + 10)[0].strip() for proc in procs]
        return heard[0], heard[1]

    return run
