"""A TCP transfer through the minimal forwarder pair arrives byte-exact, with offloads in use.

Mixed pairs matter: an offloading sender leaves TCP checksums partial, which a plain receiver
must complete (and an offloading receiver must write with NEEDS_CSUM); a plain sender's full
checksums must pass through an offloading receiver untouched.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from meshvpn.lab import Lab

BENCH = Path(__file__).resolve().parents[2] / "bench" / "forward_bench.py"
TRANSFER_BYTES = 24 << 20
PORT = 9000

RECEIVER = r"""
import hashlib, socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
server.settimeout(20)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(20)
digest, size = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk)
    size += len(chunk)
print(size, digest.hexdigest(), flush=True)
"""

SENDER = r"""
import hashlib, random, socket, sys
data = random.Random(7).randbytes(int(sys.argv[3]))
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
conn.sendall(data)
conn.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


def load_bench():
    spec = importlib.util.spec_from_file_location("forward_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.lab
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["offload:cffi", "offload/plain:cffi", "plain/offload:cffi"])
def test_tcp_transfer_through_forwarders_is_exact(lab: Lab, mode: str) -> None:
    bench = load_bench()
    a, b = bench.build_underlay(lab)
    tunnel = bench.Tunnel.start(a, b, mode)
    try:
        server = b.popen([sys.executable, "-c", RECEIVER, bench.OVERLAY[1], str(PORT)], stdout=subprocess.PIPE, text=True)
        bench.wait_line(server, "ready", 10.0)
        sent = a.run([sys.executable, "-c", SENDER, bench.OVERLAY[1], str(PORT), str(TRANSFER_BYTES)], timeout=40)
        received, _ = server.communicate(timeout=20)
    finally:
        sender, receiver = tunnel.stop()
    assert received.split() == sent.stdout.split()
    assert received.split()[0] == str(TRANSFER_BYTES)
    sender_io, receiver_io = (mode.split(":")[0].split("/") * 2)[:2]
    assert sender["tun_read_errors"] == receiver["tun_write_errors"] == receiver["auth_failures"] == 0
    if sender_io == "offload":
        assert sender["tun_offloads"] and sender["datagrams_sent"] > 4 * sender["tun_reads"]
    if sender_io == receiver_io == "offload":
        assert receiver["udp_gro"] and receiver["packets_written"] > 4 * receiver["tun_writes"]
    else:
        assert receiver["packets_written"] == receiver["tun_writes"], "only partial-checksum segments merge"
