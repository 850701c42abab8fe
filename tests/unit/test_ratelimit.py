"""The token bucket and the per-source limiter behind every rate limit, with a plain float clock."""

from meshvpn.ratelimit import SourceLimiter, TokenBucket


def test_a_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert not bucket.full(0.2) and bucket.full(0.5)


def test_a_clock_going_backwards_refills_nothing():
    bucket = TokenBucket(rate=10, burst=1, now=5.0)
    assert bucket.take(5.0) and not bucket.take(4.0) and not bucket.take(5.0)


def test_each_source_and_all_of_them_are_limited():
    limiter = SourceLimiter(rate=1, burst=2, total_rate=10, total_burst=5, now=0.0)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert [limiter.allow(n, 0.0) for n in range(4)] == [True, True, True, False], "the total bucket is empty"
    assert limiter.refused == 2
    assert limiter.allow("a", 1.0)


def test_spoofed_sources_cannot_grow_the_table():
    limiter = SourceLimiter(rate=1, burst=1, total_rate=1e9, total_burst=1e9, now=0.0, max_sources=100)
    for n in range(10_000):
        limiter.allow(n, 0.0)
    assert len(limiter._sources) <= 100


def test_taking_many_is_taking_one_at_a_time():
    one_by_one, at_once = TokenBucket(rate=10, burst=5, now=0.0), TokenBucket(rate=10, burst=5, now=0.0)
    for now, count in ((0.0, 3), (0.0, 4), (0.0, 2), (0.35, 6), (0.35, 0), (2.0, 9)):
        taken = sum(one_by_one.take(now) for _ in range(count))
        assert at_once.take_many(count, now) == taken
        assert at_once.tokens == one_by_one.tokens
