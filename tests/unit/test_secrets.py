"""Issue 13, finding 9: secrets in config files and the coord's database are kept private.

Each test failed before the fix: configs holding secrets and TURN secret files were read
whatever their mode, and the database followed the umask.
"""

import os
import stat

import pytest

from meshvpn.config import load_coord_config, load_node_config
from meshvpn.coord.server import turn_secrets
from meshvpn.coord.store import SqliteStore
from meshvpn.errors import ConfigError
from meshvpn.keys import write_private_key

NODE = """\
private_key_file: node.key
coord:
  address: 203.0.113.10:7400
  public_key: BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=
  auth_key: mvk-secret
"""
COORD = """\
private_key_file: coord.key
networks:
  - name: home
    cidr: 10.77.0.0/24
turn:
  - name: t1
    address: 203.0.113.30:3478
    {secret}
"""


@pytest.fixture(autouse=True)
def key_files(tmp_path):
    for name in ("node.key", "coord.key"):
        write_private_key(tmp_path / name)


def write(path, text, mode):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_node_config_with_an_auth_key_must_be_private(tmp_path):
    config = write(tmp_path / "node.yaml", NODE, 0o644)
    with pytest.raises(ConfigError) as err:
        load_node_config(config)
    assert str(err.value).startswith(f"{config}:5: coord.auth_key: holds a secret, but {config} is accessible")
    assert "chmod 600" in str(err.value)
    config.chmod(0o600)
    assert load_node_config(config).coord.auth_key == "mvk-secret"


def test_a_node_config_without_a_secret_may_be_readable(tmp_path):
    config = write(tmp_path / "node.yaml", NODE.replace("mvk-secret", '""'), 0o644)
    assert load_node_config(config).coord.auth_key == ""


def test_an_inline_turn_secret_needs_a_private_coord_config(tmp_path):
    config = write(tmp_path / "coord.yaml", COORD.format(secret="secret: s3cret"), 0o640)
    with pytest.raises(ConfigError, match=r"coord.yaml:8: turn\[0\].secret: holds a secret"):
        load_coord_config(config)


def test_a_turn_secret_file_must_be_private(tmp_path):
    write(tmp_path / "t1.secret", "s3cret\n", 0o644)
    config = write(tmp_path / "coord.yaml", COORD.format(secret="secret_file: t1.secret"), 0o644)
    with pytest.raises(ConfigError, match=r"turn\[0\].secret_file: TURN secret file .*t1.secret is accessible"):
        turn_secrets(load_coord_config(config))
    (tmp_path / "t1.secret").chmod(0o600)
    assert turn_secrets(load_coord_config(config))[0].secret == b"s3cret"


def test_the_database_is_created_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = SqliteStore(str(tmp_path / "coord.db"))
        store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "coord.db").stat().st_mode) == 0o600
