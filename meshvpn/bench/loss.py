"""Loss on the bench's a–b link: single datagrams dropped at random, each way (`--loss`)."""

from __future__ import annotations

import re

from meshvpn.bench.peers import BenchNet

LOSS_TABLE = "benchloss"
"""nftables table in `a` and `b` that drops a share of the datagrams arriving over the a–b link."""


def apply_loss(net: BenchNet, percent: float) -> None:
    """Drop `percent` % of the packets crossing the a–b link, each direction, one datagram at a time.

    netem is not used: it is a qdisc, so it sees a UDP GSO send or a TSO burst as one packet and
    would drop up to 64 datagrams at once, a loss pattern TCP recovers from far more easily than
    from the same rate of single losses (and this machine's kernel has no sch_netem). Instead
    each veth sends with `gso_max_segs 1`, so the kernel cuts every burst into datagrams before
    it leaves, and an nftables rule in the receiving namespace drops at random in prerouting,
    before anything else sees the packet. The receiver gets single datagrams (a veth has no GRO),
    for every row alike.
    """
    threshold = round(percent * 100)
    for ns, dev in ((net.a, "veth-ab"), (net.b, "veth-ba")):
        ns.ip("link", "set", dev, "gso_max_segs", "1")
        ns.run(["nft", "-f", "-"], input=(
            f"table inet {LOSS_TABLE} {{\n"
            f"  chain prerouting {{ type filter hook prerouting priority -300; "
            f"iifname \"{dev}\" numgen random mod 10000 < {threshold} counter drop; }}\n"
            "}\n"
        ))


def loss_drops(net: BenchNet) -> int:
    """Packets the loss rules have dropped so far, both directions."""
    total = 0
    for ns in (net.a, net.b):
        listing = ns.run(["nft", "list", "table", "inet", LOSS_TABLE], check=False).stdout
        total += sum(int(word) for word in re.findall(r"counter packets (\d+)", listing))
    return total
