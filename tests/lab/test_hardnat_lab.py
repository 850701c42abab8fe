"""Hard NATs in namespaces: the userspace NAT's behaviours, netcheck's verdicts, traversal.

The userspace NAT (`meshvpn.lab.usernat`) is checked the way docs/lab.md checks the kernel
kinds: an echo server on coord reports the public endpoint it saw, and senders on other
public addresses show what the filtering lets in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from meshvpn.lab import NatKind, Topology

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

COORD_1 = "203.0.113.10:7000"
COORD_2 = "203.0.113.11:7000"

CONTROL = "203.0.113.10:7200"
"""Where a1's listener opens its mapping: a knock from exactly there passes every NAT kind."""

LISTEN = r"""
import socket, sys, time
port, opener, seconds, grace = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", port))
host, oport = opener.rsplit(":", 1)
sock.sendto(b"open", (host, int(oport)))
print("open", flush=True)
sock.settimeout(0.05)
heard, end = set(), time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data, src = sock.recvfrom(2048)
    except socket.timeout:
        continue
    if data == b"knock":
        heard.add(f"{src[0]}:{src[1]}")
    if data == b"control":
        heard.add("control")
        end = min(end, time.monotonic() + grace)
print(" ".join(sorted(heard)) or "-")
"""

KNOCK = r"""
import socket, sys, time
src, dst, word = sys.argv[1].rsplit(":", 1), sys.argv[2].rsplit(":", 1), sys.argv[3].encode()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((src[0], int(src[1])))
for _ in range(5):
    sock.sendto(word, (dst[0], int(dst[1])))
    time.sleep(0.05)
"""
LISTEN_SECONDS = 20.0
"""Upper bound only: the listener stops `CONTROL_GRACE` after the control knock arrives."""
CONTROL_GRACE = 0.3
"""Seconds the listener keeps listening after the control: the knocks were sent before it, so
this covers only reordering inside the NAT."""


