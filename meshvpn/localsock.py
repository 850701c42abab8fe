"""Local unix sockets for operator verbs: one JSON request per line, streamed JSON answers.

The node daemon (``meshvpn status``, ``peers``, ``ping``) and the coordination server (``meshvpn
coord nodes ...``) both answer their own command-line verbs this way, so the server, the client
call and their error handling live here once.  The socket is mode 0600, so only its owner may
ask.  The client writes one request object with a ``"cmd"``; the server answers with one or more
response objects, the last of which carries ``"done": true`` (streaming lets ``ping`` print each
reply as it arrives).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import AsyncIterator, Callable, Iterator, Optional

log = logging.getLogger("meshvpn.localsock")

MAX_REQUEST_BYTES = 4096
"""A request is one short JSON line; anything longer is refused."""

CLIENT_TIMEOUT = 10.0
"""Seconds the client waits for any one response line."""

Handler = Callable[[dict], AsyncIterator[dict]]
"""Answers one request with a stream of response objects."""


class ControlServer:
    """Serves control requests on a unix socket owned by the daemon."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        """Create the socket directory and listen; a stale socket file is replaced."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _socket_is_live(self.path):
                raise OSError(f"another daemon is listening on {self.path}")
            os.unlink(self.path)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = _parse_request(line)
            if request is None:
                await _write(writer, {"error": "bad request: expected one JSON object per line", "done": True})
                return
            async for response in self.handler(request):
                await _write(writer, response)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except Exception:
            log.exception("control request failed")
            try:
                await _write(writer, {"error": "internal error (see the daemon log)", "done": True})
            except ConnectionError:
                pass
        finally:
            writer.close()


def _parse_request(line: bytes) -> Optional[dict]:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return request if isinstance(request, dict) and isinstance(request.get("cmd"), str) else None


async def _write(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def _socket_is_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class DaemonNotRunning(Exception):
    """The control socket is missing or nobody listens on it."""


def request(path: str, req: dict, timeout: float = CLIENT_TIMEOUT) -> Iterator[dict]:
    """Send one request and yield response objects until the one marked done."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(f"meshvpn daemon is not running (no control socket at {path})") from exc
        except PermissionError as exc:
            raise DaemonNotRunning(f"permission denied on {path}: run as the daemon's user (root)") from exc
        sock.sendall(json.dumps(req).encode() + b"\n")
        stream = sock.makefile("rb")
        for line in stream:
            response = json.loads(line)
            yield response
            if response.get("done"):
                return
    finally:
        sock.close()


def format_ago(seconds: Optional[float]) -> str:
    """Human age of an event, in the style of ``wg show``: ``-``, ``4s ago``, ``3m ago``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    return f"{int(seconds // 3600)}h ago"
