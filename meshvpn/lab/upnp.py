"""A lab router that hands out port mappings: Debian's miniupnpd in front of a random-port NAT.

The router is `NatKind.RANDOM_PORTS` (a new random port per destination, so two such sites
relay) plus miniupnpd 2.3.1 on its LAN, serving UPnP IGD, NAT-PMP and PCP with its nftables
back end: a mapping is a DNAT rule in `table inet meshvpn_upnp` and a forward rule that lets
it in; `ct status dnat accept` in the router's own forward chain keeps its firewall for
everything else.

miniupnpd refuses a reserved or private external address ("ext_ip contains reserved /
private address"), and every lab address is a documentation address, which it counts as
reserved. Its `ext_perform_stun` route does not check: it learns the external address from a
STUN server and enables mappings when all four RFC 3489 tests (plain, change port, change
address, both) answer from an unfiltered, unchanged port. So the lab runs coturn as an
RFC 5780 STUN server on two internet addresses (`start_stun_server`), the router has no input
filter (the answers from the changed address and port must reach miniupnpd's sockets; its
own services listen on the LAN only), and its own packets keep their ports (the masquerade
applies to the LAN's packets only). miniupnpd then takes the STUN-reported address as its
external address and checks it no further. Newer miniupnpd releases have an option to allow a
reserved external address; Debian 12's 2.3.1 does not.

`UPNP_ROUTER_TCP_ONLY` is the same router dropping every UDP packet it would forward, mapped or
not: a LAN that gets out over TCP only, where a mapping of the TCP punch port is the way in.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshvpn.lab.nat import TABLE, RouterLinks
from meshvpn.lab.netns import LabError, Namespace

if TYPE_CHECKING:
    from meshvpn.lab.topology import Topology

UPNP_TABLE = "meshvpn_upnp"
STUN_PORT = 3478
STUN_ADDRS = ("203.0.113.40", "203.0.113.41")
"""Where `add_stun_server` puts coturn on the lab's internet."""
READY_SECONDS = 15.0
"""How long miniupnpd may take to start and pass its STUN check."""
READY_LINE = "Port forwarding is now enabled"
REFUSED_LINE = "Port forwarding is now disabled"


