"""A relay stream's connection attempts race the relay's addresses, a stagger apart (RFC 8305)."""

import asyncio

import pytest

from meshvpn.node.eyeballs import STAGGER
from meshvpn.node.streamrace import first_connection
from meshvpn.wire import Endpoint

V6, V4 = Endpoint("2001:db8:2::2", 7500), Endpoint("203.0.113.2", 7500)


class Network:
    """connect() as a network behaves: per address, a delay and then a connection or an error;
    None for a blackholed address (the attempt never ends by itself)."""

    def __init__(self, **behaviour):
        self.behaviour = {V6: behaviour.get("v6"), V4: behaviour.get("v4")}
        self.started: dict[Endpoint, float] = {}
        self.cancelled: list[Endpoint] = []
        self.closed: list[str] = []

    async def connect(self, endpoint):
        loop = asyncio.get_running_loop()
        self.started[endpoint] = loop.time()
        outcome = self.behaviour[endpoint]
        try:
            if outcome is None:
                await asyncio.sleep(3600)
            delay, result = outcome
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(endpoint)
            raise
        if isinstance(result, BaseException):
            raise result
        return result


def race(network):
    async def run():
        start = asyncio.get_running_loop().time()
        try:
            won = await first_connection((V6, V4), network.connect, network.closed.append)
        finally:
            network.started = {e: t - start for e, t in network.started.items()}
        return won
    return asyncio.run(run())


def test_a_blackholed_ipv6_address_costs_the_stagger_and_is_abandoned():
    network = Network(v6=None, v4=(0.01, "v4 stream"))
    assert race(network) == ("v4 stream", V4)
    assert network.started[V6] < 0.05 and STAGGER <= network.started[V4] < STAGGER + 0.1
    assert network.cancelled == [V6]


def test_a_refused_ipv6_address_lets_ipv4_start_at_once():
    network = Network(v6=(0.01, ConnectionRefusedError("refused")), v4=(0.01, "v4 stream"))
    assert race(network) == ("v4 stream", V4)
    assert network.started[V4] < STAGGER / 2


def test_ipv6_that_connects_within_the_stagger_is_the_only_attempt():
    network = Network(v6=(0.01, "v6 stream"), v4=(0.01, "v4 stream"))
    assert race(network) == ("v6 stream", V6)
    assert V4 not in network.started


def test_when_both_connect_the_loser_is_closed():
    network = Network(v6=(STAGGER + 0.05, "v6 stream"), v4=(0.05, "v4 stream"))
    won = race(network)
    assert won == ("v6 stream", V6) or won == ("v4 stream", V4)
    loser = V4 if won[1] == V6 else V6
    left_open = loser not in network.cancelled and f"{'v4' if loser == V4 else 'v6'} stream" not in network.closed
    assert not left_open and won[0] not in network.closed


def test_when_every_address_fails_the_last_failure_is_raised():
    network = Network(v6=(0.01, ConnectionRefusedError("v6 refused")), v4=(0.02, TimeoutError("v4 timed out")))
    with pytest.raises(TimeoutError, match="v4 timed out"):
        race(network)


class Cancelled:
    """An attempt that ends with a stream although it was cancelled, as Python 3.11's
    ``asyncio.wait_for`` does when the cancel arrives in the step its awaitable completes (the
    coord link's and the relay streams' handshakes both wait that way): `finish` completes the
    handshake, and a cancel that comes with it is swallowed."""

    def __init__(self) -> None:
        self.handshake: asyncio.Future | None = None
        self.closed: list[str] = []

    async def connect(self, endpoint):
        self.handshake = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.shield(self.handshake)
        except asyncio.CancelledError:
            if self.handshake.done():
                return self.handshake.result()
            raise


def test_a_race_cancelled_as_its_attempt_connects_closes_that_connection():
    """A network change restarts the coord link while its attempt finishes the handshake: the
    connection the cancelled attempt still returns is closed, not left holding the punch port's
    connection to the coord (the next connect from that port would fail with EADDRNOTAVAIL)."""
    network = Cancelled()

    async def run():
        race = asyncio.ensure_future(first_connection((V4,), network.connect, network.closed.append))
        while network.handshake is None:
            await asyncio.sleep(0)
        network.handshake.set_result("v4 stream")
        race.cancel()
        with pytest.raises(asyncio.CancelledError):
            await race
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(run())
    assert network.closed == ["v4 stream"]


def test_a_race_cancelled_while_its_losers_end_closes_the_winner():
    """The race won, and a cancel comes while it waits for the other attempts to end: the winner,
    which nobody receives, is closed."""
    closed: list[str] = []
    ending = asyncio.Event()

    async def connect(endpoint):
        if endpoint == V4:
            await asyncio.sleep(STAGGER + 0.05)
            return "v4 stream"
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ending.set()
            await asyncio.sleep(0.05)  # a loser that takes a moment to end (its socket's close)
            raise

    async def run():
        race = asyncio.ensure_future(first_connection((V6, V4), connect, closed.append))
        await ending.wait()
        race.cancel()
        with pytest.raises(asyncio.CancelledError):
            await race

    asyncio.run(run())
    assert closed == ["v4 stream"]
