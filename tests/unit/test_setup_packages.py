"""`make test` and `make bench` install every program their tests, lab and bench call.

A fresh Debian image has only its own packages; a program the suite runs that neither the image
nor the command's set-up provides makes the README's command fail on exactly the machine it is
written for. Programs are read the way the suite calls them: the first word of an argv list.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGV_HEAD = re.compile(r'\[\s*"([a-z0-9][a-z0-9_.+-]*)"\s*,')

# Debian packages every image this project supports ships (Debian 12 with Python): what the
# set-up may rely on without installing it.
IMAGE_PACKAGES = {"coreutils", "iproute2", "procps", "systemd", "util-linux", "dpkg", "bash", "make", "grep", "sed"}


def _makefile_list(name: str) -> set[str]:
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith(f"{name} :="):
            return set(line.split(":=", 1)[1].split())
    raise AssertionError(f"Makefile has no {name}")


def _called_programs(*folders: str) -> set[str]:
    programs = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            programs.update(ARGV_HEAD.findall(path.read_text()))
    return programs


def _package_of(program: str) -> str | None:
    path = shutil.which(program)
    if path is None:
        return None
    for query in (f"bin/{program}", str(Path(path).resolve())):
        done = subprocess.run(["dpkg", "-S", query], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            package, _, owned = line.partition(": ")
            if owned.rsplit("/", 1)[-1] == Path(query).name:
                return package.split(":")[0].split(",")[0].strip()
    return None


def _uninstalled(programs: set[str], installed: set[str]) -> list[str]:
    missing = []
    for program in sorted(programs):
        package = _package_of(program)
        if package is not None and package not in installed | IMAGE_PACKAGES:
            missing.append(f"{program} ({package})")
    return missing


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs a Debian machine to map programs to packages")
def test_make_test_installs_every_program_the_tests_and_lab_call():
    called = _called_programs("tests", "meshvpn/lab")
    assert "ping" in called and "nft" in called, "the scan reads the suite's argv lists"
    assert _uninstalled(called, _makefile_list("APT_PACKAGES")) == []


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs a Debian machine to map programs to packages")
def test_make_bench_installs_every_program_the_bench_calls():
    installed = _makefile_list("APT_PACKAGES") | _makefile_list("BENCH_PACKAGES")
    assert _uninstalled(_called_programs("meshvpn/bench"), installed) == []
