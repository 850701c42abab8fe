"""The lab's checksummed transfer on loopback: both ends count the same stream, in every mode."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from meshvpn.lab import transfer
from meshvpn.lab.transfer import TransferResult


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_both(**amount) -> tuple[TransferResult, TransferResult]:
    """A sink in a thread on loopback and a source sending `amount`; (sent, received)."""
    port = free_port()
    received: list[TransferResult] = []
    thread = threading.Thread(target=lambda: received.append(transfer.sink("127.0.0.1", port, timeout=5)))
    thread.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            sent = transfer.source("127.0.0.1", port, **amount)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    thread.join(10)
    return sent, received[0]


@pytest.mark.parametrize("size, over", [(1 << 20, 0.0), (100_003, 0.2), (0, 0.0)])
def test_a_sized_transfer_arrives_whole_and_paced_over_its_time(size: int, over: float) -> None:
    sent, received = run_both(size=size, over=over)
    assert sent.bytes == size and received.same_data(sent)
    assert sent.seconds >= over


def test_a_timed_transfer_sends_whole_blocks_for_its_duration() -> None:
    sent, received = run_both(duration=0.2)
    assert sent.bytes > 0 and sent.bytes % transfer.BLOCK == 0 and received.same_data(sent)
    assert 0.2 <= sent.seconds < 5 and received.mbit_per_s() > 0


def test_the_sink_samples_its_progress_from_the_first_byte_to_the_end() -> None:
    sent, received = run_both(size=1 << 20, over=0.2)
    times, counts = zip(*received.progress)
    assert list(times) == sorted(times) and list(counts) == sorted(counts)
    assert counts[0] > 0 and counts[-1] == received.bytes == sent.bytes
    assert times[-1] - times[0] == pytest.approx(received.seconds, abs=0.01)
    assert len(received.progress) >= 10, "a paced transfer is seen along the way, not only at its end"
    assert sent.progress == []


def test_results_differ_when_a_byte_or_the_length_differs() -> None:
    base = TransferResult(10, "ab" * 32, 1.0)
    assert base.same_data(TransferResult(10, "ab" * 32, 2.0))
    assert not base.same_data(TransferResult(11, "ab" * 32, 1.0))
    assert not base.same_data(TransferResult(10, "cd" * 32, 1.0))


def test_the_command_line_prints_ready_then_one_json_result(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    thread = threading.Thread(target=transfer.main, args=(["sink", "127.0.0.1", "--port", str(port), "--timeout", "5"],))
    thread.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"hello")
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    thread.join(10)
    ready, line = capsys.readouterr().out.splitlines()
    assert ready == "ready"
    assert json.loads(line)["bytes"] == 5 and json.loads(line)["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert [count for _, count in json.loads(line)["progress"]] == [5, 5]
