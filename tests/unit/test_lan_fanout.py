"""Fan-out under the per-node rate limit: whole packets or nothing, drops counted by reason."""

from meshvpn.config import FanoutConfig
from meshvpn.lan.fanout import NO_RECIPIENTS, RATE_BYTES, RATE_PACKETS, Fanout, TokenBucket

PEERS = ["alice", "bob", "carol", "dave"]


def test_bucket_starts_full_refills_at_its_rate_and_caps_at_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    assert bucket.tokens == 20.0
    bucket.take(20.0)
    bucket.refill(0.5)
    assert bucket.tokens == 5.0
    bucket.refill(100.0)
    assert bucket.tokens == 20.0
    bucket.refill(50.0)  # time never runs backwards for a bucket
    assert bucket.tokens == 20.0


def test_a_packet_goes_to_every_recipient_or_to_none() -> None:
    fanout = Fanout(FanoutConfig(packets_per_second=10, bytes_per_second=10**6, burst=1.0), now=0.0)
    assert fanout.admit(100, PEERS, 0.0) == PEERS
    assert fanout.admit(100, PEERS, 0.0) == PEERS
    assert fanout.admit(100, PEERS, 0.0) == ()  # 8 copies spent, 4 more do not fit in 10
    assert fanout.dropped == {RATE_PACKETS: 1}
    assert fanout.admit(100, PEERS[:2], 0.0) == PEERS[:2]
    assert fanout.admit(100, PEERS, 0.2) == ()   # 0 + 2 tokens
    assert fanout.admit(100, PEERS, 0.4) == PEERS
    assert (fanout.sent_packets, fanout.sent_copies) == (4, 14)


def test_the_byte_budget_counts_every_copy() -> None:
    fanout = Fanout(FanoutConfig(packets_per_second=1000, bytes_per_second=4000, burst=1.0), now=0.0)
    assert fanout.admit(1000, PEERS, 0.0) == PEERS
    assert fanout.admit(1000, PEERS[:1], 0.0) == ()
    assert fanout.dropped == {RATE_BYTES: 1}
    assert fanout.admit(1000, PEERS[:1], 0.25) == PEERS[:1]


def test_nothing_to_send_is_counted_apart() -> None:
    fanout = Fanout(FanoutConfig(), now=0.0)
    assert fanout.admit(100, [], 0.0) == ()
    assert fanout.dropped == {NO_RECIPIENTS: 1} and fanout.packets.tokens == 500


def test_a_storm_at_ten_times_the_limit_sends_the_limit() -> None:
    """Ten seconds of 1000-byte broadcasts to 4 peers at 10x the copy budget, in 1 ms steps."""
    limits = FanoutConfig(packets_per_second=200, bytes_per_second=10**7, burst=0.5)
    fanout = Fanout(limits, now=0.0)
    offered = 500  # packets per second, 2000 copies per second
    for step in range(10 * offered):
        fanout.admit(1000, PEERS, step / offered)
    expected = (10 * 200 + 100) / 4  # ten seconds of budget plus the initial burst, in whole fan-outs
    assert abs(fanout.sent_packets - expected) <= 1
    assert fanout.dropped[RATE_PACKETS] == 10 * offered - fanout.sent_packets
