"""The console password file: read it, or make it with a random password on first start.

The file is as secret as the admin socket: a password readable by other users is refused, as ssh
refuses a private key others can read, with a line that says how to fix it.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path
from typing import Callable

from meshvpn.errors import ConfigError

PASSWORD_BYTES = 18
"""Random bytes of a generated password: 24 characters of base64url."""
KEY = "console.password_file"

log = logging.getLogger("meshvpn.coord.console")


def read_password(path: Path, randbytes: Callable[[int], bytes]) -> str:
    """The password on the file's first line; a new random one is written (mode 0600) if there is no file."""
    try:
        _create(path, randbytes)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{KEY}: cannot create {path}: {exc}") from None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{KEY}: {path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
                              f"run: chmod 600 {path}")
        password = next(iter(path.read_text().splitlines()), "").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{KEY}: cannot read {path}: {exc}") from None
    if not password:
        raise ConfigError(f"{KEY}: {path} is empty: put the password on its first line, or delete the file "
                          "and a random one is written at the next start")
    return password


def _create(path: Path, randbytes: Callable[[int], bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.urlsafe_b64encode(randbytes(PASSWORD_BYTES)).decode() + "\n")
    log.warning("console password written to %s: read it there (as root) to log in", path)
