"""Console logins, sessions and CSRF tokens with a fake clock and counted randomness."""

import itertools
import os

import pytest

from meshvpn.coord.console.auth import (
    FAILURE_WINDOW, IDLE_LIFETIME, MAX_FAILURES, MAX_LIFETIME, MAX_SESSIONS, Sessions,
)
from meshvpn.coord.console.password import read_password
from meshvpn.errors import ConfigError

counter = itertools.count()


def randbytes(n: int) -> bytes:
    return next(counter).to_bytes(n, "big")


def test_right_password_opens_a_session_with_its_own_csrf_token():
    sessions = Sessions("secret")
    one = sessions.login("127.0.0.1", "secret", 0.0, randbytes)
    two = sessions.login("127.0.0.1", "secret", 0.0, randbytes)
    assert one and two and len({one.id, one.csrf, two.id, two.csrf}) == 4
    assert sessions.get(one.id, 1.0) is one
    assert sessions.authorise(one.id, one.csrf, 1.0) is one


@pytest.mark.parametrize("cookie, csrf", [(None, "own"), ("own", None), ("own", ""), ("own", "other"),
                                          ("other", "own"), ("nonsense", "own")])
def test_a_change_needs_both_the_session_and_its_csrf_token(cookie, csrf):
    sessions = Sessions("secret")
    mine = sessions.login("h", "secret", 0.0, randbytes)
    other = sessions.login("h", "secret", 0.0, randbytes)
    pick = {"own": mine, "other": other}
    session_id = pick[cookie].id if cookie in pick else cookie
    token = pick[csrf].csrf if csrf in pick else csrf
    assert sessions.authorise(session_id, token, 1.0) is None


def test_wrong_passwords_lock_the_host_out_for_a_window_but_not_other_hosts():
    sessions = Sessions("secret")
    for i in range(MAX_FAILURES):
        assert sessions.login("203.0.113.9", "guess", float(i), randbytes) is None
    assert sessions.locked_out("203.0.113.9", MAX_FAILURES)
    assert sessions.login("203.0.113.9", "secret", MAX_FAILURES, randbytes) is None, "locked even when right"
    assert sessions.login("127.0.0.1", "secret", MAX_FAILURES, randbytes) is not None
    later = MAX_FAILURES + FAILURE_WINDOW
    assert not sessions.locked_out("203.0.113.9", later)
    assert sessions.login("203.0.113.9", "secret", later, randbytes) is not None


def test_sessions_end_when_idle_too_long_after_their_lifetime_and_at_logout():
    sessions = Sessions("secret")
    idle = sessions.login("h", "secret", 0.0, randbytes)
    assert sessions.get(idle.id, IDLE_LIFETIME - 1) is idle
    assert sessions.get(idle.id, 2 * IDLE_LIFETIME - 1) is None
    busy = sessions.login("h", "secret", 0.0, randbytes)
    for now in range(0, int(MAX_LIFETIME), int(IDLE_LIFETIME) // 2):
        assert sessions.get(busy.id, float(now)) is busy
    assert sessions.get(busy.id, MAX_LIFETIME) is None
    gone = sessions.login("h", "secret", 0.0, randbytes)
    sessions.logout(gone.id)
    assert sessions.authorise(gone.id, gone.csrf, 0.0) is None


def test_too_many_sessions_push_out_the_least_recently_used():
    sessions = Sessions("secret")
    first = sessions.login("h", "secret", 0.0, randbytes)
    rest = [sessions.login("h", "secret", 1.0, randbytes) for _ in range(MAX_SESSIONS - 1)]
    assert sessions.get(first.id, 2.0) is first
    sessions.login("h", "secret", 3.0, randbytes)
    assert sessions.get(first.id, 3.0) is first, "used last, so kept"
    assert sessions.get(rest[0].id, 3.0) is None


def test_empty_password_is_refused():
    with pytest.raises(ValueError):
        Sessions("")


def test_missing_password_file_is_created_private_with_a_random_password(tmp_path):
    path = tmp_path / "console.password"
    password = read_password(path, os.urandom)
    assert len(password) == 24 and path.read_text() == password + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_password(path, os.urandom) == password


def test_password_file_open_to_others_or_empty_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "console.password"
    path.write_text("hunter2\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"console.password_file: .* \(mode 0644\); run: chmod 600"):
        read_password(path, os.urandom)
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_password(path, os.urandom)
    with pytest.raises(ConfigError, match="cannot create"):
        read_password(tmp_path / "missing" / "console.password", os.urandom)
