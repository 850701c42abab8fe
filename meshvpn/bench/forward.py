"""TCP throughput through a minimal TUN <-> UDP forwarder pair, with and without offloads.

Two network namespaces joined by a veth pair (MTU 1500, 192.0.2.1 and .2), each with a TUN
(MTU 1420, overlay 10.77.0.1/24 and .2/24) and one forwarder process. iperf3 runs TCP for a
fixed time through the tunnel in each mode and once over the bare veth as the ceiling:

    sudo .venv/bin/python -m meshvpn.bench.forward [--seconds 10] [--modes plain:none,offload:cffi]

A mode is ``<io>:<crypto>``: io ``plain`` (one packet per syscall) or ``offload`` (virtio-net
TSO reads, GRO-style TUN writes, UDP_SEGMENT sends, UDP_GRO receives); crypto ``none``, or the
daemon's :class:`meshvpn.session.Session` on its ``bindings`` (``nacl.bindings``, bytes in and
out) or ``cffi`` back end (libsodium through ``nacl._sodium.lib`` on preallocated buffers,
sealing straight from the TUN buffer), or ``openssl`` (the same AEAD from the ``cryptography``
package, ``encrypt_into``/``decrypt_into``, for comparison).

The forwarder loop is the data path's shape: batch read -> segment -> seal each -> one GSO
send; GRO receive -> open each -> coalesce -> one TUN write per super-packet. Messages use the
DATA layout of meshvpn.wire (16-byte header as associated data, nonce = 4 zero bytes + counter).
No handshake: keys are fixed per direction (the session modes keep a replay window).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from meshvpn import wire
from meshvpn.lab import Lab, Namespace
from meshvpn.node.datapath.tun import TunDevice
from meshvpn.udpbatch import MAX_GSO_BYTES, MAX_SEGMENTS, BatchUdpSocket
from meshvpn.noise import SessionKeys
from meshvpn.session import OVERHEAD, Session

UNDERLAY = ("192.0.2.1", "192.0.2.2")
OVERLAY = ("10.77.0.1", "10.77.0.2")
PORT = 51820
IPERF_PORT = 5201
TUN_MTU = 1420
TUN_NAME = "mvbtun0"
VETH_NAME = "mvbveth"
BURST = 64
"""Reads per readiness event before the loop looks at the other descriptor."""
SOCKET_BUFFER = 4 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
"""Linux socket options (root may exceed net.core.*mem_max); Python's socket lacks the names."""
MODES = ("plain:none", "plain:cffi", "offload:none", "offload:bindings", "offload:cffi")
"""Default modes; `offload:openssl` also works where the `cryptography` package is installed."""
HEADER_LEN = wire.TRANSPORT_HEADER_LEN
DATA = wire.MessageType.DATA
RECEIVER_INDEX = 0x2A


# --- ciphers: seal from the TUN buffer into the send buffer, open in the receive buffer -----


@dataclass
class Cipher:
    """Per-packet seal/open closures bound to fixed buffers (closures: no attribute lookups)."""

    seal: Callable[[int, int, int], int]
    """seal(at, start, end): message for tun.buffer[start:end] at out[at:]; returns the end."""
    open: Callable[[int, int], bool]
    """open(at, end): authenticate and decrypt udp.buffer[at:end] in place."""
    overhead: int
    """Bytes a message adds to its IP packet."""


def null_cipher(src: bytearray, out: bytearray, inbuf: bytearray, send_key: bytes, recv_key: bytes) -> Cipher:
    """Header only, plaintext payload: measures the I/O path alone."""
    pack = wire.TRANSPORT_HEADER.pack_into
    src_view, out_view = memoryview(src), memoryview(out)
    counter = 0

    def seal(at: int, start: int, end: int) -> int:
        nonlocal counter
        counter += 1
        pack(out, at, wire.VERSION, DATA, 0, RECEIVER_INDEX, counter)
        body = at + HEADER_LEN
        out_view[body : body + end - start] = src_view[start:end]
        return body + end - start

    def open_(at: int, end: int) -> bool:
        return inbuf[at + 1] == DATA

    return Cipher(seal, open_, HEADER_LEN)


