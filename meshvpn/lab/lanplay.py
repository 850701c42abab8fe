"""LAN-game traffic for the lab and the demo: a game server, a server browser, a broadcast storm,
multicast listeners and mDNS, each run inside a namespace as ``python -m meshvpn.lab.lanplay``.

* ``serve NAME [--port 27015]``: a game server: a UDP socket on ``0.0.0.0:PORT`` with
  ``SO_BROADCAST`` (as games bind it) that answers every datagram with ``NAME`` to its sender.
* ``ask TARGET --bind ADDRESS [--port 27015] [--wait S]``: a server browser: a query from
  ``ADDRESS`` (the node's overlay address: what carries limited broadcast into the mesh, see
  docs/lan-party.md) to ``TARGET`` (a broadcast address or one server), sent three times over
  ``S`` seconds as a server browser does; prints ``NAME ADDRESS`` once for each server that answers.
* ``storm TARGET --bind ADDRESS --rate N --seconds S [--on A --off B]``: ``N`` datagrams a second
  to ``TARGET``; with ``--on``, in bursts of ``A`` seconds with ``B`` quiet ones between them
  (the first burst after a quiet spell), and ``burst START END`` printed for each burst as it
  ends (``time.monotonic()`` of its first and last datagram), so a flow measured beside it can
  be split into stormy and calm stretches (``meshvpn.lab.rates.alternated``).
* ``listen GROUP PORT --bind ADDRESS --seconds S``: join ``GROUP`` on the interface of
  ``ADDRESS``, print ``ready``, then ``SOURCE PAYLOAD`` for each datagram.
* ``mdns-publish NAME ADDRESS`` / ``mdns-find ADDRESS [--wait S]``: python-zeroconf on the
  interface of ``ADDRESS``: publish ``NAME._lanparty._udp.local.``, or browse for that type and
  print ``NAME ADDRESS:PORT`` for each service found.

Each but ``ask`` and ``mdns-find`` (run to their end) prints ``ready`` once its sockets are set
up, so a caller knows when to go on (``start``).
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import time

from meshvpn.lab.netns import Namespace, python_command

GAME_PORT = 27015
QUERY = b"server?"
QUERIES = 3
"""Queries a browser sends, evenly over its wait."""
MDNS_TYPE = "_lanparty._udp.local."


def serve(name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        _, src = sock.recvfrom(2048)
        sock.sendto(name.encode(), src)


def ask(target: str, bind: str, port: int, wait: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind((bind, 0))
    seen = set()
    for _ in range(QUERIES):  # as a server browser does: a lost query or answer is asked again
        sock.sendto(QUERY, (target, port))
        for data, src in _received(sock, wait / QUERIES):
            answer = (data.decode(errors="replace"), src[0])
            if answer not in seen:
                seen.add(answer)
                print(*answer, flush=True)


def _received(sock: socket.socket, seconds: float):
    """Each datagram `sock` receives within `seconds`, with its source."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            yield sock.recvfrom(2048)
        except socket.timeout:
            return


def storm(target: str, bind: str, port: int, rate: float, seconds: float, on: float = 0.0, off: float = 0.0) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind((bind, 0))
    print("ready", flush=True)
    if on <= 0:
        print("sent", _burst(sock, (target, port), rate, seconds)[0], flush=True)
        return
    end, sent = time.monotonic() + seconds, 0
    while (left := end - time.monotonic()) > off:
        time.sleep(off)
        count, first, last = _burst(sock, (target, port), rate, min(on, left - off))
        sent += count
        print("burst", first, last, flush=True)
    print("sent", sent, flush=True)


def _burst(sock: socket.socket, target: tuple[str, int], rate: float, seconds: float) -> tuple[int, float, float]:
    """`rate` datagrams a second for `seconds` (a late wake-up sends what fell due meanwhile);
    how many, and the times of the first and the last."""
    payload, start, sent = b"storm" * 40, time.monotonic(), 0
    last = start
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        for _ in range(due - sent):
            try:
                sock.sendto(payload, target)
            except OSError:
                pass
        sent = due
        last = time.monotonic()
        time.sleep(0.002)
    return sent, start, last


