"""A server verb's start (`meshvpn.service.start_and_serve`): a SIGHUP that comes while the server
starts is applied once it serves, not lost and not fatal.

Real signals to this process, with a handler of the test's own in place so a signal the code
under test does not take is recorded rather than ending the run.  Bounded by a timeout.
"""

import asyncio
import os
import signal

from meshvpn import service


class StartingServer:
    """A server whose start is interrupted by a SIGHUP (a reload asked for as soon as it logged)."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    async def start(self) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.05)
        self.calls.append("started")

    def reload(self, settings) -> None:
        self.calls.append(("reloaded", settings))
        os.kill(os.getpid(), signal.SIGTERM)  # serve_until_stopped's own handler: the run ends

    def status(self) -> str:
        return "serving"

    async def close(self) -> None:
        self.calls.append("closed")


def test_a_sighup_while_the_server_starts_is_applied_once_it_serves():
    calls, stray = [], []
    sent: list[str] = []
    notifier = service.Notifier(send=lambda state: sent.append(state) or True)
    previous = signal.signal(signal.SIGHUP, lambda *_: stray.append("SIGHUP"))
    try:
        asyncio.run(asyncio.wait_for(
            service.start_and_serve(lambda: StartingServer(calls), lambda: "new settings", notifier, 10.0), 5.0))
    except asyncio.TimeoutError:
        pass  # the assertions below say what happened
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert stray == [], "the SIGHUP reached no handler of the server's"
    assert calls == ["started", ("reloaded", "new settings"), "closed"]
    assert "RELOADING=1" in sent and sent[-1] == "STOPPING=1"
