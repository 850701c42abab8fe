"""docs/quickstart.md stays true: every `meshvpn` command is a real verb with real options, and
every config snippet uses real keys and gives every required one."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshvpn.cli import build_parser
from meshvpn.config import CoordConfig, NodeConfig, RelayConfig
from meshvpn.configdocs import field_docs

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
SCHEMAS = {"node.yaml": NodeConfig, "coord.yaml": CoordConfig, "relay.yaml": RelayConfig}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def commands(text: str) -> list[list[str]]:
    """Every `meshvpn ...` line of a code block (a `$ ` prompt allowed) and every inline one."""
    lines = [line for _, body in FENCE.findall(text) for line in body.splitlines()]
    lines += re.findall(r"`(meshvpn [^`]+)`", FENCE.sub("", text))
    found = []
    for line in lines:
        words = line.removeprefix("$ ").split()
        if words[:1] == ["meshvpn"]:
            found.append(words[1:])
    return found


def verb_path(argv: list[str]) -> list[str]:
    """The leading words of `argv` that name nested sub-commands, as argparse walks them."""
    parser, path = build_parser(), []
    for word in argv:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if word not in choices:
            break
        parser = choices[word]
        path.append(word)
    return path


def snippets(text: str) -> list[tuple[type, dict]]:
    """Each YAML block with the schema of the config file last named before it."""
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) != "yaml":
            continue
        named = re.findall(r"(node|coord|relay)\.yaml", text[: match.start()])
        assert named, "a YAML snippet before any config file is named"
        found.append((SCHEMAS[named[-1] + ".yaml"], yaml.safe_load(match.group(2))))
    return found


def key_paths(value, prefix: str = "") -> set[str]:
    """Leaf keys of a YAML value as config key paths (`networks[].name`)."""
    if isinstance(value, dict):
        return set().union(*(key_paths(v, f"{prefix}{k}.") for k, v in value.items())) if value else {prefix[:-1]}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {prefix[:-1]} | set().union(*(key_paths(item, prefix[:-1] + "[].") for item in value))
    return {prefix[:-1]}


TEXT = QUICKSTART.read_text()
COMMANDS = commands(TEXT)


def test_the_quickstart_shows_the_whole_journey():
    verbs = {" ".join(verb_path(argv)) for argv in COMMANDS}
    assert {"keygen", "coord", "relay", "coord key create", "join", "status", "peers", "ping"} <= verbs
    assert {schema for schema, _ in snippets(TEXT)} == set(SCHEMAS.values())


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv) for argv in COMMANDS])
def test_every_command_is_a_real_verb_with_real_options(argv):
    path = verb_path(argv)
    assert path, f"meshvpn {argv[0]} is not a verb"
    done = subprocess.run([sys.executable, "-m", "meshvpn", *path, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: meshvpn {' '.join(path)}"), done.stderr
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"meshvpn {' '.join(argv)}: arguments refused")


@pytest.mark.parametrize("schema, snippet", snippets(TEXT), ids=lambda value: getattr(value, "__name__", ""))
def test_every_config_snippet_uses_real_keys_and_all_required_ones(schema, snippet):
    docs = field_docs(schema)
    known = {doc.path for doc in docs} | {doc.path.rsplit("[]", 1)[0] for doc in docs if "[]" in doc.path}
    used = key_paths(snippet)
    assert used <= known, f"unknown keys: {sorted(used - known)}"
    required = {doc.path for doc in docs if doc.default is None}
    missing = {path for path in required if "[]" not in path or path.rsplit("[]", 1)[0] in used} - used
    assert not missing, f"required keys missing: {sorted(missing)}"
