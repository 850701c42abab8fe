"""The live demo end to end, as `make demo` runs it, with a one-second transfer.

One run is shared by the tests that read its output: direct, LAN and relayed pings, intact
transfers, every node online. Each run must leave nothing: no namespace named after its PID,
no process mentioning its work directory, no files. A second run is interrupted as Ctrl-C
would, once the daemons are starting, and must clean up the same way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshvpn.lab import lab_namespaces, python_command
from meshvpn.lab.netns import _child_env


NODES = ("a1", "b1", "c1", "c2", "d1", "e1")
RUN_TIMEOUT = 140
"""Seconds the demo may take: about 20 on a quiet machine; beside three other test workers at load
13 to 15 it took over 90."""
STOP_TIMEOUT = 30
"""Seconds a demo that ran out of time has to clean up after SIGTERM before it is killed (a kill
would leave its namespaces and daemons behind)."""
pytestmark = [pytest.mark.lab, pytest.mark.timeout(RUN_TIMEOUT + STOP_TIMEOUT + 30)]


@dataclass
class DemoRun:
    """A finished demo: its PID, exit status, output and the directory it put its files in."""

    pid: int
    returncode: int
    stdout: str
    stderr: str
    tmpdir: Path


def start_demo(tmpdir: Path) -> subprocess.Popen:
    env = {**_child_env(), "TMPDIR": str(tmpdir)}
    return subprocess.Popen(python_command("meshvpn.lab.demo", "--seconds", "1"), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, tmpdir: Path, stdout_so_far: str = "") -> DemoRun:
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:  # out of time: SIGTERM lets its lab remove its namespaces and daemons
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return DemoRun(proc.pid, proc.returncode, stdout_so_far + stdout, stderr, tmpdir)


def left_behind(run: DemoRun) -> list[str]:
    """Namespaces, processes and files of `run` that still exist."""
    namespaces = [name for name in lab_namespaces() if name.startswith(f"mv{run.pid}-")]
    processes = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run.tmpdir).encode() in cmdline.read_bytes():
                processes.append(cmdline.parent.name)
        except OSError:
            continue
    files = [str(path) for path in run.tmpdir.iterdir()]
    return namespaces + [f"pid {pid}" for pid in processes] + files


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    tmpdir = tmp_path_factory.mktemp("demo")
    return finish(start_demo(tmpdir), tmpdir)


def section(run: DemoRun, heading: str) -> str:
    """The output of the step whose heading contains `heading`."""
    match = re.search(rf"^== \d+\. [^\n]*{re.escape(heading)}[^\n]*\n(.*?)(?=^== |\Z)", run.stdout, re.M | re.S)
    assert match, f"no step {heading!r} in:\n{run.stdout}\n{run.stderr}"
    return match.group(1)


def test_demo_succeeds_with_direct_lan_and_relayed_paths(demo: DemoRun) -> None:
    assert demo.returncode == 0, f"{demo.stdout}\n{demo.stderr}"
    pings = section(demo, "meshvpn ping")
    assert re.search(r"^pong from b1 \(100\.80\.0\.\d+\) via direct 203\.0\.113\.101:\d+ in [\d.]+ ms$", pings, re.M)
    assert re.search(r"^pong from c2 \(100\.80\.0\.\d+\) via lan 10\.3\.0\.12:\d+ in [\d.]+ ms$", pings, re.M)
    assert re.search(r"^pong from e1 \(100\.80\.0\.\d+\) via relay 203\.0\.113\.20:7500 in [\d.]+ ms$", pings, re.M)


def test_demo_shows_every_node_online_and_each_status(demo: DemoRun) -> None:
    listed = section(demo, "meshvpn coord nodes list")
    for name in NODES:
        assert re.search(rf"^{name}\s+demo\s+100\.80\.0\.\d+\s+online\s", listed, re.M), listed
    statuses = section(demo, "meshvpn status")
    for name in NODES:
        assert re.search(rf"^100\.80\.0\.\d+\s+{name}\s+self\s+coord connected( \S+)?   data path (native|pure-python)$", statuses, re.M), statuses
    assert re.search(r"^100\.80\.0\.\d+\s+e1\s+relay\s+203\.0\.113\.20:7500\s", statuses, re.M), statuses


def test_demo_transfers_arrive_intact_through_the_tunnel(demo: DemoRun) -> None:
    transfer = section(demo, "TCP through the tunnel")
    assert "a1 -> b1" in transfer and "path direct" in transfer
    assert "d1 -> e1" in transfer and "path relay" in transfer
    sent = re.findall(r"sent (\d+) bytes, sha256 ([0-9a-f]{64})", transfer)
    received = re.findall(r"received (\d+) bytes in [\d.]+ s, sha256 ([0-9a-f]{64})", transfer)
    assert len(sent) == 2 and sent == received and all(int(size) > 0 for size, _ in sent)
    assert len(re.findall(r"checksums match: \d+ Mbit/s", transfer)) == 2


def test_demo_finds_games_by_broadcast_and_a_name_across_the_mesh(demo: DemoRun) -> None:
    party = section(demo, "LAN party")
    assert re.search(r"^a1-game 100\.80\.0\.\d+$", party, re.M) and re.search(r"^c2-game 100\.80\.0\.\d+$", party, re.M), party
    assert re.search(r"^b1\$ dig \+short .* c2\.demo\.mesh\n100\.80\.0\.\d+$", party, re.M), party


def test_demo_leaves_nothing_behind(demo: DemoRun) -> None:
    assert "nothing left behind" in section(demo, "Cleaning up")
    assert left_behind(demo) == []


def test_ctrl_c_while_daemons_start_cleans_up(tmp_path: Path) -> None:
    proc = start_demo(tmp_path)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("== 4. "):
            break
    os.kill(proc.pid, signal.SIGINT)
    run = finish(proc, tmp_path, "".join(seen))
    assert any(line.startswith("== 4. ") for line in seen), run.stdout + run.stderr
    assert run.returncode == 130, run.stdout + run.stderr
    assert "interrupted" in run.stdout and "nothing left behind" in run.stdout
    assert left_behind(run) == []
