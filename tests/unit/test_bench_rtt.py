"""The idle round-trip A/B (meshvpn.bench.rtt): what it sums up from each round, and what it refuses."""

import pytest

from meshvpn.bench.rtt import parse_args, render, summarize


def a_round(veth, mesh, quick, **extra):
    return {"load": [1.0, 1.0], "rows": {"plain veth": {"times_ms": veth}, "meshvpn direct": {"times_ms": mesh, **extra},
                                         "quicktun nacltai": {"times_ms": quick}}}


def test_what_a_row_adds_is_taken_against_the_same_rounds_veth():
    rounds = [a_round([0.02, 0.03, 0.04], [0.10, 0.11, 0.50], [0.09, 0.09, 0.09]),
              a_round([0.05, 0.05, 0.05], [0.20, 0.20, 0.21], [0.10, 0.10, 0.10]),
              a_round([0.01, 0.01, 0.01], [0.09, 0.06, 0.08], [0.04, 0.04, 0.04])]
    summary = summarize(rounds)
    mesh = summary["meshvpn direct"]
    assert (mesh["median_ms"], mesh["least_ms"], mesh["largest_ms"]) == (0.11, 0.08, 0.20)
    assert mesh["adds_ms"] == pytest.approx(0.08) and mesh["adds_least_ms"] == pytest.approx(0.07)
    assert mesh["adds_largest_ms"] == pytest.approx(0.15)
    assert summary["quicktun nacltai"]["adds_ms"] == pytest.approx(0.05)
    assert summary["plain veth"]["adds_ms"] == 0


def test_the_tail_is_taken_over_every_reply_of_every_round():
    # meshvpn's medians are the lower ones, but one reply in ten is slow: its tail and mean show it.
    fast, slow = [0.10] * 9, [0.10] * 8
    rounds = [a_round([0.02] * 9, fast[:8] + [2.0], [0.12] * 9), a_round([0.02] * 9, slow + [1.0], [0.12] * 9)]
    summary = summarize(rounds)
    mesh, quick = summary["meshvpn direct"], summary["quicktun nacltai"]
    assert mesh["median_ms"] < quick["median_ms"]
    assert (mesh["p90_ms"], mesh["p99_ms"]) == (1.0, 2.0) and mesh["mean_ms"] == pytest.approx(4.6 / 18)
    assert (quick["p90_ms"], quick["p99_ms"]) == (0.12, 0.12)
    assert "p90/p99/mean 1.000/2.000/0.256" in render({"base": summary}, 2)


def test_extras_are_summed_up_only_when_every_round_has_them():
    extra = {"mbit": 3000, "loaded_p50_ms": 0.3, "loaded_p99_ms": 4.0, "idle": {"process_ms": 60.0, "busiest_thread_ms": 2.0}}
    rounds = [a_round([0.02], [0.1], [0.1], **extra), a_round([0.02], [0.1], [0.1], **{**extra, "mbit": 1000})]
    mesh = summarize(rounds)["meshvpn direct"]
    assert (mesh["mbit"], mesh["idle_process_ms"], mesh["idle_thread_ms"]) == (2000, 60.0, 2.0)
    assert "mbit" not in summarize([rounds[0], a_round([0.02], [0.1], [0.1])])["meshvpn direct"]
    assert "2000 Mbit/s" in render({"base": summarize(rounds)}, 2)


@pytest.mark.parametrize("argv", [["--rows", "meshvpn direct"], ["--interval", "0.0001"], ["--pings", "0"]])
def test_a_sitting_without_veth_or_with_silly_numbers_is_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)
