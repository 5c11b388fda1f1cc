"""Typed records read from JSON, checked field by field: the manifest, the run summary.

What crosses a machine (a package from a host, a summary from last night's run) is
read through a dataclass definition: ``parse`` builds it from JSON or raises
SchemaError naming the key path; ``tables`` documents it. Standard library only and
no evaluated ``X | Y`` annotations in this file, so the runtime can use it on a device;
definitions elsewhere may use ``X | None`` where Python is 3.10 or later.
"""

import dataclasses
import types
from dataclasses import field
from typing import Any, Dict, List, Union, get_args, get_origin, get_type_hints

_UNIONS = (Union, getattr(types, "UnionType", Union))


class SchemaError(ValueError):
    """A record that does not follow its definition: ``where`` is the key path."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def documented(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its meaning, for the generated tables."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    if default is not dataclasses.MISSING:
        return field(default=default, metadata={"doc": text})
    return field(metadata={"doc": text})


def _required(item: "dataclasses.Field[Any]") -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def parse(kind: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type ``kind`` (dataclasses built field by field)."""
    if kind is Any:
        return value
    origin, args = get_origin(kind), get_args(kind)
    if origin in _UNIONS:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return parse(option, value, where)
            except SchemaError:
                continue
        return parse(options[-1], value, where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {type(value).__name__}")
        hints = get_type_hints(kind)
        found = {}
        for item in dataclasses.fields(kind):
            if item.name in value:
                found[item.name] = parse(hints[item.name], value[item.name], f"{where}.{item.name}")
            elif _required(item):
                raise SchemaError(f"{where}.{item.name}", "missing")
        return kind(**found)
    if origin in (list, List):
        if not isinstance(value, list):
            raise SchemaError(where, f"expected a list, got {type(value).__name__}")
        return [parse(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise SchemaError(where, f"expected an object, got {type(value).__name__}")
        return {k: parse(args[1], v, f"{where}.{k}") for k, v in value.items()}
    wanted = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}[kind]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, wanted):
        raise SchemaError(where, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def type_name(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin in _UNIONS:
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin in (list, List):
        return f"list of {type_name(args[0])}"
    if origin in (dict, Dict):
        return f"object of {type_name(args[1])}"
    if kind is Any:
        return "any"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(kind, getattr(kind, "__name__", str(kind)))


def tables(kinds: List[Any]) -> str:
    """Markdown tables of dataclass definitions: key, type, required, meaning."""
    sections = []
    for kind in kinds:
        hints = get_type_hints(kind)
        rows = ["| key | type | required | meaning |", "|---|---|---|---|"]
        for item in dataclasses.fields(kind):
            rows.append(f"| `{item.name}` | {type_name(hints[item.name])} | {'yes' if _required(item) else 'no'}"
                        f" | {item.metadata['doc']} |")
        sections.append(f"### {kind.__name__}\n\n{kind.__doc__}\n\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"
