"""The peer VPNs the bench compares meshvpn with: quicktun, wireguard-go, tinc 1.0 and Nebula.

Each start function brings its tunnel up between `a` and `b` of the bench's link net
(`meshvpn.bench.peers`) with its program's defaults, on its own overlay subnet of 10.200.0.0/16,
and returns once `a` gets a reply from `b` through it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from nacl.encoding import Base64Encoder, HexEncoder
from nacl.public import PrivateKey

from meshvpn.bench.tunnels import Tunnel, address_up, link_mtu, overlay, reachable, spawn

if TYPE_CHECKING:
    from meshvpn.bench.peers import BenchNet


QUICKTUN_PORT = 2998
QUICKTUN_MTU = 1440
"""quicktun sets no MTU, and a 1500-byte TUN would fragment every full packet on the link:
nacltai adds 32 bytes (measured) to the 28 of UDP/IPv4, so 1500 - 60."""


def start_quicktun(net: BenchNet, workdir: Path) -> Tunnel:
    """quicktun point to point, NaCl with TAI64 replay protection (`nacltai`).

    Debian's quicktun reads its settings the way ifupdown passes them: `IFACE` and `IF_QT_*`.
    """
    secrets = [PrivateKey.generate(), PrivateKey.generate()]
    logs = []
    for index, (ns, local, remote) in enumerate(net.sides()):
        log = workdir / f"quicktun-{ns.short}.log"
        logs.append(log)
        settings = {
            "TUN_MODE": "1", "PROTOCOL": "nacltai",
            "LOCAL_ADDRESS": local, "LOCAL_PORT": str(QUICKTUN_PORT),
            "REMOTE_ADDRESS": remote, "REMOTE_PORT": str(QUICKTUN_PORT),
            "PRIVATE_KEY": secrets[index].encode(HexEncoder).decode(),
            "PUBLIC_KEY": secrets[1 - index].public_key.encode(HexEncoder).decode(),
        }
        spawn(ns, ["quicktun"], log, env={"IFACE": "qt0", **{f"IF_QT_{key}": value for key, value in settings.items()}})
        address_up(ns, "qt0", f"{overlay('10.201.0', index)}/24", log, QUICKTUN_MTU)
    target = overlay("10.201.0", 1)
    reachable(net, target, tuple(logs))
    return Tunnel(target=target, mtu=link_mtu(net.a, "qt0"))


WIREGUARD_PORT = 51820


def start_wireguard_go(net: BenchNet, workdir: Path) -> Tunnel:
    """Userspace WireGuard: `wireguard-go -f DEV`, then `wg set` over its UAPI socket.

    The UAPI socket lives in /var/run/wireguard/DEV.sock, shared by all namespaces, so device
    names embed the PID and the side.
    """
    secrets = [PrivateKey.generate(), PrivateKey.generate()]
    devs = [f"wg{os.getpid()}{ns.short}" for ns, _, _ in net.sides()]
    logs = []
    for index, (ns, local, remote) in enumerate(net.sides()):
        log = workdir / f"wireguard-{ns.short}.log"
        logs.append(log)
        key_file = workdir / f"wireguard-{ns.short}.key"
        key_file.write_bytes(secrets[index].encode(Base64Encoder))
        key_file.chmod(0o600)
        spawn(ns, ["wireguard-go", "-f", devs[index]], log, env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
        address_up(ns, devs[index], f"{overlay('10.202.0', index)}/24", log)
        ns.run(["wg", "set", devs[index], "private-key", str(key_file), "listen-port", str(WIREGUARD_PORT),
                "peer", secrets[1 - index].public_key.encode(Base64Encoder).decode(),
                "endpoint", f"{remote}:{WIREGUARD_PORT}", "allowed-ips", f"{overlay('10.202.0', 1 - index)}/32"])
    target = overlay("10.202.0", 1)
    reachable(net, target, tuple(logs))
    return Tunnel(target=target, mtu=link_mtu(net.a, devs[0]))


TINC_PORT = 655


def start_tinc(net: BenchNet, workdir: Path) -> Tunnel:
    """tinc 1.0 in router mode with its default cipher; `b` connects to `a`."""
    dirs = []
    for index, (ns, local, _) in enumerate(net.sides()):
        conf = workdir / f"tinc-{ns.short}"
        (conf / "hosts").mkdir(parents=True)
        connect = "" if index == 0 else "ConnectTo = a\n"
        (conf / "tinc.conf").write_text(f"Name = {ns.short}\nMode = router\nInterface = tinc0\n"
                                        f"AddressFamily = ipv4\nPort = {TINC_PORT}\n{connect}")
        (conf / "hosts" / ns.short).write_text(
            f"Address = {local}\nPort = {TINC_PORT}\nSubnet = {overlay('10.203.0', index)}/32\n")
        up = conf / "tinc-up"
        up.write_text(f"#!/bin/sh\nip addr add {overlay('10.203.0', index)}/24 dev $INTERFACE\n"
                      "ip link set $INTERFACE up\n")
        up.chmod(0o755)
        ns.run(["tincd", "-c", str(conf), "-K2048"], timeout=60, input="")
        dirs.append(conf)
    for here, there in ((dirs[0], dirs[1]), (dirs[1], dirs[0])):
        shutil.copy(here / "hosts" / here.name.removeprefix("tinc-"), there / "hosts")
    logs = []
    for conf, (ns, _, _) in zip(dirs, net.sides()):
        log = workdir / f"tinc-{ns.short}.log"
        logs.append(log)
        spawn(ns, ["tincd", "-c", str(conf), "-D", f"--pidfile={conf / 'pid'}", f"--logfile={log}"], log)
    target = overlay("10.203.0", 1)
    reachable(net, target, tuple(logs))
    return Tunnel(target=target, mtu=link_mtu(net.a, "tinc0"))


NEBULA_PORT = 4242


def start_nebula(net: BenchNet, workdir: Path) -> Tunnel:
    """Nebula with its own CA (`nebula-cert`); `a` is the lighthouse, `b` finds `a` through it."""
    pki = workdir / "nebula"
    pki.mkdir()
    net.a.run(["nebula-cert", "ca", "-name", "mvbench", "-out-crt", str(pki / "ca.crt"), "-out-key", str(pki / "ca.key")])
    lighthouse = overlay("10.204.0", 0)
    logs = []
    for index, (ns, local, _) in enumerate(net.sides()):
        crt, key = pki / f"{ns.short}.crt", pki / f"{ns.short}.key"
        net.a.run(["nebula-cert", "sign", "-name", ns.short, "-ip", f"{overlay('10.204.0', index)}/24",
                   "-ca-crt", str(pki / "ca.crt"), "-ca-key", str(pki / "ca.key"),
                   "-out-crt", str(crt), "-out-key", str(key)])
        config = {
            "pki": {"ca": str(pki / "ca.crt"), "cert": str(crt), "key": str(key)},
            "static_host_map": {lighthouse: [f"{net.a_addr}:{NEBULA_PORT}"]},
            "lighthouse": {"am_lighthouse": index == 0, "interval": 60, "hosts": [] if index == 0 else [lighthouse]},
            "listen": {"host": local, "port": NEBULA_PORT},
            "punchy": {"punch": True},
            "tun": {"dev": "nebula1"},
            "logging": {"level": "info"},
            "firewall": {rule: [{"port": "any", "proto": "any", "host": "any"}] for rule in ("outbound", "inbound")},
        }
        (pki / f"{ns.short}.yaml").write_text(yaml.safe_dump(config))
        log = workdir / f"nebula-{ns.short}.log"
        logs.append(log)
        spawn(ns, ["nebula", "-config", str(pki / f"{ns.short}.yaml")], log)
    target = overlay("10.204.0", 1)
    reachable(net, target, tuple(logs))
    return Tunnel(target=target, mtu=link_mtu(net.a, "nebula1"))
