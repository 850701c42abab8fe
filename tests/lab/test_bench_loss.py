"""The bench's --loss: single datagrams dropped at random on the a-b link, both directions."""

from __future__ import annotations

import pytest

from meshvpn.bench.loss import apply_loss, loss_drops
from meshvpn.bench.peers import B_ADDR, BenchLab, build_net

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]


def test_loss_drops_a_share_of_single_datagrams_each_way():
    with BenchLab() as lab:
        net = build_net(lab)
        apply_loss(net, 30.0)
        for ns, dev in ((net.a, "veth-ab"), (net.b, "veth-ba")):
            assert "gso_max_segs 1 " in ns.run(["ip", "-d", "link", "show", dev]).stdout
        done = net.a.run(["ping", "-q", "-n", "-c", "60", "-i", "0.01", "-W", "0.5", B_ADDR], check=False)
        received = int(done.stdout.split(" received")[0].rsplit(" ", 1)[-1])
        dropped = loss_drops(net)
        assert 60 - received <= dropped, "every lost ping was dropped by a loss rule"
        assert 5 <= 60 - received <= 50, done.stdout
        assert dropped >= 10, "requests and replies are both dropped, about 30 % of 120 datagrams"
