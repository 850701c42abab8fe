"""Bounded floods for lab tests of the relay and the coord: what an attacker on the internet sends.

Run inside a lab namespace, each mode stops at `--seconds` or after `--count` packets or
connections, whichever comes first, and prints one JSON line of what it did:

* `junk HOST:PORT`: random UDP datagrams of 20-300 bytes.
* `hellos HOST:PORT --spoof CIDR`: RELAY_HELLOs with random keys and forged tokens, from source
  addresses drawn from CIDR (raw IPv4 packets with `IP_HDRINCL`; they are never answered).
  With `--coord-key FILE --relay-key KEY` the tokens are valid ones, each for a fresh key, as
  many nodes (or a member with many keys) would hold: each such hello costs the relay a
  Diffie-Hellman until it is under load and asks for cookies.
* `initiations HOST:PORT --server-key KEY --spoof CIDR`: handshake initiations to the node whose
  public key is KEY, with a valid mac1 (the key is no secret) and garbage inside, from spoofed
  sources: each would cost the node a Diffie-Hellman until it is under load and asks for cookies.
* `half-open HOST:PORT`: TCP connections that never send a byte.
* `idle HOST:PORT --server-key KEY [--ping S]`: TCP connections that complete the channel
  handshake with a throwaway key each, then send nothing (or a `ping` every S seconds, as a
  client that never registers would). Reports when the server closed them.

Packets are paced to `--rate` a second. Only meant for namespaces of `meshvpn.lab`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Callable

from meshvpn import keys, wire
from meshvpn.channel import ClientChannel
from meshvpn.control import messages as m
from meshvpn.relaytoken import TokenMinter
from meshvpn.wire import MessageType


EARLY = 5.0
"""Seconds within which a closed connection counts as refused at once (every deadline is 10 s)."""


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _paced(rate: float, seconds: float, count: int, burst: int = 32):
    """Yield packet numbers at `rate` a second until `seconds` or `count` is reached, in bursts
    (one clock read and sleep per `burst`, so pacing costs the sender little)."""
    start = time.monotonic()
    for n in range(count):
        if n % burst == 0:
            now = time.monotonic()
            if now - start >= seconds:
                return
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
        yield n


def junk(target: tuple[str, int], rate: float, seconds: float, count: int) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = random.Random(1)
    payloads = [rng.randbytes(rng.randint(20, 300)) for _ in range(256)]  # built first: the sender stays cheap
    sent = 0
    for n in _paced(rate, seconds, count):
        sock.sendto(payloads[n % 256], target)
        sent += 1
    return {"mode": "junk", "sent": sent}


def _forged_hello(rng: random.Random) -> bytes:
    private = rng.randbytes(32)
    box = wire.box_key(private, keys.public_key(rng.randbytes(32)))
    hello = wire.RelayHello(int(time.time() * 1000), rng.randbytes(80))
    return wire.seal(MessageType.RELAY_HELLO, keys.public_key(private), rng.randbytes(24), box, hello)


def costly_hello(minter: TokenMinter, relay_public: bytes, random_bytes: Callable[[int], bytes], now: float) -> bytes:
    """A hello from a fresh key with a valid token and a box nobody can open: the relay pays one
    Diffie-Hellman to find that out, the sender none (the box key is random)."""
    node = random_bytes(32)
    token, _ = minter.mint(relay_public, node, now)
    hello = wire.RelayHello(int(now * 1000), token)
    return wire.seal(MessageType.RELAY_HELLO, node, random_bytes(24), random_bytes(32), hello)


def forged_initiation(responder_public: bytes, random_bytes: Callable[[int], bytes]) -> bytes:
    """An initiation with a valid mac1 and garbage inside: it passes a node's cheap check and would
    cost it a Diffie-Hellman to refuse, the sender nothing."""
    return wire.HandshakeInitiation(int.from_bytes(random_bytes(4), "little"), random_bytes(32), random_bytes(48),
                                    random_bytes(28)).encode(wire.mac1_key(responder_public))


def _udp_ipv4(src: str, dst: tuple[str, int], sport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dst[1], 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst[0]))
    return header + udp


def hellos(target: tuple[str, int], spoof: str, rate: float, seconds: float, count: int,
           minter: TokenMinter | None = None, relay_public: bytes = b"") -> dict:
    """Hellos from spoofed sources, built first (the sender shares the lab's cores with the relay):
    1,024 forged ones sent over and over, or with `minter` one valid one per packet."""
    rng = random.Random(2)
    if minter is None:
        forged = [_forged_hello(rng) for _ in range(64)]
        payloads = [forged[n % 64] for n in range(1024)]
    else:
        payloads = [costly_hello(minter, relay_public, rng.randbytes, time.time()) for _ in range(min(count, 100_000))]
    # Valid ones keep the relay's Diffie-Hellman allowance empty only if they come as often as it
    # refills (every millisecond), not in bursts with gaps between.
    sent = _spoofed(target, spoof, payloads, rate, seconds, count, burst=32 if minter is None else 1)
    return {"mode": "hellos", "sent": sent}


def initiations(target: tuple[str, int], spoof: str, server_key: bytes, rate: float, seconds: float,
                count: int) -> dict:
    """Forged initiations for the node `server_key` from spoofed sources, 1,024 sent over and over."""
    rng = random.Random(3)
    payloads = [forged_initiation(server_key, rng.randbytes) for _ in range(1024)]
    return {"mode": "initiations", "sent": _spoofed(target, spoof, payloads, rate, seconds, count, burst=32)}


def _spoofed(target: tuple[str, int], spoof: str, payloads: list[bytes], rate: float, seconds: float,
             count: int, burst: int) -> int:
    """Send `payloads` in turn from source addresses drawn from `spoof` (raw IPv4); how many went."""
    sources = list(ipaddress.ip_network(spoof).hosts())
    packets = [_udp_ipv4(str(sources[n % len(sources)]), target, 1024 + n % 60000, payload)
               for n, payload in enumerate(payloads)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent = 0
    for n in _paced(rate, seconds, count, burst=burst):
        sock.sendto(packets[n % len(packets)], (target[0], 0))
        sent += 1
    return sent


def half_open(target: tuple[str, int], rate: float, seconds: float, count: int) -> dict:
    return _hold(target, rate, seconds, count, None, 0.0)


def idle(target: tuple[str, int], server_key: bytes, ping: float, rate: float, seconds: float, count: int) -> dict:
    return _hold(target, rate, seconds, count, server_key, ping)


def _hold(target, rate, seconds, count, server_key: bytes | None, ping: float) -> dict:
    """Open connections (with a channel handshake when `server_key` is given) and hold them."""
    start = time.monotonic()
    sel = selectors.DefaultSelector()
    opened = refused = 0
    closed_after: list[float] = []
    channels: dict[socket.socket, ClientChannel | None] = {}
    for _ in _paced(rate, seconds, count, burst=1):
        sock = socket.socket()
        sock.settimeout(2.0)
        try:
            sock.connect(target)
        except OSError:
            refused += 1
            sock.close()
            continue
        sock.setblocking(False)
        channel = None
        if server_key is not None:
            channel = ClientChannel(keys.generate_private_key(), server_key, os.urandom(32), time.time())
            sock.send(channel.data_to_send())
        channels[sock] = channel
        sel.register(sock, selectors.EVENT_READ, time.monotonic())
        opened += 1
        _serve(sel, channels, closed_after, 0.0)
    next_ping = time.monotonic() + ping
    while channels and time.monotonic() - start < seconds:
        _serve(sel, channels, closed_after, 0.2)
        if ping and time.monotonic() >= next_ping:
            next_ping += ping
            for sock, channel in channels.items():
                if channel is not None and channel.established:
                    channel.send(m.encode(m.Ping()))
                    _send(sock, channel.data_to_send())
    for sock in list(channels):
        sock.close()
    return {"mode": "idle" if server_key else "half-open", "opened": opened, "refused": refused,
            "closed_by_server": len(closed_after), "closed_early": sum(t < EARLY for t in closed_after),
            "still_open": len(channels),
            "closed_after_max": max(closed_after, default=None)}


def _serve(sel, channels, closed_after, timeout: float) -> None:
    for key, _ in sel.select(timeout):
        sock = key.fileobj
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        channel = channels.get(sock)
        if data and channel is not None:
            try:
                channel.receive_data(data)
                _send(sock, channel.data_to_send())
            except Exception:
                data = b""
        if not data:
            sel.unregister(sock)
            closed_after.append(round(time.monotonic() - key.data, 2))
            del channels[sock]
            sock.close()


def target_drops(ns, port: int) -> int:
    """Datagrams the kernel dropped for the UDP sockets on `port` in namespace `ns` (a `Namespace`),
    mostly for a full receive buffer: what a target never read because it, or the machine, could
    not keep up. A flood's packets minus these are the ones the target handled."""
    table = ns.run(["cat", "/proc/net/udp"]).stdout.splitlines()[1:]
    return sum(int(fields[-1]) for fields in map(str.split, table) if int(fields[1].rsplit(":", 1)[1], 16) == port)


def _send(sock: socket.socket, data: bytes) -> None:
    if data:
        try:
            sock.send(data)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("junk", "hellos", "initiations", "half-open", "idle"))
    parser.add_argument("target", type=_endpoint, help="HOST:PORT")
    parser.add_argument("--rate", type=float, default=1000.0, help="packets or connections a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="stop after this long")
    parser.add_argument("--count", type=int, default=100_000, help="stop after this many")
    parser.add_argument("--spoof", default="192.0.2.0/24", help="hellos, initiations: source addresses")
    parser.add_argument("--server-key", type=keys.decode_key,
                        help="idle: the server's public key; initiations: the node's")
    parser.add_argument("--coord-key", type=Path, help="hellos: the coord's private key file (valid tokens)")
    parser.add_argument("--relay-key", type=keys.decode_key, help="hellos: the relay's public key (valid tokens)")
    parser.add_argument("--ping", type=float, default=0.0, help="idle: seconds between pings (0: none)")
    args = parser.parse_args(argv)
    bounds = (args.rate, args.seconds, args.count)
    if args.mode == "junk":
        result = junk(args.target, *bounds)
    elif args.mode == "hellos":
        minter = None if args.coord_key is None else TokenMinter(keys.read_private_key(args.coord_key), os.urandom)
        result = hellos(args.target, args.spoof, *bounds, minter, args.relay_key or b"")
    elif args.mode == "initiations":
        result = initiations(args.target, args.spoof, args.server_key, *bounds)
    elif args.mode == "half-open":
        result = half_open(args.target, *bounds)
    else:
        result = idle(args.target, args.server_key, args.ping, *bounds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
