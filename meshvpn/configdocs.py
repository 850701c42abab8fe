"""What every config key means, for docs, example files and the tests that check they agree.

`field_docs` walks a schema from `meshvpn.config` (its dataclasses, their fields' kinds as
`meshvpn.configreader` reads them, and `option` metadata) into one `KeyDoc` per leaf key, in file order.
"""

import dataclasses
from typing import get_args, get_origin, get_type_hints

from meshvpn.configreader import kind_of, yaml_key


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key as documented: where it is, what it holds, its default and reload behaviour."""

    path: str  # dotted; entries of a list as `networks[].name`
    kind: str
    default: str | None  # as written in YAML; None when the key is required
    doc: str
    live: bool


def field_docs(schema: type) -> list[KeyDoc]:
    """Every leaf key of a config schema, in file order, for docs, examples and their tests."""
    return list(_walk_docs(schema, ""))


def _walk_docs(schema: type, prefix: str, live_section: bool = False):
    hints = get_type_hints(schema, include_extras=True)
    for field in dataclasses.fields(schema):
        path, hint = prefix + yaml_key(field), hints[field.name]
        live = live_section or field.metadata["live"]
        if dataclasses.is_dataclass(hint):
            yield from _walk_docs(hint, path + ".", live)
            continue
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if get_origin(hint) is tuple and dataclasses.is_dataclass(get_args(hint)[0]):
            yield KeyDoc(path, "list", None if required else "[]", field.metadata["doc"], live)
            yield from _walk_docs(get_args(hint)[0], path + "[].", live)
            continue
        if get_origin(hint) is tuple:
            default = None if required else "[" + ", ".join(map(kind_of(get_args(hint)[0]).show, field.default)) + "]"
            yield KeyDoc(path, f"list of {kind_of(get_args(hint)[0]).name}", default, field.metadata["doc"], live)
            continue
        kind = kind_of(hint)
        yield KeyDoc(path, kind.name, None if required else kind.show(field.default), field.metadata["doc"], live)
