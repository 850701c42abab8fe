"""Registering the mesh's names with systemd-resolved through resolvectl: the calls made, a
failure reverted, and nothing done where resolved does not run.

`tests/lab/test_lan_resolved_lab.py` runs the whole registration against a real resolved in a
namespace; here a stand-in `resolvectl` on PATH records the calls and fails on demand, which a
real resolved cannot be made to do at a chosen step.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from meshvpn.lan import resolved

STAND_IN = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in *"{fail}"*) echo "Failed to set DNS configuration: Link meshvpn0 not known" >&2; exit 1;; esac
"""


def test_register_commands_set_link_dns_routing_domains_and_no_default_route() -> None:
    assert resolved.register_commands("meshvpn0", "100.64.0.1", 53, ("party.mesh", "mesh")) == [
        ["resolvectl", "dns", "meshvpn0", "100.64.0.1"],
        ["resolvectl", "domain", "meshvpn0", "~party.mesh", "~mesh"],
        ["resolvectl", "default-route", "meshvpn0", "no"],
    ]
    assert resolved.register_commands("meshvpn0", "fd7a::1", 5353, ("party.mesh",))[0][-1] == "[fd7a::1]:5353"
    assert resolved.unregister_commands("meshvpn0") == [["resolvectl", "revert", "meshvpn0"]]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A resolvectl that logs its arguments and fails on the words in `fail`; resolved 'runs'."""
    runtime = tmp_path / "resolve"
    runtime.mkdir()
    (runtime / "io.systemd.Resolve").touch()
    monkeypatch.setattr(resolved, "RESOLVED_RUNTIME", runtime)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "calls"

    def install(fail: str = "never-matches") -> Path:
        script = tmp_path / "resolvectl"
        script.write_text(STAND_IN.format(log=log, fail=fail))
        script.chmod(0o755)
        return log

    return install


def test_register_runs_every_call_and_unregister_reverts(stand_in) -> None:
    log = stand_in()
    assert asyncio.run(resolved.register("meshvpn0", "100.64.0.1", 53, ("party.mesh",)))
    asyncio.run(resolved.unregister("meshvpn0"))
    assert log.read_text().splitlines() == [
        "dns meshvpn0 100.64.0.1", "domain meshvpn0 ~party.mesh", "default-route meshvpn0 no", "revert meshvpn0"]


def test_a_failed_registration_is_reverted_and_reported(stand_in, caplog: pytest.LogCaptureFixture) -> None:
    log = stand_in(fail="domain")
    assert not asyncio.run(resolved.register("meshvpn0", "100.64.0.1", 53, ("party.mesh",)))
    assert log.read_text().splitlines() == ["dns meshvpn0 100.64.0.1", "domain meshvpn0 ~party.mesh", "revert meshvpn0"]
    assert "Link meshvpn0 not known" in caplog.text


def test_without_resolved_nothing_is_run_and_the_reason_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(resolved, "RESOLVED_RUNTIME", tmp_path / "absent")
    reason = resolved.unavailable_reason()
    assert reason
    caplog.set_level("INFO")
    assert not asyncio.run(resolved.register("meshvpn0", "100.64.0.1", 53, ("party.mesh",)))
    assert reason in caplog.text


def _fake_process(proc: Path, pid: str, comm: str, netns: str) -> None:
    (proc / pid / "ns").mkdir(parents=True)
    (proc / pid / "comm").write_text(comm + "\n")
    (proc / pid / "ns" / "net").symlink_to(netns)


@pytest.mark.parametrize("others, verdict", [
    ([], False),                                               # no resolved seen: the runtime file decides
    ([("7", "systemd-resolve", "net:[2]")], True),             # resolved only in another namespace
    ([("7", "systemd-resolve", "net:[2]"), ("9", "systemd-resolve", "net:[1]")], False),  # one is ours
    ([("7", "sshd", "net:[2]")], False),
])
def test_resolved_in_another_network_namespace_is_not_ours_to_configure(tmp_path: Path, monkeypatch, others,
                                                                        verdict) -> None:
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").symlink_to("net:[1]")
    for pid, comm, netns in others:
        _fake_process(proc, pid, comm, netns)
    assert resolved._resolved_only_elsewhere(proc) is verdict
    runtime = tmp_path / "resolve"
    runtime.mkdir()
    (runtime / "io.systemd.Resolve").touch()
    monkeypatch.setattr(resolved, "RESOLVED_RUNTIME", runtime)
    monkeypatch.setattr(resolved, "PROC", proc)
    monkeypatch.setattr(resolved.shutil, "which", lambda name: "/usr/bin/" + name)
    assert ("another network namespace" in resolved.unavailable_reason()) is verdict
