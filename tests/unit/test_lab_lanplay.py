"""The lab's broadcast storm on loopback: its rate, and its bursts when it goes on and off."""

from __future__ import annotations

import socket

import pytest

from meshvpn.lab import lanplay


@pytest.fixture
def target() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def test_a_steady_storm_sends_at_most_its_rate_and_says_how_many(target, capsys: pytest.CaptureFixture[str]) -> None:
    lanplay.storm("127.0.0.1", "127.0.0.1", target.getsockname()[1], rate=1000, seconds=0.2)
    ready, sent = capsys.readouterr().out.splitlines()
    assert ready == "ready" and sent.startswith("sent ")
    assert 0 < int(sent.split()[1]) <= 201 and received(target) == int(sent.split()[1])


def test_a_storm_in_bursts_prints_each_burst_with_quiet_between(target, capsys: pytest.CaptureFixture[str]) -> None:
    """The times are what the storm did, late wake-ups included: the quiet between two bursts is
    never shorter than asked, and what a burst sent fits its printed times at the rate."""
    lanplay.storm("127.0.0.1", "127.0.0.1", target.getsockname()[1], rate=1000, seconds=0.75, on=0.15, off=0.1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ready" and lines[-1].startswith("sent ")
    bursts = [(float(start), float(end)) for word, start, end in (line.split() for line in lines[1:-1])]
    assert [line.split()[0] for line in lines[1:-1]] == ["burst"] * len(bursts) and 1 <= len(bursts) <= 3
    assert all(start <= end for start, end in bursts), bursts
    assert all(later[0] - earlier[1] >= 0.1 for earlier, later in zip(bursts, bursts[1:])), bursts
    sent = int(lines[-1].split()[1])
    assert 0 < sent <= sum(1 + (end - start) * 1000 for start, end in bursts) and received(target) == sent