def listen(group: str, port: int, bind: str, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(bind)))
    print("ready", flush=True)
    for data, src in _received(sock, seconds):
        print(src[0], data.decode(errors="replace"), flush=True)


def mdns_publish(name: str, address: str) -> None:
    from zeroconf import ServiceInfo, Zeroconf

    zc = Zeroconf(interfaces=[address])
    zc.register_service(ServiceInfo(MDNS_TYPE, f"{name}.{MDNS_TYPE}", addresses=[socket.inet_aton(address)],
                                    port=GAME_PORT, server=f"{name}.local."))
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def mdns_find(address: str, wait: float) -> None:
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    zc = Zeroconf(interfaces=[address])
    found: list[str] = []

    def changed(zeroconf, service_type, name, state_change) -> None:
        if state_change is ServiceStateChange.Added:
            found.append(name)

    ServiceBrowser(zc, MDNS_TYPE, handlers=[changed])
    print("ready", flush=True)
    deadline = time.monotonic() + wait
    shown: set[str] = set()
    while time.monotonic() < deadline:
        for name in [n for n in found if n not in shown]:
            info = zc.get_service_info(MDNS_TYPE, name, timeout=2000)
            if info is not None and info.parsed_addresses():
                shown.add(name)
                print(name.removesuffix("." + MDNS_TYPE), f"{info.parsed_addresses()[0]}:{info.port}", flush=True)
        time.sleep(0.1)
    zc.close()


def start(ns: Namespace, *args: str) -> subprocess.Popen:
    """Start ``lanplay ARGS`` in ``ns`` and wait for its ``ready``."""
    proc = ns.popen(python_command("meshvpn.lab.lanplay", *args), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        ns.stop(proc)
        raise RuntimeError(f"lanplay {args[0]} did not start: {line!r}")
    return proc


def run(ns: Namespace, *args: str, timeout: float = 30.0) -> list[str]:
    """Run ``lanplay ARGS`` in ``ns`` to its end; the lines it printed after ``ready``."""
    done = ns.run(python_command("meshvpn.lab.lanplay", *args), timeout=timeout)
    lines = done.stdout.splitlines()
    return lines[1:] if lines[:1] == ["ready"] else lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshvpn.lab.lanplay", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("serve").add_argument("name")
    for verb in ("ask", "storm"):
        sub = verbs.add_parser(verb)
        sub.add_argument("target")
        sub.add_argument("--bind", required=True)
        sub.add_argument("--wait", type=float, default=2.0)
        sub.add_argument("--rate", type=float, default=100.0)
        sub.add_argument("--seconds", type=float, default=5.0)
        sub.add_argument("--on", type=float, default=0.0)
        sub.add_argument("--off", type=float, default=0.0)
    sub = verbs.add_parser("listen")
    sub.add_argument("group")
    sub.add_argument("listen_port", type=int)
    sub.add_argument("--bind", required=True)
    sub.add_argument("--seconds", type=float, default=5.0)
    sub = verbs.add_parser("mdns-publish")
    sub.add_argument("name")
    sub.add_argument("address")
    sub = verbs.add_parser("mdns-find")
    sub.add_argument("address")
    sub.add_argument("--wait", type=float, default=10.0)
    for sub in verbs.choices.values():
        sub.add_argument("--port", type=int, default=GAME_PORT)
    args = parser.parse_args(argv)
    if args.verb == "serve":
        serve(args.name, args.port)
    elif args.verb == "ask":
        ask(args.target, args.bind, args.port, args.wait)
    elif args.verb == "storm":
        storm(args.target, args.bind, args.port, args.rate, args.seconds, args.on, args.off)
    elif args.verb == "listen":
        listen(args.group, args.listen_port, args.bind, args.seconds)
    elif args.verb == "mdns-publish":
        mdns_publish(args.name, args.address)
    else:
        mdns_find(args.address, args.wait)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
