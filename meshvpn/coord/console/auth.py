"""Who may use the web console: password login, sessions and CSRF tokens, without I/O.

Rules:

* One password, compared in constant time. A client host that fails `MAX_FAILURES` times within
  `FAILURE_WINDOW` seconds is refused (even with the right password) until the window has passed.
* A login opens a session: a random id (the HttpOnly, SameSite=Strict cookie) and a random CSRF
  token, both 32 bytes. The id lives only in the cookie, the token only in the forms of pages
  rendered for that session; neither ever appears in a URL.
* A change needs a live session and its CSRF token; anything else changes nothing.
* A session ends at logout, after `IDLE_LIFETIME` seconds unused or `MAX_LIFETIME` after login.
  At most `MAX_SESSIONS` live at once: the least recently used goes first.

`now` is any clock in seconds; randomness comes from the `randbytes` argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable

IDLE_LIFETIME = 2 * 3600.0
MAX_LIFETIME = 12 * 3600.0
MAX_SESSIONS = 32
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
MAX_TRACKED_HOSTS = 1024
"""Client hosts whose failures are remembered; beyond that the oldest are forgotten."""
TOKEN_BYTES = 32


@dataclass
class Session:
    """One logged-in browser."""

    id: str
    csrf: str
    created: float
    used: float
    notice: str = ""
    """One line shown on the next page (what the last action did), then cleared."""

    def take_notice(self) -> str:
        notice, self.notice = self.notice, ""
        return notice


def _digest(password: str) -> bytes:
    """Compared instead of the password itself, so the comparison's time tells nothing of its length."""
    return hashlib.sha256(password.encode()).digest()


def _token(randbytes: Callable[[int], bytes]) -> str:
    return base64.urlsafe_b64encode(randbytes(TOKEN_BYTES)).rstrip(b"=").decode()


class Sessions:
    """The console's logins; see the module docstring for the rules."""

    def __init__(self, password: str) -> None:
        if not password:
            raise ValueError("the console password is empty")
        self._password = _digest(password)
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}

    def login(self, host: str, password: str, now: float, randbytes: Callable[[int], bytes]) -> Session | None:
        """A new session when `password` is right and `host` is not locked out; else None."""
        recent = [t for t in self._failures.get(host, ()) if now - t < FAILURE_WINDOW]
        right = hmac.compare_digest(_digest(password), self._password)
        if len(recent) >= MAX_FAILURES or not right:
            self._failed(host, recent, now)
            return None
        self._failures.pop(host, None)
        self._expire(now)
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.used)
            del self._sessions[oldest.id]
        session = Session(_token(randbytes), _token(randbytes), now, now)
        self._sessions[session.id] = session
        return session

    def locked_out(self, host: str, now: float) -> bool:
        return sum(now - t < FAILURE_WINDOW for t in self._failures.get(host, ())) >= MAX_FAILURES

    def _failed(self, host: str, recent: list[float], now: float) -> None:
        if host not in self._failures and len(self._failures) >= MAX_TRACKED_HOSTS:
            del self._failures[next(iter(self._failures))]
        self._failures[host] = (recent + [now])[-MAX_FAILURES:]

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session of this cookie value, or None; using it keeps it alive."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if now - session.used >= IDLE_LIFETIME or now - session.created >= MAX_LIFETIME:
            del self._sessions[session_id]
            return None
        session.used = now
        return session

    def authorise(self, session_id: str | None, csrf: str | None, now: float) -> Session | None:
        """The session, when a state-changing request carries both its cookie and its CSRF token."""
        session = self.get(session_id, now)
        if session is None or not csrf or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            return None
        return session

    def logout(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    def _expire(self, now: float) -> None:
        for session_id in [s.id for s in self._sessions.values()
                           if now - s.used >= IDLE_LIFETIME or now - s.created >= MAX_LIFETIME]:
            del self._sessions[session_id]
