"""Mesh names through a real systemd-resolved, in a namespace of their own.

resolved only manages the links of its network namespace, and the suite never touches the root
namespace, so the test runs resolved (unpacked from Debian's package by `make setup`, never
installed: installing it would take over this machine's /etc/resolv.conf) inside a lab namespace,
in a private mount namespace with its own /run/systemd, its own D-Bus system bus and a
`systemd-resolve` user added to a private copy of /etc/passwd. There the node's pieces run as the
daemon will run them: a TUN `meshvpn0` with the overlay address, the DNS responder on it, and
`meshvpn.lan.resolved` registering and reverting the link.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from meshvpn.lab import Lab

ROOT = Path(__file__).resolve().parents[2] / ".lab" / "systemd-resolved" / "root"

SCRIPT = r"""
import asyncio, json, os, subprocess, sys, tempfile, time
import pytun
from meshvpn.lan import resolved
from meshvpn.lan.dnsserver import serve_dns
from meshvpn.lan.names import Directory, Host

root, work = sys.argv[1], tempfile.mkdtemp()
os.chmod(work, 0o755)  # resolved reaches the bus as systemd-resolve
os.makedirs("/run/systemd", exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
for name, line in (("passwd", "systemd-resolve:x:990:990::/run/systemd/resolve:/usr/sbin/nologin\n"),
                   ("group", "systemd-resolve:x:990:\n")):
    copy = os.path.join(work, name)
    with open(f"/etc/{name}") as original, open(copy, "w") as out:
        out.write(original.read() + line)
    subprocess.run(["mount", "--bind", copy, f"/etc/{name}"], check=True)
bus = os.path.join(work, "system_bus_socket")
with open(os.path.join(work, "bus.conf"), "w") as conf:
    conf.write(f'''<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={bus}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_sender="*"/></policy></busconfig>''')
os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={bus}"
os.environ["PATH"] = f"{root}/usr/bin:{os.environ['PATH']}"
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
tun = pytun.TunTapDevice(name="meshvpn0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
tun.addr, tun.netmask = "100.64.0.2", "255.255.255.0"
tun.up()
children = [subprocess.Popen(["dbus-daemon", "--nofork", "--config-file", os.path.join(work, "bus.conf")],
                             stderr=subprocess.DEVNULL)]

async def resolvectl(*args):
    # without blocking the loop, which also runs the responder resolved may ask
    process = await asyncio.create_subprocess_exec("resolvectl", *args, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 10)
    return output.decode()

async def main():
    out = {"before": resolved.unavailable_reason()}
    deadline = time.monotonic() + 5
    while not os.path.exists(bus) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log = open(os.path.join(work, "resolved.log"), "w")
    children.append(subprocess.Popen([f"{root}/lib/systemd/systemd-resolved"], stderr=log))
    while resolved.unavailable_reason() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    out["running"] = resolved.unavailable_reason()
    if out["running"]:
        out["log"] = open(log.name).read()[-2000:]
        return out
    responder = await serve_dns("100.64.0.2", 53, Directory("party", "mesh", [Host("bob", "100.64.0.3")]))
    out["registered"] = await resolved.register("meshvpn0", "100.64.0.2", 53, ("party.mesh",))
    out["status"] = await resolvectl("status", "meshvpn0")
    out["query"] = await resolvectl("query", "--legend=no", "bob.party.mesh")
    out["unknown"] = await resolvectl("query", "--legend=no", "carol.party.mesh")
    await resolved.unregister("meshvpn0")
    out["after"] = await resolvectl("status", "meshvpn0")
    out["answered"] = responder.counters["answered"]
    responder.close()
    return out

try:
    print(json.dumps(asyncio.run(main())))
finally:
    for child in reversed(children):
        child.terminate()
        child.wait(5)
"""


@pytest.mark.lab
@pytest.mark.timeout(60)
def test_resolved_sends_mesh_names_to_the_node_and_forgets_them_on_exit() -> None:
    if not (ROOT / "lib/systemd/systemd-resolved").exists():
        reason = f"systemd-resolved is not unpacked in {ROOT.parent} (make setup does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with Lab() as lab:
        ns = lab.namespace("names")
        done = ns.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SCRIPT, str(ROOT)],
                      timeout=40)
    out = json.loads(done.stdout)
    assert out["before"] and out["running"] == "", out.get("log")
    assert out["registered"] is True
    assert "DNS Servers: 100.64.0.2" in out["status"] and "~party.mesh" in out["status"] and "-DefaultRoute" in out["status"]
    assert "bob.party.mesh: 100.64.0.3" in out["query"] and "link: meshvpn0" in out["query"], out["query"]
    assert "Name 'carol.party.mesh' not found" in out["unknown"], out["unknown"]  # our NXDOMAIN
    assert "DNS Servers" not in out["after"] and "party.mesh" not in out["after"]
    assert out["answered"] >= 1
