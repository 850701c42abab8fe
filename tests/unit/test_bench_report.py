"""Bench parsing and table logic: iperf3 JSON, ping summaries, medians, ratios, the table, the JSON."""

import json
import os
import math

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn.bench.memory import memory_kib
from meshvpn.bench.measure import (MeasureError, PingStats, PingTimes, parse_cpu_ticks, parse_iperf3_json, parse_ping,
                                   parse_ping_times, percentile, ping_command)
from meshvpn.bench.report import BASELINE, COLUMNS, MESHVPN, PEER, RowResult, best_peer, render_table, table_rows, to_json, write_json

from fuzzing import mutated

IPERF3_OK = json.dumps({
    "start": {"connected": [{"remote_host": "10.202.0.2"}]},
    "intervals": [],
    "end": {
        "sum_sent": {"bytes": 650_000_000, "bits_per_second": 520_400_000.0, "retransmits": 12},
        "sum_received": {"bytes": 648_000_000, "bits_per_second": 518_123_456.7},
    },
})

IPERF3_REFUSED = '{\n\t"start": {},\n\t"intervals": [],\n\t"end": {},\n\t"error": "unable to connect to server: Connection refused"\n}\n'

PING_OK = """PING 10.202.0.2 (10.202.0.2) 56(84) bytes of data.

--- 10.202.0.2 ping statistics ---
20 packets transmitted, 20 received, 0% packet loss, time 3805ms
rtt min/avg/max/mdev = 0.412/0.537/0.911/0.101 ms
"""

PING_LOSS = """PING 10.201.0.2 (10.201.0.2) 56(84) bytes of data.

--- 10.201.0.2 ping statistics ---
5 packets transmitted, 0 received, 100% packet loss, time 4081ms

"""

PING_BUSYBOX = """--- 10.0.0.2 ping statistics ---
3 packets transmitted, 3 packets received, 0% packet loss
round-trip min/avg/max = 0.1/0.2/0.3 ms
"""


def test_iperf3_receiver_rate_in_mbit() -> None:
    assert parse_iperf3_json(IPERF3_OK) == pytest.approx(518.1234567)


def test_iperf3_error_is_reported() -> None:
    with pytest.raises(MeasureError, match="Connection refused"):
        parse_iperf3_json(IPERF3_REFUSED)


@pytest.mark.parametrize("text", ["", "iperf3: error", "[]", '{"end": {}}', '{"end": {"sum_received": {"bits_per_second": "fast"}}}',
                                  '{"end": {"sum_received": {"bits_per_second": -1}}}',
                                  '{"end": {"sum_received": {"bits_per_second": NaN}}}',
                                  '{"end": {"sum_received": {"bits_per_second": Infinity}}}',
                                  '{"end": {"sum_received": {"bits_per_second": 1%s}}}' % ("0" * 400)])
