"""The relay hop bench end to end, briefly: a relay process, two registered sockets, both ping-pongs."""

import time

from meshvpn.bench.relay_hop import one_round
from meshvpn.relay import native


def test_a_round_measures_the_relayed_and_the_direct_round_trip(tmp_path):
    (relayed, relayed90), (direct, direct90) = one_round(tmp_path, not native.available(time.time), 50)
    assert 0 < direct <= direct90 and 0 < relayed <= relayed90
    assert relayed > direct, "through the relay is two more hops and the relay's work"
