"""A node's NAT profile taken on the simulated network as the daemon takes it: real STUN, netcheck's verdict.

One socket asks the STUN server, then a relay (which answers Binding requests from the real relay
core, `meshvpn.relay.stunanswer`); fresh sockets then ask the STUN server one after another for the
port allocation. `netcheck.verdict` and `nat_profile` turn what they saw into the profile the node
reports, so a sim pair whose site is probed holds the classification itself to the NAT model.
"""

from __future__ import annotations

from meshvpn.node.natverdict import ALLOCATION_SAMPLES, Observations, nat_profile, verdict
from meshvpn.node.prediction import NatProfile
from meshvpn.sim.clock import Scheduler
from meshvpn.sim.network import Host
from meshvpn.stun import TRANSACTION_ID_SIZE, BindingTransaction, binding_response, is_stun
from meshvpn.wire import Endpoint

ANSWER_WAIT = 0.5
"""Simulated seconds one query may take (the sim's round trips are tens of milliseconds)."""


def answer_stun(data: bytes, src: Endpoint) -> bytes | None:
    """A STUN server's answer to a Binding request, or None for anything else (the sim's STUN host)."""
    if not is_stun(data):
        return None
    reply = binding_response(data, src)
    return None if reply is None else reply.data


def probe_profile(host: Host, scheduler: Scheduler, stun: Endpoint, relay: tuple[str, Endpoint] | None,
                  randbytes) -> NatProfile | None:
    """What `host`'s daemon would report about its NAT, asking `stun` and `relay` (name, endpoint)."""
    obs = Observations(local_ip=host.ip, server=stun, relay=relay)
    first = host.bind(0, None)
    mapped = _ask(first, stun, scheduler, randbytes)
    if mapped is not None:
        obs.mapped["A1P1"] = mapped
        if relay is not None:
            obs.relay_mapped = _ask(first, relay[1], scheduler, randbytes)
    first.close()
    for _ in range(ALLOCATION_SAMPLES):
        sock = host.bind(0, None)
        sample = _ask(sock, stun, scheduler, randbytes)
        if sample is not None:
            obs.samples.append((sock.address[1], sample[1]))
        sock.close()
    return nat_profile(verdict(obs))


def _ask(sock, server: Endpoint, scheduler: Scheduler, randbytes) -> Endpoint | None:
    """One Binding query from `sock`; the mapped endpoint, or None without an answer in `ANSWER_WAIT`."""
    txn = BindingTransaction(randbytes(TRANSACTION_ID_SIZE), scheduler.now)
    sock.on_receive = lambda data, src: txn.receive(data, scheduler.now)
    sock.sendto(txn.request(), server)
    scheduler.run_for(ANSWER_WAIT)
    return None if txn.result is None else Endpoint(*txn.result.mapped)
