"""The bench's idle pings on a real link: every reply kept, and a tunnel that answers nothing refused."""

from __future__ import annotations

import pytest

from meshvpn.bench.measure import MeasureError, idle_pings
from meshvpn.bench.peers import B_ADDR, BenchLab, build_net

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]


def test_idle_pings_keep_every_reply_and_refuse_silence():
    with BenchLab() as lab:
        net = build_net(lab)
        pings = idle_pings(net.a, B_ADDR, 30)
        assert (pings.sent, len(pings.times_ms), pings.lost) == (30, 30, 0)
        assert 0 < pings.p50 <= pings.p99 <= max(pings.times_ms) and pings.mean is not None
        with pytest.raises(MeasureError, match="no ping reply from 198.51.100.99"):
            idle_pings(net.a, "198.51.100.99", 3)  # on the link, but no host has it
