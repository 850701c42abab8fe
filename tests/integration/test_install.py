"""`make install` (what scripts/install runs), into a temporary prefix: the command, the units, the data path."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_make_install_installs_the_command_and_units_and_builds_the_native_data_path(tmp_path):
    places = {"PREFIX": tmp_path / "opt/meshvpn", "BINDIR": tmp_path / "bin", "UNITDIR": tmp_path / "units"}
    done = subprocess.run(["make", "--no-print-directory", "install", *(f"{k}={v}" for k, v in places.items())],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "meshvpn installed; data path: native (C with libsodium)" in done.stdout
    version = subprocess.run([places["BINDIR"] / "meshvpn", "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith("meshvpn ")
    units = sorted(path.name for path in places["UNITDIR"].iterdir())
    assert units == ["meshvpn-coord.service", "meshvpn-relay.service", "meshvpn.service"]
    assert "ExecStart=/usr/local/bin/meshvpn daemon" in (places["UNITDIR"] / "meshvpn.service").read_text()
