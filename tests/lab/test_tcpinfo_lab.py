"""The kernel says when a connection waits for a backed-off retransmission (`meshvpn.node.tcpinfo`):
what the coord link asks once the network is back (`meshvpn.node.tcpresume`). In a namespace of
its own, a connection over its loopback, and its packets dropped there for a while."""

from __future__ import annotations

import sys

import pytest

from meshvpn.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

SCRIPT = r"""
import socket, subprocess, sys, time
from meshvpn.node.tcpinfo import retransmitting

hook = sys.argv[1]  # output: the kernel cannot send the segments; input: they go and are lost
RULES = f"table ip drop_lo {{ chain c {{ type filter hook {hook} priority 0; policy accept; tcp dport 7001 drop; }}; }}"
server = socket.socket()
server.bind(("127.0.0.1", 7001))
server.listen()
client = socket.create_connection(("127.0.0.1", 7001))
accepted, _ = server.accept()
client.sendall(b"before")
assert accepted.recv(6) == b"before"
idle = retransmitting(client)
subprocess.run(["nft", "-f", "-"], input=RULES, text=True, check=True)
client.sendall(b"during")
time.sleep(1.0)  # the first timeout fires after 0.2 s (RTO_MIN), the next ones doubling
during = retransmitting(client)
subprocess.run(["nft", "delete", "table", "ip", "drop_lo"], check=True)
accepted.settimeout(5.0)
assert accepted.recv(6) == b"during"
deadline = time.monotonic() + 5.0
while retransmitting(client) and time.monotonic() < deadline:
    time.sleep(0.05)
print(idle, during, retransmitting(client))
"""


@pytest.mark.parametrize("hook", ["output", "input"])
def test_a_connection_whose_packets_are_dropped_is_seen_retransmitting_and_not_once_acknowledged(
        lab: Lab, hook: str) -> None:
    ns = lab.namespace("tcpinfo")
    ns.ip("link", "set", "lo", "up")
    result = ns.run([sys.executable, "-c", SCRIPT, hook], timeout=30.0)
    assert result.stdout.split() == ["False", "True", "False"], result.stdout + result.stderr