def admitted(topo: Topology, port: int, public: str, knockers: list[tuple[str, str]]) -> set[str]:
    """Which `(namespace, source endpoint)` knockers reach a1's `port` after it sent to `CONTROL`.

    The knockers run one after the other, then a control knock from `CONTROL` itself, which
    every NAT kind lets in: the listener stops shortly after the control, so no window decides
    what was heard, and an empty answer means the knocks were refused, not that they were late.
    """
    listener = topo.host("a1").popen([sys.executable, "-c", LISTEN, str(port), CONTROL, str(LISTEN_SECONDS),
                                      str(CONTROL_GRACE)], stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "open"
    for ns, source in knockers:
        topo.host(ns).run([sys.executable, "-c", KNOCK, source, public, "knock"])
    topo.host("coord").run([sys.executable, "-c", KNOCK, CONTROL, public, "control"])
    heard = set(listener.communicate(timeout=LISTEN_SECONDS + 10)[0].split())
    assert "control" in heard, f"the control knock from {CONTROL} never reached {public}: nothing is proven"
    return heard - {"control", "-"}


@pytest.fixture
def other(topo: Topology) -> str:
    """A second server, 203.0.113.12, for knocks from an address a site never sent to."""
    topo.add_server("other", addrs=["203.0.113.12"])
    return "203.0.113.12"


def test_sequential_nat_gives_each_destination_the_next_port(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.SEQUENTIAL)
    seen = probe(topo.host("a1"), "udp", 41414, COORD_1, COORD_2, COORD_1)
    first = int(seen[0].rsplit(":", 1)[1])
    assert seen == [f"203.0.113.100:{first}", f"203.0.113.100:{first + 1}", f"203.0.113.100:{first}"]
    [next_socket] = probe(topo.host("a1"), "udp", 41415, COORD_1)
    assert next_socket == f"203.0.113.100:{first + 2}"


def test_address_dependent_nat_shares_a_port_per_remote_address(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.ADDRESS_DEPENDENT)
    seen = probe(topo.host("a1"), "udp", 41414, COORD_1, "203.0.113.10:7001", COORD_2)
    assert seen[0].startswith("203.0.113.100:") and seen[1] == "-"
    ports = [int(endpoint.rsplit(":", 1)[1]) for endpoint in (seen[0], seen[2])]
    assert ports[1] == ports[0] + 1


def test_full_cone_preserves_ports_and_admits_anyone(topo: Topology, probe, other: str) -> None:
    topo.add_site("a", nat=NatKind.FULL_CONE)
    assert probe(topo.host("a1"), "udp", 41414, COORD_1) == ["203.0.113.100:41414"]
    knockers = [("coord", "203.0.113.10:7100"), ("other", f"{other}:7000")]
    assert admitted(topo, 41500, "203.0.113.100:41500", knockers) == {"203.0.113.10:7100", f"{other}:7000"}


def test_restricted_cone_admits_only_addresses_sent_to(topo: Topology, other: str) -> None:
    topo.add_site("a", nat=NatKind.RESTRICTED_CONE)
    knockers = [("coord", "203.0.113.10:7100"), ("other", f"{other}:7000")]
    assert admitted(topo, 41500, "203.0.113.100:41500", knockers) == {"203.0.113.10:7100"}


def test_sequential_nat_admits_only_the_exact_endpoint(topo: Topology, other: str) -> None:
    topo.add_site("a", nat=NatKind.SEQUENTIAL.with_behavior(port_base=44999))
    knockers = [("coord", "203.0.113.10:7100"), ("other", f"{other}:7000")]
    assert admitted(topo, 41500, "203.0.113.100:45000", knockers) == set()


def test_tcp_and_ping_cross_the_userspace_nat(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.FULL_CONE)
    assert probe(topo.host("a1"), "tcp", 41414, COORD_1) == ["203.0.113.100:41414"]
    assert topo.host("a1").ping("203.0.113.10")


def test_mappings_time_out(topo: Topology, probe) -> None:
    topo.add_site("a", nat=NatKind.SEQUENTIAL.with_behavior(mapping_timeout=1.0))
    [first] = probe(topo.host("a1"), "udp", 41414, COORD_1)
    assert probe(topo.host("a1"), "udp", 41414, COORD_1) == [first]
    time.sleep(1.5)
    [later] = probe(topo.host("a1"), "udp", 41414, COORD_1)
    assert later != first


@pytest.mark.parametrize("hairpin", [True, False])
def test_userspace_hairpinning_shows_the_neighbours_public_endpoint(topo: Topology, hairpin: bool) -> None:
    topo.add_site("a", hosts=2, nat=NatKind.FULL_CONE.with_hairpin(hairpin))
    heard = admitted(topo, 1414, "203.0.113.100:1414", [("a2", "0.0.0.0:2828")])
    assert heard == ({"203.0.113.100:2828"} if hairpin else set())


def test_swapping_between_kernel_and_userspace_nats(topo: Topology, probe) -> None:
    topo.add_site("a")
    topo.set_nat("a", NatKind.SEQUENTIAL)
    [seen] = probe(topo.host("a1"), "udp", 41414, COORD_1)
    assert seen == "203.0.113.100:30001"
    topo.set_nat("a", NatKind.PORT_PRESERVING)
    assert "0:\tfrom all lookup local" in topo.host("a").ip("rule", "show")
    assert probe(topo.host("a1"), "udp", 41415, COORD_1) == ["203.0.113.100:41415"]


# ---- meshvpn netcheck -----------------------------------------------------------------------

STUN_SERVERS = r"""
import asyncio
from meshvpn.stunio import start_stun_server
async def serve():
    await start_stun_server("203.0.113.10", 3478, ("203.0.113.11", 3479))
    await start_stun_server("203.0.113.11", 3478, ("203.0.113.10", 3479))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(serve())
"""

NODE_CONFIG = """\
private_key_file: {key}
control_socket: {tmp}/none.sock
coord:
  address: 203.0.113.10:7400
  public_key: {pub}
  stun_port: 3478
"""

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
DEPENDENT = "address-dependent or address-and-port-dependent"

NETCHECK_CASES = [
    # kind, mapping, filtering, allocation, hairpinning
    (NatKind.PORT_PRESERVING, EIM, APDM, "port preservation", False),
    (NatKind.PORT_RANGE, EIM, APDM, "random", False),
    (NatKind.RANDOM_PORTS, APDM, DEPENDENT, "random", False),
    (NatKind.SEQUENTIAL, APDM, DEPENDENT, "sequential", False),
    (NatKind.ADDRESS_DEPENDENT, ADM, DEPENDENT, "sequential", False),
    (NatKind.FULL_CONE.with_hairpin(), EIM, EIM, "port preservation", True),
    (NatKind.RESTRICTED_CONE, EIM, ADM, "port preservation", False),
    (NatKind.NO_NAT, EIM, EIM, "port preservation", None),
]


def netcheck(topo: Topology, host: str, tmp_path) -> dict:
    """Run `meshvpn netcheck --json` in `host` against STUN servers on coord's two addresses."""
    from meshvpn import keys

    servers = topo.host("coord").popen([sys.executable, "-c", STUN_SERVERS], stdout=subprocess.PIPE, text=True)
    assert servers.stdout.readline().strip() == "ready"
    private = keys.write_private_key(tmp_path / "node.key")
    config = tmp_path / "node.yaml"
    config.write_text(NODE_CONFIG.format(key=tmp_path / "node.key", tmp=tmp_path,
                                         pub=keys.encode_key(keys.public_key(private))))
    done = topo.host(host).run([sys.executable, "-m", "meshvpn", "netcheck", "--json", "-c", str(config)],
                               check=False, timeout=30)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind, mapping, filtering, allocation, hairpin", NETCHECK_CASES,
                         ids=[case[0].name for case in NETCHECK_CASES])
def test_netcheck_names_the_nat_behaviour(topo: Topology, tmp_path, kind, mapping, filtering, allocation, hairpin) -> None:
    topo.add_site("a", nat=kind)
    report = netcheck(topo, "a1", tmp_path)
    assert report["udp"] and report["nat"] == kind.translates
    assert (report["mapping"], report["filtering"]) == (mapping, filtering)
    assert (report["allocation"], report["hairpinning"]) == (allocation, hairpin)


def test_netcheck_reports_blocked_udp(topo: Topology, tmp_path) -> None:
    topo.add_site("a", nat=NatKind.UDP_BLOCKED)
    report = netcheck(topo, "a1", tmp_path)
    assert not report["udp"] and report["traversal"].startswith("UDP blocked")
