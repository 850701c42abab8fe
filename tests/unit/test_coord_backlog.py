"""The fan-out waits while slowly reading nodes hold a budget of queued bytes, but not behind
nodes that stopped reading (`meshvpn.coord.backlog`)."""

from meshvpn.coord.backlog import STUCK, WriteBacklog


class Transport:
    def __init__(self, queued: int) -> None:
        self.queued = queued

    def get_write_buffer_size(self) -> int:
        return self.queued


class Conn:
    def __init__(self, queued: int) -> None:
        self.transport = Transport(queued)


def test_rounds_wait_while_slow_readers_hold_the_budget_and_go_on_as_they_drain():
    backlog = WriteBacklog(1000)
    slow, slower = Conn(600), Conn(500)
    assert not backlog.full(0.0)
    backlog.paused(slow, 0.0)
    assert not backlog.full(1.0) and backlog.queued(1.0) == 600
    backlog.paused(slower, 1.0)
    assert backlog.full(2.0) and backlog.waits == 1
    slow.transport.queued = 300  # drained some, still above its high-water mark
    assert not backlog.full(2.5)
    slow.transport.queued = 900
    backlog.resumed(slow)
    assert not backlog.full(3.0) and backlog.queued(3.0) == 500


def test_a_node_that_stopped_reading_holds_the_fan_out_back_only_for_a_while():
    backlog = WriteBacklog(1000)
    stuck = Conn(4 << 20)
    backlog.paused(stuck, 0.0)
    backlog.paused(stuck, 5.0)  # paused again without resuming: still since 0
    assert backlog.full(STUCK - 0.1)
    assert not backlog.full(STUCK) and backlog.queued(STUCK) == 0


def test_a_node_that_reads_slowly_keeps_counting_however_long_its_queue_stays_high():
    backlog = WriteBacklog(1000)
    slow = Conn(3000)
    backlog.paused(slow, 0.0)
    assert backlog.full(STUCK - 1)
    slow.transport.queued = 2500  # it read some
    assert backlog.full(STUCK - 0.5) and backlog.full(2 * STUCK - 0.6)
    assert not backlog.full(2 * STUCK - 0.5)  # nothing read for STUCK seconds
    slow.transport.queued = 2000
    assert backlog.full(3 * STUCK)  # reading again: counts again
    slow.transport.queued = 2600  # a round written to it is no sign of reading
    assert backlog.full(4 * STUCK - 0.1) and not backlog.full(4 * STUCK)
