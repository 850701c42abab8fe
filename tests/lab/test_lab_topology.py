"""The lab builds the address plan it documents, routes like the internet, and always cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from meshvpn.lab import Lab, LabError, NatKind, Topology, cleanup_stale, lab_namespaces
from meshvpn.lab.netns import list_namespaces

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]


def test_address_plan(topo: Topology) -> None:
    topo.add_site("a", hosts=2)
    topo.add_site("b")
    assert topo.node("coord").addrs == ["203.0.113.10", "203.0.113.11"]
    assert [topo.addr(name) for name in ("a", "a1", "a2", "b", "b1")] == [
        "203.0.113.100", "10.1.0.11", "10.1.0.12", "203.0.113.101", "10.2.0.11",
    ]
    assert topo.host("a1").name == f"{topo.lab.prefix}-a1"
    assert "mtu 1500" in topo.host("a1").ip("link", "show", "eth0")
    assert "mtu 1500" in topo.host("a").ip("link", "show", "wan0")


def test_hosts_reach_servers_but_not_each_other(topo: Topology) -> None:
    topo.add_site("a")
    topo.add_site("b")
    for host in ("a1", "b1"):
        assert topo.host(host).ping("203.0.113.10")
        assert topo.host(host).ping("203.0.113.11")
    assert topo.host("coord").ping(topo.addr("a"))
    assert not topo.host("coord").ping(topo.addr("a1"), timeout=0.3)
    assert not topo.host("a1").ping(topo.addr("b1"), timeout=0.3)


def test_second_public_segment_is_routed(topo: Topology) -> None:
    topo.add_server("stun", addrs=["198.51.100.20", "203.0.113.20"])
    topo.add_site("a")
    assert topo.host("a1").ping("198.51.100.20")
    assert topo.host("coord").ping("198.51.100.20")


def test_site_without_nat_is_a_public_host(topo: Topology, probe) -> None:
    topo.add_site("p", nat=NatKind.NO_NAT)
    assert topo.addr("p1").startswith("192.0.2.")
    assert probe(topo.host("p1"), "udp", 41000, "203.0.113.10:7000") == [f"{topo.addr('p1')}:41000"]
    assert topo.host("coord").ping(topo.addr("p1"))


def test_carrier_grade_nat_stacks_two_routers(topo: Topology, probe) -> None:
    topo.add_site("cgn", hosts=0, lan="100.64.0.0/24")
    topo.add_site("c", behind="cgn")
    assert topo.addr("c") == "100.64.0.100"
    seen = probe(topo.host("c1"), "udp", 41000, "203.0.113.10:7000")
    assert seen == [f"{topo.addr('cgn')}:41000"]


def test_failed_build_leaves_no_namespace() -> None:
    with pytest.raises(LabError, match="not in a public segment"):
        with Lab() as lab:
            topo = Topology(lab)
            topo.add_site("a")
            topo.add_server("bad", addrs=["8.8.8.8"])
    assert not [name for name in lab_namespaces() if name.startswith(lab.prefix + "-")]


def test_close_kills_children() -> None:
    with Lab() as lab:
        child = lab.namespace("x").popen(["sleep", "30"])
    assert child.poll() is not None


def test_cleanup_stale_removes_only_dead_owners() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = f"mv{finished.pid}-stale"
    alive = f"mv{os.getpid()}-keep"
    foreign = f"mvx{finished.pid}-other"
    try:
        for name in (dead, alive, foreign):
            subprocess.run(["ip", "netns", "add", name], check=True)
        assert dead in cleanup_stale()
        remaining = list_namespaces()
        assert dead not in remaining
        assert alive in remaining and foreign in remaining
    finally:
        for name in (dead, alive, foreign):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_sigterm_tears_down_lab_and_children() -> None:
    script = textwrap.dedent("""
        import sys, time
        from meshvpn.lab import Lab
        with Lab() as lab:
            child = lab.namespace("x").popen(["sleep", "30"])
            lab.namespace("y")
            print(child.pid, flush=True)
            time.sleep(30)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(owner.stdout.readline())
        assert any(name.startswith(f"mv{owner.pid}-") for name in lab_namespaces())
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(10) == 128 + signal.SIGTERM
        left = [name for name in lab_namespaces() if name.startswith(f"mv{owner.pid}-")]
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()
        cleanup_stale()
    assert not left
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