def _router_ruleset(router: RouterLinks, block_udp: bool = False) -> str:
    """The router's NAT and firewall: random ports for the LAN, mapped (DNATed) flows let in;
    with `block_udp`, no UDP crosses it either way (its own STUN check still goes out)."""
    wan, lan_net = f'"{router.wan_if}"', router.lan_net
    udp = "\n    meta l4proto udp drop" if block_udp else ""
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;{udp}
    ct state established,related accept
    ct status dnat accept
    iifname {wan} drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname {wan} ip saddr {lan_net} masquerade fully-random
  }}
}}
table inet {UPNP_TABLE}
delete table inet {UPNP_TABLE}
table inet {UPNP_TABLE} {{
  chain forward {{ type filter hook forward priority filter - 1; policy accept; jump miniupnpd; }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting {{ type nat hook postrouting priority srcnat - 1; policy accept; jump postrouting_miniupnpd; }}
  chain postrouting_miniupnpd {{ }}
}}
"""


def _config(router: RouterLinks, stun: tuple[str, int], workdir: Path) -> str:
    return "\n".join([
        f"ext_ifname={router.wan_if}",
        f"listening_ip={router.lan_if}",
        "ext_perform_stun=yes",
        f"ext_stun_host={stun[0]}",
        f"ext_stun_port={stun[1]}",
        "enable_upnp=yes",
        "enable_natpmp=yes",
        "secure_mode=yes",
        "system_uptime=no",
        "min_lifetime=120",
        "max_lifetime=86400",
        f"lease_file={workdir / 'leases'}",
        f"upnp_table_name={UPNP_TABLE}",
        f"upnp_nat_table_name={UPNP_TABLE}",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        "uuid=00000000-0000-4000-8000-00000000d1ce",
        f"allow 443 {router.lan_net} 1-65535",  # as an admin who lets the LAN forward HTTPS may
        f"allow 1024-65535 {router.lan_net} 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
    ])


@dataclass
class UpnpRouter:
    """The `Nat` of a site whose router maps ports on request (UPnP IGD, NAT-PMP, PCP)."""

    stun: tuple[str, int]
    """An RFC 5780 STUN server with two addresses (`start_stun_server`): miniupnpd's check."""
    name: str = "upnp"
    behaviour: str = ("random-ports NAT (a new random port per destination) whose router maps a "
                      "port on request: UPnP IGD, NAT-PMP and PCP from miniupnpd")
    block_udp: bool = False
    """Drop UDP through the router both ways (mapped or not): the LAN gets out over TCP only."""
    _running: dict[str, tuple[subprocess.Popen, Path]] = field(default_factory=dict, repr=False)
    _cleanups: dict[str, weakref.finalize] = field(default_factory=dict, repr=False)

    @property
    def translates(self) -> bool:
        return True

    def install(self, router: RouterLinks) -> None:
        """Put the NAT in place and start miniupnpd; wait until it hands out mappings."""
        router.ns.run(["nft", "-f", "-"], input=_router_ruleset(router, self.block_udp))
        workdir = Path(tempfile.mkdtemp(prefix=f"{router.ns.name}-upnp-"))
        (workdir / "miniupnpd.conf").write_text(_config(router, self.stun, workdir))
        try:
            self._start(router.ns, workdir)
        except BaseException:
            self.uninstall(router)
            raise

    def restart(self, router_ns: Namespace) -> None:
        """Stop miniupnpd and start it again without its leases: a router that rebooted."""
        proc, workdir = self._running.pop(router_ns.name)
        self._cleanups.pop(router_ns.name).detach()  # the files stay for the next run
        router_ns.stop(proc)
        (workdir / "leases").unlink(missing_ok=True)
        self._start(router_ns, workdir)

    def _start(self, ns: Namespace, workdir: Path) -> None:
        log = workdir / "miniupnpd.log"
        with log.open("w") as out:
            proc = ns.popen([_miniupnpd(), "-d", "-f", str(workdir / "miniupnpd.conf"), "-P", str(workdir / "pid")],
                            stdout=out, stderr=subprocess.STDOUT)
        self._running[ns.name] = (proc, workdir)
        # The lab's teardown kills miniupnpd without `uninstall`: its files go with the process object.
        self._cleanups[ns.name] = weakref.finalize(proc, shutil.rmtree, workdir, ignore_errors=True)
        _wait_ready(proc, log)

    def uninstall(self, router: RouterLinks) -> None:
        """Stop miniupnpd (it deletes its mappings) and remove both tables."""
        proc, workdir = self._running.pop(router.ns.name, (None, None))
        if proc is not None:
            router.ns.stop(proc)
            shutil.rmtree(workdir, ignore_errors=True)
        router.ns.run(["nft", "-f", "-"], input=f"table ip {TABLE}\ndelete table ip {TABLE}\n"
                                                 f"table inet {UPNP_TABLE}\ndelete table inet {UPNP_TABLE}\n")

    def log(self, router_ns: Namespace) -> str:
        """miniupnpd's output so far on that router (for a failed test's report)."""
        running = self._running.get(router_ns.name)
        return "" if running is None else (running[1] / "miniupnpd.log").read_text(errors="replace")


def _miniupnpd() -> str:
    path = shutil.which("miniupnpd") or (Path("/usr/sbin/miniupnpd") if Path("/usr/sbin/miniupnpd").exists() else None)
    if path is None:
        raise LabError("miniupnpd is not installed (make setup installs it)")
    return str(path)


def _wait_ready(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if READY_LINE in text:
            return
        if REFUSED_LINE in text or proc.poll() is not None:
            raise LabError(f"miniupnpd does not map ports:\n{text[-3000:]}")
        time.sleep(0.1)
    raise LabError(f"miniupnpd not ready within {READY_SECONDS:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def start_stun_server(ns: Namespace, addresses: tuple[str, str], workdir: Path) -> subprocess.Popen:
    """coturn as a plain RFC 5780 STUN server on two addresses (ports 3478 and 3479 on each)."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise LabError("coturn's turnserver is not installed (make setup installs it)")
    argv = [turnserver, "-n", "--stun-only", "--listening-port", str(STUN_PORT),
            "--listening-ip", addresses[0], "--listening-ip", addresses[1],
            "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--simple-log", "--no-stdout-log",
            "--log-file", str(workdir / "stun.log"), "--pidfile", str(workdir / "stun.pid"),
            "--userdb", str(workdir / "stun.db")]
    return ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)


def add_stun_server(topo: Topology, workdir: Path) -> tuple[str, int]:
    """Server `stun` on the lab's internet with coturn listening on both `STUN_ADDRS`; returns
    the address `UpnpRouter` checks with, once coturn listens."""
    topo.add_server("stun", addrs=list(STUN_ADDRS))
    ns = topo.host("stun")
    start_stun_server(ns, STUN_ADDRS, workdir)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        sockets = ns.run(["ss", "-Hlun"]).stdout
        if all(f"{address}:{STUN_PORT}" in sockets for address in STUN_ADDRS):
            return STUN_ADDRS[0], STUN_PORT
        time.sleep(0.1)
    raise LabError(f"coturn did not listen on {STUN_ADDRS} within {READY_SECONDS:.0f} s")


UPNP_ROUTER = UpnpRouter(stun=(STUN_ADDRS[0], STUN_PORT))
"""The router of a site that maps ports on request; the lab needs `add_stun_server` first."""
UPNP_ROUTER_TCP_ONLY = UpnpRouter(
    stun=(STUN_ADDRS[0], STUN_PORT), name="upnp-udp-blocked", block_udp=True,
    behaviour="random-ports NAT that drops UDP both ways, whose router maps a port on request (miniupnpd)")
"""The same router letting no UDP through: only a TCP mapping gets a peer in."""
