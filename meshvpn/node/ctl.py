"""The daemon's local control socket and the client verbs that talk to it.

``meshvpn status``, ``meshvpn peers`` and ``meshvpn ping`` must work without
root-owned state files: they ask the running daemon over a unix socket (mode
0600, so only its owner may ask).  The protocol is newline-delimited JSON: the
client writes one request object, the daemon answers with one or more response
objects, the last of which carries ``"done": true``.  Streaming lets ``ping``
print each reply as it arrives.

Requests: ``{"cmd": "status"}``, ``{"cmd": "peers"}`` and
``{"cmd": "ping", "peer": NAME|IP|KEY, "count": N}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from typing import AsyncIterator, Awaitable, Callable, Iterator, Optional

log = logging.getLogger("meshvpn.node.ctl")

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


def format_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_status(status: dict) -> str:
    """One line for this node, then one line per peer, like ``tailscale status``."""
    me = status["self"]
    lines = [f"{me.get('overlay') or '-':<16} {me['name']:<20} self  coord {me.get('coord', '-')}"]
    for peer in status["peers"]:
        lines.append(
            f"{peer.get('overlay') or '-':<16} {peer['name']:<20} {peer['path']:<6} {peer.get('endpoint') or '-':<22} "
            f"handshake {format_ago(peer.get('last_handshake')):<8} "
            f"rx {format_bytes(peer['rx_bytes'])} tx {format_bytes(peer['tx_bytes'])}"
        )
    return "\n".join(lines)


def format_peers(peers: list) -> str:
    """The peer map as the coord sent it: overlay address, name, key, endpoints."""
    lines = []
    for peer in peers:
        endpoints = ",".join(peer.get("endpoints") or []) or "-"
        lines.append(f"{peer.get('overlay') or '-':<16} {peer['name']:<20} {peer['key']}  {endpoints}")
    return "\n".join(lines) if lines else "(no peers)"


def format_ping(reply: dict) -> str:
    """One line per ping reply, timeout or path change."""
    kind = reply.get("type")
    if kind == "pong":
        return (
            f"pong from {reply['name']} ({reply['overlay']}) via {reply['path']} "
            f"{reply['endpoint']} in {reply['rtt_ms']:.1f} ms"
        )
    if kind == "path":
        return f"path to {reply['name']} changed: {reply['old']} -> {reply['new']}"
    if kind == "timeout":
        return f"timeout waiting for {reply['name']} (seq {reply['seq']})"
    return json.dumps(reply)


def client_main(args) -> int:
    """Entry point of ``meshvpn status``, ``peers`` and ``ping``; returns the exit code."""
    verb = args.command
    path = str(args.socket)
    try:
        if verb == "ping":
            return _ping(path, args)
        responses = list(request(path, {"cmd": verb}))
    except DaemonNotRunning as exc:
        print(f"meshvpn {verb}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"meshvpn {verb}: control socket error: {exc}", file=sys.stderr)
        return 1
    answer = responses[-1] if responses else {"error": "empty answer from the daemon"}
    if "error" in answer:
        print(f"meshvpn {verb}: {answer['error']}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        answer = {key: value for key, value in answer.items() if key != "done"}
        print(json.dumps(answer, indent=2))
    elif verb == "status":
        print(format_status(answer))
    else:
        print(format_peers(answer["peers"]))
    return 0


def _ping(path: str, args) -> int:
    req = {"cmd": "ping", "peer": args.peer, "count": getattr(args, "count", None) or 4}
    replies = 0
    for response in request(path, req):
        if "error" in response:
            print(f"meshvpn ping: {response['error']}", file=sys.stderr)
            return 1
        if response.get("done"):
            break
        replies += response.get("type") == "pong"
        print(format_ping(response), flush=True)
    return 0 if replies else 1
