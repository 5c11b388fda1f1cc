"""Loading YAML configuration strictly, with errors that point at the file and key.

PyYAML silently keeps the last of two duplicate keys and pydantic reports errors as
tuples; both are turned here into one line a release engineer can act on, e.g.
``hosts.yaml: hosts[2].slots: must be >= 1 (got 0)``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from collections.abc import Hashable
from typing import Any, TypeVar, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InputError

M = TypeVar("M", bound=BaseModel)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found a {type(key).__name__} as a key; keys are names", key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """A YAML file's data, or one InputError: a FIFO or device is refused before it is
    opened (reading one would block or never end), and so is nesting deeper than a
    parser's stack."""
    try:
        if Path(path).exists() and not Path(path).is_file():
            raise InputError(path, None, "not a regular file")
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise InputError(path, None, "malformed YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise InputError(path, where, f"malformed YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, None, f"malformed YAML: {exc}") from None


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(error: dict[str, Any], model: type[BaseModel]) -> tuple[str, str]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if error["type"] == "extra_forbidden":
        name = str(loc[-1])
        known = _known_keys(model, loc[:-1])
        hint = difflib.get_close_matches(name, known, n=1)
        problem = f"unknown key {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                             f"; known keys: {', '.join(sorted(known))}" if known else "")
        return key_path(loc[:-1]) if loc[:-1] else "(top level)", problem
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] not in ("missing",) and "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return key_path(loc), message


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model at ``loc``, for did-you-mean hints."""
    current: Any = model
    keyed = False  # the next part is a key of a dict of submodels ({output: {atol, rtol}})
    for part in loc:
        if isinstance(part, int):
            continue
        if keyed:
            keyed = False
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        keyed = get_origin(annotation) is dict
        current = next((a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), annotation)
        args = getattr(current, "__args__", None)
        if args:
            current = next((a for a in args if hasattr(a, "model_fields")), current)
    fields = getattr(current, "model_fields", None)
    return [f.alias or name for name, f in fields.items()] if fields else []


def validate(path: Path, data: Any, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Validate parsed YAML against a pydantic model; the first problem becomes an
    :class:`InputError` (with a count of any others)."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        key, problem = _describe(errors[0], model)
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise InputError(path, key, problem) from None
