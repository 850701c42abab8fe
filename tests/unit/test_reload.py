"""SIGHUP reload: generic field-by-field comparison, live callbacks, restart-only keys reported."""

import logging
from pathlib import Path

import pytest

from meshvpn import config, keys
from meshvpn.errors import ConfigError
from meshvpn.reload import ConfigChange, Reloader, config_changes, with_value

COORD_KEY = keys.encode_key(bytes(range(32)))
RELAY_KEY = keys.encode_key(bytes(range(1, 33)))


def node_yaml(keepalive="25s", level="info", port=41641, relay_after="2s") -> str:
    return f"""\
private_key_file: node.key
coord:
  address: 198.51.100.10:7400
  public_key: {COORD_KEY}
listen:
  port: {port}
paths:
  keepalive: {keepalive}
  relay_after: {relay_after}
log:
  level: {level}
"""


def coord_yaml(relays: list[str]) -> str:
    entries = "".join(
        f"  - name: {name}\n    address: 203.0.113.{20 + i}:7500\n    public_key: {RELAY_KEY}\n"
        for i, name in enumerate(relays)
    )
    return "private_key_file: coord.key\nrelays:\n" + (entries or "  []\n")


@pytest.fixture
def load(tmp_path: Path):
    keys.write_private_key(tmp_path / "node.key")
    keys.write_private_key(tmp_path / "coord.key")

    def read(text: str, role: str = "node"):
        path = tmp_path / f"{role}.yaml"
        path.write_text(text)
        return {"node": config.load_node_config, "coord": config.load_coord_config}[role](path)

    return read


@pytest.fixture(autouse=True)
def restore_log_level():
    root = logging.getLogger("meshvpn")
    level = root.level
    yield
    root.setLevel(level)


def test_changes_name_each_leaf_key_with_its_reload_kind(load):
    old = load(node_yaml())
    new = load(node_yaml(keepalive="10s", level="debug", port=5000))
    assert config_changes(old, new) == [
        ConfigChange("listen.port", 41641, 5000, live=False),
        ConfigChange("paths.keepalive", 25.0, 10.0, live=True),
        ConfigChange("log.level", "info", "debug", live=True),
    ]
    assert config_changes(old, load(node_yaml())) == []


def test_a_list_is_one_key_and_its_entries_inherit_live(load):
    old, new = load(coord_yaml(["relay-1"]), "coord"), load(coord_yaml(["relay-1", "relay-2"]), "coord")
    [change] = config_changes(old, new)
    assert (change.key, change.live, len(change.new)) == ("relays", True, 2)


def test_with_value_replaces_one_nested_key_only(load):
    old = load(node_yaml())
    new = with_value(old, "paths.keepalive", 5.0)
    assert new.paths.keepalive == 5.0 and new.paths.relay_after == old.paths.relay_after
    assert old.paths.keepalive == 25.0
    assert with_value(old, "listen", old.listen) == old


def test_live_keys_apply_and_restart_keys_are_named(load, caplog):
    running = load(node_yaml())
    reloader = Reloader(running)
    seen = []
    reloader.on_change("paths.keepalive", lambda s: seen.append((s.paths.keepalive, s.paths.relay_after, s.listen.port)))
    new = load(node_yaml(keepalive="10s", level="debug", port=5000, relay_after="3s"))
    with caplog.at_level(logging.INFO, logger="meshvpn"):
        report = reloader.apply(new)
        assert logging.getLogger("meshvpn").level == logging.DEBUG
    assert seen == [(10.0, 2.0, 41641)], "the callback sees the live change and none of the restart-only ones"
    assert sorted(report.applied) == ["log.level", "paths.keepalive"]
    assert sorted(report.needs_restart) == ["listen.port", "paths.relay_after"]
    assert reloader.settings.paths.keepalive == 10.0 and reloader.settings.listen.port == 41641
    messages = [r.getMessage() for r in caplog.records]
    assert "needs a restart: listen.port" in messages
    assert "needs a restart: paths.relay_after" in messages
    assert any(m.startswith("reloaded: ") and "paths.keepalive=10.0" in m for m in messages)


def test_a_restart_only_change_is_reported_again_until_restart(load):
    reloader = Reloader(load(node_yaml()))
    new = load(node_yaml(port=5000))
    assert reloader.apply(new).needs_restart == ["listen.port"]
    assert reloader.apply(new).needs_restart == ["listen.port"]


def test_a_live_key_without_a_callback_needs_a_restart(load):
    reloader = Reloader(load(node_yaml()))
    report = reloader.apply(load(node_yaml(keepalive="10s")))
    assert report.needs_restart == ["paths.keepalive"] and report.applied == []
    assert reloader.settings.paths.keepalive == 25.0


def test_a_callback_runs_once_per_reload_for_a_section(load):
    reloader = Reloader(load(coord_yaml(["a"]), "coord"))
    calls = []
    reloader.on_change("relays", lambda s: calls.append([r.name for r in s.relays]))
    reloader.apply(load(coord_yaml(["b", "c"]), "coord"))
    reloader.apply(load(coord_yaml(["b", "c"]), "coord"))
    assert calls == [["b", "c"]]


def test_a_failing_callback_keeps_the_old_value(load, caplog):
    reloader = Reloader(load(node_yaml()))

    def refuse(_settings):
        raise ConfigError("paths.keepalive: too short for this network")

    reloader.on_change("paths.keepalive", refuse)
    report = reloader.apply(load(node_yaml(keepalive="1s")))
    assert report.needs_restart == ["paths.keepalive"]
    assert reloader.settings.paths.keepalive == 25.0
    assert "cannot apply paths.keepalive: paths.keepalive: too short for this network" in caplog.text

