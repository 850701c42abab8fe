"""The generic reader behind `meshvpn.config`: a YAML file into schema dataclasses, every mistake named.

The schema's field types carry a `Kind` (how a value is read from YAML and shown in docs); the
reader composes the YAML node tree, so every value keeps its line, walks it against the schema
and turns every mistake into a one-line `ConfigError`: `FILE:LINE: KEY.PATH: what is wrong`.
"""

import dataclasses
import difflib
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NoReturn, get_args, get_origin, get_type_hints

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshvpn import keys
from meshvpn.errors import ConfigError


def describe(value: object) -> str:
    """A value as an error message names it: its type and its repr, or nothing."""
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one kind of value is read from YAML and written in docs and example files."""

    name: str
    parse: Callable[[Any, Path], Any]  # (YAML value, config directory) -> value; raises ValueError
    show: Callable[[Any], str] = str


def yaml_key(field: dataclasses.Field) -> str:
    """The key a field is written as in YAML."""
    return field.metadata.get("key") or field.name


def kind_of(hint: Any) -> Kind:
    """How a schema field's value is read and shown, from its type hint."""
    if get_origin(hint) is Annotated:
        return hint.__metadata__[0]
    if get_origin(hint) is Literal:
        choices = get_args(hint)

        def parse(value: object, _directory: Path) -> object:
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}, got {describe(value)}")
            return value

        return Kind("|".join(choices), parse)
    raise TypeError(f"no config kind for {hint!r}")


def load(schema: type, path: Path) -> Any:
    """Read the YAML file `path` into the schema dataclass `schema`; raise ConfigError on any mistake."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {getattr(err, 'strerror', None) or err}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}:1: invalid YAML: nested too deeply") from None
    return _Reader(path).section(schema, root, "", None)


class _Reader:
    """Turns a composed YAML tree into schema dataclasses, failing with the file, line and key."""

    def __init__(self, path: Path):
        self.path = path
        self.directory = path.parent
        self.constructor = SafeConstructor()

    def fail(self, node: Node | None, key: str, message: str) -> NoReturn:
        line = node.start_mark.line + 1 if node is not None else 1
        raise ConfigError(f"{self.path}:{line}: {key or '(top level)'}: {message}")

    def section(self, schema: type, node: Node | None, prefix: str, anchor: Node | None) -> Any:
        """Read a mapping into `schema`; a missing key is reported on the line of `anchor`."""
        if node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            pairs = []
        elif isinstance(node, MappingNode):
            pairs = node.value
        else:
            self.fail(node, prefix, "expected a mapping of keys")
        fields = {yaml_key(field): field for field in dataclasses.fields(schema)}
        hints = get_type_hints(schema, include_extras=True)
        values: dict[str, Any] = {}
        for key_node, value_node in pairs:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            path = _join(prefix, str(key))
            if key not in fields:
                self.fail(key_node, path, f"unknown key{_suggest(str(key), fields)}")
            name = fields[key].name
            if name in values:
                self.fail(key_node, path, "key given twice")
            values[name] = self.value(fields[key], hints[name], value_node, path, key_node)
        for key, field in fields.items():
            if field.name in values:
                continue
            if dataclasses.is_dataclass(hints[field.name]):
                values[field.name] = self.section(hints[field.name], None, _join(prefix, key), anchor)
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                self.fail(anchor, _join(prefix, key), "missing required key")
        result = schema(**values)
        for where, problem in getattr(result, "problems", lambda: ())():
            path = prefix + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in where)
            self.fail(_node_at(node, where) or anchor, path.lstrip("."), problem)
        return result

    def value(self, field: dataclasses.Field, hint: Any, node: Node, path: str, key_node: Node) -> Any:
        if dataclasses.is_dataclass(hint):
            return self.section(hint, node, path, key_node)
        if get_origin(hint) is tuple and dataclasses.is_dataclass(get_args(hint)[0]):
            return self.entries(field, get_args(hint)[0], node, path)
        if get_origin(hint) is tuple:
            return self.scalars(kind_of(get_args(hint)[0]), node, path)
        kind = kind_of(hint)
        if not isinstance(node, ScalarNode):
            self.fail(node, path, f"expected {kind.name}, got a {'list' if isinstance(node, SequenceNode) else 'mapping'}")
        try:
            value = kind.parse(self.constructor.construct_object(node), self.directory)
        except (ValueError, ConfigError, yaml.YAMLError) as err:
            self.fail(node, path, str(err).splitlines()[0] if str(err) else "bad value")
        if field.metadata["secret"] and value:
            problem = keys.exposure(self.path, self.path.stat().st_mode)
            if problem is not None:
                self.fail(node, path, f"holds a secret, but {problem}")
        return value

    def scalars(self, kind: Kind, node: Node, path: str) -> tuple:
        """A list of plain values; a single value stands for a list of one."""
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        items = node.value if isinstance(node, SequenceNode) else [node]
        out = []
        for index, item in enumerate(items):
            where = f"{path}[{index}]" if isinstance(node, SequenceNode) else path
            if not isinstance(item, ScalarNode):
                self.fail(item, where, f"expected {kind.name}")
            try:
                out.append(kind.parse(self.constructor.construct_object(item), self.directory))
            except (ValueError, ConfigError, yaml.YAMLError) as err:
                self.fail(item, where, str(err).splitlines()[0] if str(err) else "bad value")
        return tuple(out)

    def entries(self, field: dataclasses.Field, schema: type, node: Node, path: str) -> tuple:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        if not isinstance(node, SequenceNode):
            self.fail(node, path, "expected a list")
        entries = tuple(self.section(schema, item, f"{path}[{index}]", item) for index, item in enumerate(node.value))
        unique = field.metadata["unique"]
        seen: set[Any] = set()
        for index, entry in enumerate(entries if unique else ()):
            if getattr(entry, unique) in seen:
                self.fail(node.value[index], f"{path}[{index}].{unique}", f"{getattr(entry, unique)!r} is used twice")
            seen.add(getattr(entry, unique))
        return entries


def _node_at(node: Node | None, where: tuple[str | int, ...]) -> Node | None:
    """The YAML node at a path of keys and list indexes below `node`, or None if it is not written."""
    for part in where:
        if isinstance(part, int) and isinstance(node, SequenceNode) and part < len(node.value):
            node = node.value[part]
        elif isinstance(part, str) and isinstance(node, MappingNode):
            node = next((value for key, value in node.value if getattr(key, "value", None) == part), None)
        else:
            return None
    return node


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _suggest(key: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known keys: {', '.join(known)})"