def session_cipher(backend: str) -> Callable[..., Cipher]:
    """The daemon's own AEAD: :class:`meshvpn.session.Session` on ``backend`` (``cffi`` or ``bindings``).

    ``seal_into`` writes header and ciphertext from the TUN buffer into the send buffer and
    ``open_into`` opens in the receive buffer, replay window included, as the daemon does.
    """

    def make(src: bytearray, out: bytearray, inbuf: bytearray, send_key: bytes, recv_key: bytes) -> Cipher:
        keys = SessionKeys(send_key, recv_key, RECEIVER_INDEX, RECEIVER_INDEX, bytes(32), True)
        session = Session(keys, 0.0, backend)
        seal_into, open_into = session.seal_into, session.open_into

        def seal(at: int, start: int, end: int) -> int:
            return seal_into(out, at, src, start, end)

        def open_(at: int, end: int) -> bool:
            return open_into(inbuf, at, end) >= 0

        return Cipher(seal, open_, OVERHEAD)

    return make


def openssl_cipher(src: bytearray, out: bytearray, inbuf: bytearray, send_key: bytes, recv_key: bytes) -> Cipher:
    """ChaCha20-Poly1305 from OpenSSL (``cryptography``): ``*_into`` on views, opened in place.

    Same AEAD and bytes as libsodium, but OpenSSL's vectorised code is about twice as fast per
    1400-byte packet here (measured in docs/dataplane.md).
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    encrypt = ChaCha20Poly1305(send_key).encrypt_into
    decrypt = ChaCha20Poly1305(recv_key).decrypt_into
    pack = wire.TRANSPORT_HEADER.pack_into
    src_view, out_view, in_view = memoryview(src), memoryview(out), memoryview(inbuf)
    seal_nonce, open_nonce = bytearray(12), bytearray(12)
    tag_len = wire.TAG_LEN
    counter = 0

    def seal(at: int, start: int, end: int) -> int:
        nonlocal counter
        counter += 1
        pack(out, at, wire.VERSION, DATA, 0, RECEIVER_INDEX, counter)
        seal_nonce[4:] = out_view[at + 8 : at + HEADER_LEN]
        body = at + HEADER_LEN
        done = body + end - start + tag_len
        encrypt(seal_nonce, src_view[start:end], out_view[at:body], out_view[body:done])
        return done

    def open_(at: int, end: int) -> bool:
        if inbuf[at + 1] != DATA:
            return False
        open_nonce[4:] = in_view[at + 8 : at + HEADER_LEN]
        body = at + HEADER_LEN
        try:
            decrypt(open_nonce, in_view[body:end], in_view[at:body], in_view[body : end - tag_len])
        except InvalidTag:
            return False
        return True

    return Cipher(seal, open_, HEADER_LEN + tag_len)


CIPHERS = {"none": null_cipher, "bindings": session_cipher("bindings"), "cffi": session_cipher("cffi"),
           "openssl": openssl_cipher}


# --- the forwarder process ----------------------------------------------------------------


def open_side(args: argparse.Namespace, out: bytearray) -> tuple[TunDevice, BatchUdpSocket, Cipher]:
    """One side's TUN (up, addressed), its bound non-blocking UDP socket and its cipher."""
    offload = args.io == "offload"
    tun = TunDevice.open(TUN_NAME, TUN_MTU, offload=offload)
    tun.set_address(args.address)
    tun.up()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.bind((args.bind, PORT))
    sock.setblocking(False)
    udp = BatchUdpSocket(sock, offload=offload)
    cipher = CIPHERS[args.crypto](tun.buffer, out, udp.buffer, bytes.fromhex(args.send_key), bytes.fromhex(args.recv_key))
    if tun.offload:
        per_send = min(MAX_SEGMENTS, MAX_GSO_BYTES // (TUN_MTU + cipher.overhead))
        tun.set_gso_max_size(per_send * (TUN_MTU - 40))
    return tun, udp, cipher


def report_on_sigterm(stats: dict, tun: TunDevice, udp: BatchUdpSocket) -> None:
    """On SIGTERM print the counters and CPU seconds since now as one JSON line, and exit."""
    started = os.times()

    def report(signum: int, frame: object) -> None:
        times = os.times()
        stats.update(cpu_seconds=round(times.user + times.system - started.user - started.system, 3),
                     cpu_user_seconds=round(times.user - started.user, 3),
                     tun_offloads=tun.offloads, udp_gso=udp.gso, udp_gro=udp.gro,
                     tun_writes=tun.writes, packets_written=tun.packets_written,
                     tun_read_errors=tun.read_errors, tun_write_errors=tun.write_errors,
                     udp_send_errors=udp.send_errors)
        print(json.dumps(stats), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)


def forward(args: argparse.Namespace) -> None:
    """Run one side's forwarder until SIGTERM, then print its counters as JSON."""
    out = bytearray(70000)
    out_view = memoryview(out)
    tun, udp, cipher = open_side(args, out)
    peer = (args.peer, PORT)
    stats = {"tun_reads": 0, "datagrams_sent": 0, "udp_receives": 0, "datagrams_received": 0, "auth_failures": 0}

    def tun_to_udp() -> None:
        seal, overhead = cipher.seal, cipher.overhead
        for _ in range(BURST):
            at = seg_size = 0
            try:
                for start, end in tun.read_segments():
                    seg_size = seg_size or end - start + overhead
                    at = seal(at, start, end)
            except BlockingIOError:
                return
            if at:
                stats["tun_reads"] += 1
                stats["datagrams_sent"] += -(-at // seg_size)
                udp.send_contiguous(peer, out_view[:at], seg_size)

    def udp_to_tun() -> None:
        open_, tag = cipher.open, cipher.overhead - HEADER_LEN
        view = memoryview(udp.buffer)
        for _ in range(BURST):
            try:
                _, nbytes, seg_size = udp.recv_into()
            except BlockingIOError:
                return
            packets = []
            for at in range(0, nbytes, seg_size):
                end = at + seg_size
                if end > nbytes:
                    end = nbytes
                if open_(at, end):
                    packets.append(view[at + HEADER_LEN : end - tag])
            stats["udp_receives"] += 1
            stats["datagrams_received"] += -(-nbytes // seg_size)
            stats["auth_failures"] += -(-nbytes // seg_size) - len(packets)
            tun.write_packets(packets)

    poller = select.epoll()
    poller.register(tun.fileno(), select.EPOLLIN)
    poller.register(udp.sock.fileno(), select.EPOLLIN)
    handlers = {tun.fileno(): tun_to_udp, udp.sock.fileno(): udp_to_tun}
    report_on_sigterm(stats, tun, udp)
    print("ready", flush=True)
    while True:
        for fd, _ in poller.poll():
            handlers[fd]()


# --- the test bed ---------------------------------------------------------------------------


def build_underlay(lab: Lab) -> tuple[Namespace, Namespace]:
    """Two namespaces joined by a veth pair (MTU 1500) with 192.0.2.1/24 and 192.0.2.2/24."""
    a, b = lab.namespace("bench-a"), lab.namespace("bench-b")
    a.ip("link", "add", VETH_NAME, "type", "veth", "peer", "name", VETH_NAME, "netns", b.name)
    for ns, address in zip((a, b), UNDERLAY):
        ns.ip("link", "set", VETH_NAME, "mtu", "1500", "up")
        ns.ip("addr", "add", f"{address}/24", "dev", VETH_NAME)
    return a, b


def wait_line(proc: subprocess.Popen, needle: str, timeout: float) -> None:
    """Wait until ``proc`` prints a line containing ``needle``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if needle in line:
            return
    raise RuntimeError(f"{proc.args!r} did not print {needle!r} within {timeout}s")


def wait_listening(ns: Namespace, port: int, timeout: float) -> None:
    """Wait until a TCP socket listens on ``port`` in ``ns``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {ns.name} after {timeout}s")


@dataclass
class Tunnel:
    """The two running forwarders of one mode."""

    sides: list[tuple[Namespace, subprocess.Popen]]

    @classmethod
    def start(cls, a: Namespace, b: Namespace, mode: str) -> Tunnel:
        """Start both forwarders (``mode`` is ``io:crypto``, or ``io_a/io_b:crypto``)."""
        io, crypto = mode.split(":")
        ios = io.split("/") * (2 if "/" not in io else 1)
        keys = os.urandom(32).hex(), os.urandom(32).hex()
        sides = []
        for i, ns in enumerate((a, b)):
            argv = [sys.executable, "-m", "meshvpn.bench.forward", "forward", "--io", ios[i], "--crypto", crypto,
                    "--address", f"{OVERLAY[i]}/24", "--bind", UNDERLAY[i], "--peer", UNDERLAY[1 - i],
                    "--send-key", keys[i], "--recv-key", keys[1 - i]]
            proc = ns.popen(argv, stdout=subprocess.PIPE, text=True)
            sides.append((ns, proc))
        tunnel = cls(sides)
        for _, proc in sides:
            wait_line(proc, "ready", 10.0)
        return tunnel

    def stop(self) -> list[dict]:
        """Stop both forwarders; their counters."""
        reports = []
        for ns, proc in self.sides:
            proc.send_signal(signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                output = ""
            ns.stop(proc)
            lines = [line for line in output.splitlines() if line.startswith("{")]
            reports.append(json.loads(lines[-1]) if lines else {})
        return reports


def iperf(a: Namespace, b: Namespace, server: str, seconds: int) -> dict:
    """One iperf3 TCP run from ``a`` to ``server`` in ``b``: Mbit/s, retransmits, CPU."""
    proc = b.popen(["iperf3", "-s", "-1", "-B", server], stdout=subprocess.DEVNULL)
    try:
        wait_listening(b, IPERF_PORT, 10.0)
        done = a.run(["iperf3", "-c", server, "-t", str(seconds), "-J"], timeout=seconds + 30)
    finally:
        b.stop(proc)
    end = json.loads(done.stdout)["end"]
    return {
        "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        "retransmits": end["sum_sent"].get("retransmits"),
        "cpu_sender_pct": round(end["cpu_utilization_percent"]["host_total"], 1),
        "cpu_receiver_pct": round(end["cpu_utilization_percent"]["remote_total"], 1),
    }


def per_packet(cpu_seconds: float, packets: int) -> float:
    """Forwarder CPU (user + system) per forwarded packet, in µs: robust to a busy machine."""
    return round(cpu_seconds / packets * 1e6, 2) if packets else 0.0


def run_bench(seconds: int, modes: list[str]) -> list[dict]:
    """Every mode plus the bare veth; one result row each."""
    rows = []
    with Lab() as lab:
        a, b = build_underlay(lab)
        rows.append({"mode": "veth (no tunnel)", **iperf(a, b, UNDERLAY[1], seconds)})
        print(rows[-1], flush=True)
        for mode in modes:
            tunnel = Tunnel.start(a, b, mode)
            try:
                result = iperf(a, b, OVERLAY[1], seconds)
            finally:
                reports = tunnel.stop()
            sender, receiver = reports
            rows.append({
                "mode": mode, **result,
                "segments_per_send": round(sender.get("datagrams_sent", 0) / max(1, sender.get("tun_reads", 0)), 1),
                "datagrams_per_recv": round(receiver.get("datagrams_received", 0) / max(1, receiver.get("udp_receives", 0)), 1),
                "packets_per_tun_write": round(receiver.get("packets_written", 0) / max(1, receiver.get("tun_writes", 0)), 1),
                "us_per_pkt_a": per_packet(sender.get("cpu_seconds", 0), sender.get("datagrams_sent", 0)),
                "us_per_pkt_b": per_packet(receiver.get("cpu_seconds", 0), receiver.get("datagrams_received", 0)),
                "drops": receiver.get("auth_failures", 0) + sender.get("udp_send_errors", 0)
                + receiver.get("tun_write_errors", 0) + sender.get("tun_read_errors", 0),
            })
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    fwd = sub.add_parser("forward", help="run one forwarder (inside a namespace)")
    fwd.add_argument("--io", choices=("plain", "offload"), required=True)
    fwd.add_argument("--crypto", choices=tuple(CIPHERS), required=True)
    for name in ("--address", "--bind", "--peer", "--send-key", "--recv-key"):
        fwd.add_argument(name, required=True)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    if args.command == "forward":
        forward(args)
        return
    rows = run_bench(args.seconds, args.modes.split(","))
    print()
    columns = [("mode", 20), ("mbit_s", 8), ("retransmits", 6), ("segments_per_send", 8), ("datagrams_per_recv", 8),
               ("packets_per_tun_write", 8), ("us_per_pkt_a", 8), ("us_per_pkt_b", 8), ("drops", 6)]
    titles = {"mode": "mode", "mbit_s": "Mbit/s", "retransmits": "retr", "segments_per_send": "seg/send",
              "datagrams_per_recv": "dg/recv", "packets_per_tun_write": "pkt/wr", "us_per_pkt_a": "us/pkt A",
              "us_per_pkt_b": "us/pkt B", "drops": "drops"}
    print(" ".join(f"{titles[key]:>{width}}" for key, width in columns))
    for row in rows:
        print(" ".join(f"{row.get(key, '-')!s:>{width}}" for key, width in columns))


if __name__ == "__main__":
    main()
