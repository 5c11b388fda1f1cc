"""What crosses a process or machine boundary inside packaging, defined once.

The controller sends the packager a job and reads back its result (packager/job.py);
the packager runs each compile or measure step in a worker process (packager/worker.py),
because converters and engines can crash, and sends it a request. Each is a dataclass
on the ``Message`` base, checked where it is read: a missing or unknown key is a bug on
one side, or two versions talking, named at once instead of surfacing as a KeyError
deep inside a measurement (``scripts/bench-selection`` sent a stale request for months).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

MESSAGE_VERSION = 1

M = TypeVar("M", bound="Message")


class MessageError(ValueError):
    """A message that does not follow its definition."""


@dataclass
class Message:
    """Base: JSON with the message kind and schema version, every field by name."""

    kind: ClassVar[str] = ""

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "schema_version": MESSAGE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls: type[M], text: str) -> M:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MessageError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.pop("kind", None) != cls.kind:
            raise MessageError(f"not a {cls.kind} message")
        if data.pop("schema_version", None) != MESSAGE_VERSION:
            raise MessageError(f"{cls.kind}: schema_version is not {MESSAGE_VERSION}; controller and packager differ")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise MessageError(f"{cls.kind}: unknown keys {unknown}")
        try:
            return cls.from_fields(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"{cls.kind}: {exc}") from None

    @classmethod
    def from_fields(cls: type[M], data: dict[str, Any]) -> M:
        """The message from its fields; definitions with nested records override it."""
        return cls(**data)


@dataclass
class CompileRequest(Message):
    """Compile one candidate (an acceleration variant's ONNX transform first)."""

    kind: ClassVar[str] = "compile"
    compiler: str
    options: dict[str, Any]
    model: str
    root: str
    target: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    alternate_inputs: list[dict[str, Any]] | None = None
    variant: str | None = None
    calibration: str | None = None


@dataclass
class MeasureRequest(Message):
    """Check one artifact on the golden samples at every size, judge a variant on the
    held-out samples, and benchmark it when ``benchmark`` is given."""

    kind: ClassVar[str] = "measure"
    root: str
    artifact: dict[str, Any]
    #: [{"point", "inputs": {name: path}, "reference": {name: path}}], benchmark size first
    sizes: list[dict[str, Any]]
    #: the accuracy gate (runtime.checks.Tolerance as JSON)
    tolerance: dict[str, Any]
    benchmark: dict[str, Any] | None = None
    variant: str | None = None
    gate: dict[str, Any] | None = None
    evaluation: dict[str, str] | None = None
    metric_file: str | None = None
    tensors: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerResult(Message):
    """A worker's answer: ``error`` when the step failed, else what it found."""

    kind: ClassVar[str] = "worker-result"
    error: str | None = None
    found: dict[str, Any] = field(default_factory=dict)
