"""The coordination server's web console for the host: networks, nodes and their paths, approvals,
revocation, pre-auth keys (docs/console.md).

`auth` decides logins, sessions and CSRF tokens (sans-IO); `pages` renders HTML from the admin
verbs' answers; `password` reads the password file; `web` is the aiohttp shell. aiohttp is an
optional dependency (``pip install meshvpn[console]``), imported only when the console is on.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from meshvpn.config import ConsoleConfig
from meshvpn.errors import MeshError

if TYPE_CHECKING:
    from meshvpn.coord.console.web import Console


async def start_console(settings: ConsoleConfig, answer: Callable[[dict], dict]) -> Console:
    """Serve the console; raise MeshError when it cannot (no aiohttp, bad password file, port taken)."""
    try:
        from meshvpn.coord.console.web import Console
    except ImportError as exc:
        raise MeshError(f"console.enabled: the web console needs aiohttp ({exc}): "
                        "pip install 'meshvpn[console]'") from None
    console = Console(settings, answer, randbytes=os.urandom)
    await console.start()
    return console
