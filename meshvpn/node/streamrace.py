"""Connect to the first of a server's addresses that answers, a stagger apart (RFC 8305).

The coord link races the coord's addresses (plain, then its TLS port), and a relay's or TURN
server's stream races its addresses over plain TCP and over TLS (`meshvpn.node.streamdial`):
it is wanted exactly when UDP got no answer, often because one family is broken, or because the
network lets only TLS on port 443 out. Trying one attempt after the other would cost a whole
connect timeout per blackholed one, so the attempts overlap (`meshvpn.node.eyeballs`):
the next one starts `STAGGER` after the last while none has connected, at once when one
failed; the first connection wins and the others are closed.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Optional, Sequence, TypeVar

from meshvpn.node.eyeballs import Race
from meshvpn.wire import Endpoint

T = TypeVar("T")


async def race_connections(next_endpoint: Callable[[], Optional[Endpoint]], remaining: Callable[[], bool],
                           connect: Callable[[Endpoint], Awaitable[T]], close: Callable[[T], None],
                           failed: Callable[[Endpoint, BaseException], None]) -> Optional[tuple[T, Endpoint]]:
    """The first of `connect(endpoint)` to succeed, for the endpoints `next_endpoint` hands out
    (None: no more; `remaining` says whether it has more), and its endpoint; None when every one
    failed (each failure told to `failed`, which may raise). The losers are cancelled or, if
    they connected too, closed with `close`."""
    loop = asyncio.get_running_loop()
    race = Race()
    attempts: dict[asyncio.Task, Endpoint] = {}
    won: Optional[tuple[T, Endpoint]] = None
    try:
        while True:
            while race.start_now(loop.time()) and (endpoint := next_endpoint()) is not None:
                attempts[loop.create_task(connect(endpoint))] = endpoint
                race.started(loop.time())
            if not attempts:
                return None
            timer = race.get_timer() if remaining() else None
            done, _ = await asyncio.wait(attempts, timeout=None if timer is None else max(0.0, timer - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                endpoint = attempts.pop(task)
                if task.exception() is None:
                    race.won()
                    won = task.result(), endpoint
                    return won
                failed(endpoint, task.exception())
                race.failed(loop.time())
    finally:
        await _end(attempts, close, won)


async def _end(attempts: dict[asyncio.Task, Endpoint], close: Callable[[T], None],
               won: Optional[tuple[T, Endpoint]]) -> None:
    """End the race's other attempts. Each one's connection is closed whenever it comes: an attempt
    may connect although it was cancelled (3.11's ``asyncio.wait_for`` drops a cancel that arrives
    as its awaitable completes), and a connection left open keeps its ports, so the next connect
    from the same local port to the same address fails (EADDRNOTAVAIL). If the race itself is
    cancelled while it waits for them, the winner, which nobody receives then, is closed too."""
    def close_connected(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is None:
            close(task.result())

    for task in attempts:
        task.add_done_callback(close_connected)
        task.cancel()
    try:
        if attempts:
            await asyncio.wait(attempts)
    except BaseException:
        if won is not None:
            close(won[0])
        raise


async def first_connection(endpoints: Sequence[Endpoint], connect: Callable[[Endpoint], Awaitable[T]],
                           close: Callable[[T], None]) -> tuple[T, Endpoint]:
    """`race_connections` over a fixed list, in its order; raises the last failure when all failed."""
    pending = list(endpoints)
    failures: list[BaseException] = [OSError("no address to connect to")]
    won = await race_connections(lambda: pending.pop(0) if pending else None, lambda: bool(pending), connect,
                                 close, lambda endpoint, exc: failures.append(exc))
    if won is None:
        raise failures[-1]
    return won