def test_iperf3_garbage_is_a_measure_error(text: str) -> None:
    with pytest.raises(MeasureError):
        parse_iperf3_json(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
iperf3_reports = st.builds(
    lambda rate, extra: {"end": {"sum_received": {"bits_per_second": rate}}, **extra},
    st.floats(0, 1e12) | st.integers(0, 10**12) | st.floats() | st.integers(-10, 10**400) | json_values,
    st.dictionaries(st.sampled_from(["start", "intervals", "error"]), json_values, max_size=2),
)
"""iperf3 -J documents whose rate may be any JSON value: NaN, Infinity, huge, negative, absent."""


@settings(max_examples=300)
@given(st.text(max_size=200) | json_values.map(json.dumps) | iperf3_reports.map(json.dumps)
       | mutated(iperf3_reports.map(json.dumps), st.text(alphabet="{}[]:,\"0123456789.eE-NaIfinty", max_size=2)))
def test_iperf3_parser_raises_only_measure_error(text: str) -> None:
    try:
        rate = parse_iperf3_json(text)
    except MeasureError:
        event("refused")
        return
    event("parsed")
    assert 0 <= rate < math.inf


def test_ping_summary() -> None:
    assert parse_ping(PING_OK) == PingStats(sent=20, received=20, avg_ms=0.537)


def test_ping_total_loss_has_no_average() -> None:
    assert parse_ping(PING_LOSS) == PingStats(sent=5, received=0, avg_ms=None)


def test_ping_busybox_summary() -> None:
    assert parse_ping(PING_BUSYBOX) == PingStats(sent=3, received=3, avg_ms=0.2)


def test_ping_summary_with_a_garbled_number_is_a_measure_error() -> None:
    with pytest.raises(MeasureError, match="bad numbers"):
        parse_ping(PING_OK.replace("0.537", "0.5.37"))


ping_summaries = st.builds(
    "{} packets transmitted, {} {}received, 0% packet loss\n{} min/avg/max{} = {}/{}/{} ms\n".format,
    st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(["", "packets "]), st.sampled_from(["rtt", "round-trip"]),
    st.sampled_from(["", "/mdev", "/stddev"]), *[st.floats(0, 1e4).map(str)] * 3,
)
"""iputils and busybox summaries: counts, then the RTT line."""


@settings(max_examples=300)
@given(st.text(max_size=300) | ping_summaries | mutated(ping_summaries, st.text(alphabet="0123456789./ \n", max_size=3)))
def test_ping_parser_raises_only_measure_error(text: str) -> None:
    try:
        stats = parse_ping(text)
    except MeasureError:
        event("refused")
        return
    event("parsed" if stats.avg_ms is not None else "parsed without an RTT")
    assert stats.sent >= 0 and stats.received >= 0 and (stats.avg_ms is None or 0 <= stats.avg_ms < math.inf)


def _results() -> list[RowResult]:
    return [
        RowResult("plain veth", BASELINE, [15000.0, 14000.0, 16000.0], idle_p50_ms=0.04, idle_p99_ms=0.0712, mtu=1500),
        RowResult("meshvpn direct", MESHVPN, [300.0, 330.0, 320.0], idle_p50_ms=0.6, idle_p99_ms=4.1, mtu=1380,
                  first_ping_s=1.234, path="lan"),
        RowResult("quicktun", PEER, [640.0, 650.0, 660.0], idle_p50_ms=0.2, idle_p99_ms=0.35, mtu=1500),
        RowResult("wireguard-go", PEER, [500.0, 700.0, 510.0], idle_p50_ms=0.5, idle_p99_ms=0.9, mtu=1420),
        RowResult("nebula", PEER, error="nebula1 in a not within 20s"),
    ]


def test_median_of_runs() -> None:
    results = _results()
    assert [r.throughput for r in results] == [15000.0, 320.0, 650.0, 510.0, None]


def test_best_peer_is_the_fastest_peer_row_by_median() -> None:
    # wireguard-go has the single fastest run (700) but quicktun the best median; the baseline is no peer.
    assert best_peer(_results()).name == "quicktun"


def test_no_peer_measured_means_no_ratio() -> None:
    results = [RowResult("plain veth", BASELINE, [100.0]), RowResult("nebula", PEER, error="boom")]
    assert best_peer(results) is None
    assert [row[5] for row in table_rows(results)] == ["-", "-"]
    assert render_table(results).endswith("best peer VPN: none measured")


def test_table_cells() -> None:
    rows = table_rows(_results())
    assert rows[0] == ("plain veth", "15000", "15000 14000 16000", "0.040/0.071", "-", "-", "-", "1500", "23.08x", "")
    assert rows[1] == ("meshvpn direct", "320", "300 330 320", "0.600/4.100", "-", "-", "-", "1380", "0.49x",
                       "first ping 1.23 s, path lan")
    assert rows[2][8] == "1.00x"
    assert rows[4] == ("nebula", "-", "-", "-", "-", "-", "-", "-", "-", "error: nebula1 in a not within 20s")


def test_latency_under_load_cpu_and_memory_have_their_columns() -> None:
    row = RowResult("meshvpn direct", MESHVPN, [3000.0], idle_p50_ms=0.9, loaded_p50_ms=1.234, loaded_p99_ms=8.5,
                    loaded_lost=3, cpu_s_per_gb=2.25, peak_rss_mib=38.6)
    assert table_rows([row])[0][4:7] == ("1.23/8.50", "2.2", "39")
    assert table_rows([row])[0][9] == "3 pings lost under load"


def test_every_reply_time_and_the_percentiles_of_loaded_pings() -> None:
    text = "PING 10.0.0.2 56(84) bytes of data.\n" + "".join(
        f"64 bytes from 10.0.0.2: icmp_seq={i} ttl=64 time={t} ms\n" for i, t in enumerate(["0.3", "0.25", "12", "1"], 1))
    times = parse_ping_times(text + "\n--- 10.0.0.2 ping statistics ---\n4 packets transmitted, 4 received\n")
    assert times == [0.3, 0.25, 12.0, 1.0]
    loaded = PingTimes(5, times)
    assert (loaded.p50, loaded.p99, loaded.lost) == (0.3, 12.0, 1)
    assert percentile([], 0.5) is None and percentile(list(map(float, range(1, 101))), 0.99) == 99.0


def test_idle_pings_are_summed_up_by_median_and_p99_not_moved_by_one_slow_ping() -> None:
    # 120 idle replies: 118 short ones, one ping that waited 4 ms for a CPU and one 9 ms.
    times = [0.15 + i / 10000 for i in range(118)] + [4.0, 9.0]
    idle = PingTimes(121, times)
    assert idle.p50 == pytest.approx(0.1559) and idle.p99 == 4.0 and idle.lost == 1
    assert idle.mean == pytest.approx(sum(times) / 120) and idle.mean > 0.25  # two slow pings move the mean by 0.1 ms
    assert PingTimes(3, []).mean is None and PingTimes(3, []).lost == 3


def test_idle_column_and_lost_idle_pings() -> None:
    row = RowResult("meshvpn direct", MESHVPN, [3000.0], idle_p50_ms=0.1734, idle_p99_ms=0.4119, idle_mean_ms=0.2,
                    idle_lost=2, loaded_p50_ms=0.3, loaded_p99_ms=4.0)
    assert COLUMNS[3:5] == ("idle p50/p99", "load p50/p99")
    assert table_rows([row])[0][3:5] == ("0.173/0.412", "0.30/4.00")
    assert table_rows([row])[0][9] == "2 pings lost idle"
    assert table_rows([RowResult("x", PEER, [1.0], idle_p50_ms=0.2)])[0][3] == "0.200/-"
    assert to_json([row], {}, {})["rows"][0]["idle_mean_ms"] == 0.2


def test_the_ping_command_prints_every_reply() -> None:
    assert ping_command("10.0.0.2", 120, 0.04) == ["ping", "-n", "-c", "120", "-i", "0.04", "-W", "1", "10.0.0.2"]


def test_table_columns_line_up() -> None:
    lines = render_table(_results()).splitlines()
    assert lines[0].startswith("row") and set(lines[1]) == {"-"}
    assert lines[-1] == "best peer VPN: quicktun"
    header, quicktun = lines[0], lines[4]
    assert quicktun.startswith("quicktun")
    assert header.index("vs best VPN") + len("vs best VPN") == quicktun.index("1.00x") + len("1.00x")


def test_json_document(tmp_path) -> None:
    path = tmp_path / "results" / "bench.json"
    write_json(path, to_json(_results(), {"seconds": 10, "runs": 3}, {"cpus": 2}))
    document = json.loads(path.read_text())
    assert document["best_peer"] == "quicktun"
    assert document["settings"] == {"seconds": 10, "runs": 3}
    meshvpn = document["rows"][1]
    assert meshvpn["throughput_median"] == 320.0
    assert meshvpn["ratio_to_best_peer"] == pytest.approx(320 / 650)
    assert meshvpn["first_ping_s"] == 1.234 and meshvpn["path"] == "lan"
    assert document["rows"][4]["error"] and document["rows"][4]["ratio_to_best_peer"] is None


def test_cpu_ticks_of_a_process_whose_name_holds_spaces_and_parentheses() -> None:
    stat = "4242 (python3 (x) y) S 1 4242 4242 0 -1 4194560 2520 0 0 0 1234 567 0 0 20 0 3 0 99 0 0"
    assert parse_cpu_ticks(stat) == 1234 + 567


def test_a_relayed_row_notes_the_relay_cpu_per_gbit() -> None:
    row = RowResult("meshvpn relayed UDP", MESHVPN, [1000.0], path="relay", relay_cpu_s_per_gbit=0.4567)
    assert table_rows([row])[0][9] == "path relay, relay 0.46 CPU s per Gbit"


def test_memory_reads_resident_set_and_peak_of_a_process() -> None:
    figures = memory_kib(os.getpid())
    assert 0 < figures["VmRSS"] <= figures["VmHWM"]
