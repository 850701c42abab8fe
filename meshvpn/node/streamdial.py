"""When and how to (re)connect a stream to a server: backoff, and plain TCP or TLS.

A node falls back to a stream when UDP to a server gets no answer: to a meshvpn relay (its
channel over TCP) or to a TURN server (RFC 8656 over TCP). Some networks then let nothing
through but port 443, or nothing but TLS, so a server may offer a TLS port too. The rule, the
same for both: a stream that fails to connect `attempts_per_kind` times in a row (refused, timed
out, cut before it was up) is tried over the other kind at once, when the server has a TLS port;
any other loss reconnects with the same kind after a doubling backoff.

Sans-IO: the owner asks `due(now)`, says `attempt()` when it asks the shell to connect, and
passes on `up()` and `down(now)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from meshvpn.backoff import doubling


@dataclass
class DialConfig:
    """Reconnection timing; every default is the documented one."""

    backoff_initial: float = 0.5
    """First wait before reconnecting a lost stream; doubles per failure."""
    backoff_max: float = 10.0
    """Longest wait between attempts."""
    attempts_per_kind: int = 1
    """Failed connections in a row before the other kind (plain TCP or TLS) is tried: a blocked
    port costs one connect timeout."""


class StreamDial:
    """The connection state of one stream to one server, and when to try again."""

    def __init__(self, tls_port: Optional[int], config: Optional[DialConfig] = None) -> None:
        self.config = config if config is not None else DialConfig()
        self.tls_port = tls_port
        self.wanted = False
        self.connecting = False
        self.connected = False
        self.tls = False
        """Whether the next (or current) connection is TLS to `tls_port` rather than plain TCP."""
        self.retry_at = 0.0
        self._failures = 0
        self._failed_connects = 0

    def want(self, wanted: bool = True) -> None:
        self.wanted = wanted

    def due(self, now: float) -> bool:
        """Whether the owner should ask the shell to connect now."""
        return self.wanted and not (self.connecting or self.connected) and now >= self.retry_at

    def deadline(self) -> Optional[float]:
        """When `due` next becomes true, if it will."""
        return self.retry_at if self.wanted and not (self.connecting or self.connected) else None

    def attempt(self) -> None:
        """The owner asked the shell to connect; `up` or `down` follows."""
        self.connecting = True

    def up(self) -> None:
        """The stream is established."""
        self.connecting, self.connected = False, True
        self._failures = self._failed_connects = 0

    def down(self, now: float) -> None:
        """The stream failed to connect, or closed: when and how to try again."""
        failed_to_connect = self.connecting
        self.connecting = self.connected = False
        cfg = self.config
        self.retry_at = now + doubling(cfg.backoff_initial, cfg.backoff_max, self._failures)
        self._failures += 1
        if failed_to_connect and self.tls_port is not None:
            self._failed_connects += 1
            if self._failed_connects >= cfg.attempts_per_kind:
                self.tls = not self.tls
                self._failed_connects = 0
                self.retry_at = now

    def port(self, plain_port: int) -> int:
        """The server's port for the next connection."""
        return self.tls_port if self.tls and self.tls_port is not None else plain_port

    @property
    def kind(self) -> str:
        """``tls`` or ``tcp``, for status."""
        return "tls" if self.tls else "tcp"
