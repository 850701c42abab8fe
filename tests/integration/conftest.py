"""Shared set-up for loopback integration tests: free ports, coturn and the coord server's log
(external tools: `tests/conftest.py`)."""

import asyncio
import ipaddress
import logging
import socket
import subprocess
import time

import pytest

from meshvpn import keys
from meshvpn.config import Address, ConsoleConfig, CoordConfig, NetworkConfig
from meshvpn.control import messages as m
from meshvpn.node.coordclient import CoordRefused, connect
from meshvpn.coord.server import CoordServer


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


class LogLines(logging.Handler):
    """Every line the server logs, to wait for the one a test expects."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    async def wait_for(self, *fragments: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if all(fragment in line for fragment in fragments):
                    return line
            await asyncio.sleep(0.01)
        raise AssertionError(f"no log line with {fragments}; got:\n" + "\n".join(self.lines))


@pytest.fixture
def server_log():
    logger = logging.getLogger("meshvpn.coord.server")
    handler, old_level = LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def start_coturn(tool, tmp_path):
    """start_coturn(*options) -> the coturn process, stopped by its PID after the test.

    coturn runs in the foreground with no configuration file (`-n`), no TLS, DTLS, TCP or CLI,
    and its log (`turnserver.log`), pid file and database in the test's temporary directory.
    """
    procs: list[subprocess.Popen] = []

    def start(*options: str) -> subprocess.Popen:
        argv = [
            tool("turnserver"), "-n", *options, "--no-tls", "--no-dtls", "--no-tcp", "--no-cli",
            "--log-file", str(tmp_path / "turnserver.log"), "--simple-log", "--no-stdout-log",
            "--pidfile", str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turndb"),
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path))
        return procs[-1]

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----- the coordination server with its web console, and nodes that join it over the real channel


class ConsoleMesh:
    """A coord on loopback with its console on, networks `home` (open) and `office` (approval
    required), and nodes registered through `meshvpn.node.coordclient` as real daemons would."""

    PASSWORD = "correct horse battery staple"

    def __init__(self, tmp_path):
        keys.write_private_key(tmp_path / "coord.key")
        password_file = tmp_path / "console.password"
        password_file.write_text(self.PASSWORD + "\n")
        password_file.chmod(0o600)
        self.config = CoordConfig(
            private_key_file=tmp_path / "coord.key",
            database=tmp_path / "coord.db",
            listen=Address("127.0.0.1", 0),
            stun_listen=Address("127.0.0.1", 0),
            admin_socket=tmp_path / "admin.sock",
            networks=(
                NetworkConfig(name="home", cidr=ipaddress.ip_network("100.64.0.0/24")),
                NetworkConfig(name="office", cidr=ipaddress.ip_network("100.65.0.0/24"), approval_required=True),
            ),
            console=ConsoleConfig(enabled=True, listen=Address("127.0.0.1", 0), password_file=password_file),
        )
        self.server = None
        self.clients = []

    async def __aenter__(self):
        self.server = CoordServer(self.config)
        await self.server.start()
        return self

    async def __aexit__(self, *exc_info):
        for client in self.clients:
            client.close()
        await self.server.close()

    @property
    def url(self) -> str:
        host, port = self.server.console.address
        return f"http://{host}:{port}"

    def token(self, network: str) -> str:
        answer = self.server.admin_answer({"cmd": "key_create", "network": network, "reusable": True})
        return answer["token"]

    async def connect(self, name: str, network: str = "home"):
        """A node's channel, registered; `office` nodes come back waiting for approval."""
        client = await connect(self.server.address, self.server.identity.public, keys.generate_private_key(),
                               keepalive=5.0)
        self.clients.append(client)
        register = m.Register(name, "test", (m.Endpoint("10.0.0.7", 41641),), auth_key=self.token(network))
        try:
            await client.register(register)
        except CoordRefused as refused:
            assert refused.code == "approval_pending", refused
        return client

    def report_paths(self, client, **paths: str) -> None:
        """What a node's core sends when its paths change (`meshvpn.node.core`)."""
        client.send(m.Paths(tuple(m.PeerPath(peer, kind) for peer, kind in paths.items())))

    def node(self, name: str) -> dict:
        return next(n for n in self.server.admin_answer({"cmd": "nodes_list"})["nodes"] if n["name"] == name)


@pytest.fixture
def console_mesh(tmp_path):
    return ConsoleMesh(tmp_path)
