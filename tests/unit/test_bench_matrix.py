"""Traversal matrix logic without namespaces: attempt labels, cell summaries, the tables, the JSON, pairs."""

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.bench.matrix import (
    KINDS, Attempt, Cell, _nebula_config, all_pairs, parse_args, parse_pair, render_table, run_cells, run_meshvpn, to_json,
    watch,
)
from meshvpn.bench.report import write_json

DIRECT = Attempt(first_path="direct", first_ping_s=0.5, final_path="direct", direct_s=0.5)
UPGRADED = Attempt(first_path="relay", first_ping_s=1.0, final_path="direct", direct_s=4.0)
RELAYED = Attempt(first_path="relay", first_ping_s=2.0, final_path="relay")
SILENT = Attempt()
BROKEN = Attempt(error="userspace NAT in a did not start")


@pytest.mark.parametrize(("attempt", "label"), [
    (DIRECT, "direct"), (UPGRADED, "relay→direct"), (RELAYED, "relay"), (SILENT, "none"), (BROKEN, "error"),
])
def test_attempt_labels(attempt: Attempt, label: str) -> None:
    assert attempt.label == label


def test_single_run_cells_show_the_path_and_times() -> None:
    assert Cell("meshvpn", "a", "b", [DIRECT]).text() == "direct 0.5s"
    assert Cell("meshvpn", "a", "b", [UPGRADED]).text() == "relay→direct 1.0s→4.0s"
    assert Cell("nebula", "a", "b", [RELAYED]).text() == "relay 2.0s"
    assert Cell("nebula", "a", "b", [SILENT]).text() == "none"
    assert Cell("nebula", "a", "b", [BROKEN]).text() == "error"


def test_repeated_cells_give_the_rate_of_the_usual_outcome_and_the_p2p_count() -> None:
    cell = Cell("meshvpn", "random-ports", "port-preserving", [DIRECT, DIRECT, UPGRADED, RELAYED])
    assert cell.outcome == ("direct", 2)
    assert cell.p2p_runs == 3
    assert cell.first_ping_median == pytest.approx(0.75)
    assert cell.direct_median == pytest.approx(0.5)
    assert cell.text() == "direct 2/4 0.8s (p2p 3/4)"


def test_table_puts_a_down_and_b_across_and_leaves_cells_not_run_empty() -> None:
    cells = [
        Cell("meshvpn", "port-preserving", "port-preserving", [DIRECT]),
        Cell("meshvpn", "port-preserving", "random-ports", [UPGRADED]),
        Cell("meshvpn", "random-ports", "random-ports", [RELAYED]),
        Cell("nebula", "port-preserving", "port-preserving", [RELAYED]),
    ]
    assert render_table(cells, "meshvpn").splitlines() == [
        "| a \\ b | port-preserving | random-ports |",
        "|---|---|---|",
        "| port-preserving | direct 0.5s | relay→direct 1.0s→4.0s |",
        "| random-ports |  | relay 2.0s |",
    ]
    assert render_table(cells, "nebula").splitlines()[2] == "| port-preserving | relay 2.0s |"


def test_json_has_every_attempt_and_each_cell_summary(tmp_path) -> None:
    cells = [Cell("meshvpn", "cgn", "port-preserving", [UPGRADED, SILENT])]
    document = to_json(cells, {"runs": 2}, {"cpus": 2})
    write_json(tmp_path / "m.json", document)
    loaded = json.loads((tmp_path / "m.json").read_text())
    assert [kind["name"] for kind in loaded["kinds"]] == [kind.name for kind in KINDS]
    (cell,) = loaded["cells"]
    assert cell["outcome"] == "relay→direct" and cell["outcome_runs"] == 1
    assert cell["p2p_runs"] == 1 and cell["runs"] == 2
    assert cell["first_ping_median_s"] == 1.0 and cell["direct_median_s"] == 4.0
    assert [attempt["label"] for attempt in cell["attempts"]] == ["relay→direct", "none"]
    assert cell["attempts"][1] == {"first_path": None, "first_ping_s": None, "final_path": None,
                                   "direct_s": None, "error": None, "label": "none"}


def test_all_pairs_are_the_unordered_pairs_with_the_diagonal() -> None:
    pairs = all_pairs()
    assert len(pairs) == len(KINDS) * (len(KINDS) + 1) // 2
    assert ("port-preserving", "cgn") in pairs and ("cgn", "port-preserving") not in pairs
    assert ("udp-blocked", "udp-blocked") in pairs


def test_pairs_are_checked_by_name() -> None:
    assert parse_pair("random-ports:port-preserving") == ("random-ports", "port-preserving")
    with pytest.raises(ValueError, match="KIND:KIND"):
        parse_pair("random-ports")
    with pytest.raises(ValueError, match="unknown kind 'symmetric'"):
        parse_pair("port-preserving:symmetric")
    assert parse_args(["--pairs", "cgn:cgn", "--runs", "20"]).pairs == [("cgn", "cgn")]
    with pytest.raises(SystemExit):
        parse_args(["--pairs", "cgn:nope"])


def test_the_log_level_is_info_unless_asked_and_only_a_known_one() -> None:
    assert parse_args([]).log_level == "info"
    assert parse_args(["--log-level", "debug"]).log_level == "debug"
    with pytest.raises(SystemExit):
        parse_args(["--log-level", "verbose"])


def test_the_log_level_reaches_every_attempt_and_every_program(monkeypatch, tmp_path) -> None:
    asked = []
    monkeypatch.setattr("meshvpn.bench.matrix.attempt", lambda *args: asked.append(args[-1]) or Attempt())
    run_cells(parse_args(["--pairs", "cgn:cgn", "--vpns", "meshvpn", "--log-level", "debug"]), tmp_path, [])
    assert asked == ["debug"]

    class Started(Exception):
        pass

    def mesh(*args, **options):
        asked.append(options["log_level"])
        raise Started
    monkeypatch.setattr("meshvpn.bench.matrix.Mesh", mesh)
    with pytest.raises(Started):
        run_meshvpn(SimpleNamespace(host=str, ipv6=False), tmp_path, 1.0, log_level="warning")
    assert asked[-1] == "warning"
    assert _nebula_config(tmp_path, "a1", 1, "100.81.0.1", log_level="error")["logging"]["level"] == "error"


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_parse_pair_accepts_only_two_known_kinds(text: str) -> None:
    try:
        a, b = parse_pair(text)
    except ValueError:
        return
    assert f"{a}:{b}" == text


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watch_records_the_first_reply_and_stops_at_the_first_peer_to_peer_one(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr("meshvpn.bench.matrix.time.monotonic", clock)
    replies = iter([False, True, True, None, True, True])
    paths = iter(["relay", None, "relay", "direct"])

    def ping() -> bool:
        clock.now += 0.5
        return next(replies) is True

    result = watch(0.0, 10.0, ping, lambda: next(paths))
    assert result == Attempt(first_path="relay", first_ping_s=1.0, final_path="direct", direct_s=3.0)


def test_watch_gives_up_at_the_deadline(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr("meshvpn.bench.matrix.time.monotonic", clock)

    def ping() -> bool:
        clock.now += 1.0
        return clock.now >= 3.0

    result = watch(0.0, 5.0, ping, lambda: "relay")
    assert result == Attempt(first_path="relay", first_ping_s=3.0, final_path="relay")
