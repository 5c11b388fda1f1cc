"""Engine adapters: one small class per inference engine behind the same two calls.

Each adapter opens one artifact file and runs feeds through it. Engines are imported
lazily so that a package whose engine is missing on the device fails with a message
naming the engine and the pinned requirement, not an ImportError from deep inside.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np


class EngineUnavailable(RuntimeError):
    """The engine a package needs is not installed (or not importable) here."""


class Runner(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRuntimeRunner:
    """Runs ``.onnx`` and ``.ort`` artifacts on onnxruntime's CPU provider.

    ``optimization`` is "disabled" for the reference run (the source model exactly as
    written) and "all" for shipped artifacts, which is what a device would use.
    """

    def __init__(self, path: Path, optimization: str = "all", threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the device
            raise EngineUnavailable(f"onnxruntime is not installed: {exc}") from exc
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, values))


def installed_version(distribution: str) -> str | None:
    """Version of an installed Python distribution, or None if it is absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


#: engine name -> (Python distribution that provides it, runner factory)
ENGINES: dict[str, tuple[str, Any]] = {
    "onnxruntime": ("onnxruntime", OnnxRuntimeRunner),
}


def open_artifact(engine: str, path: Path) -> Runner:
    try:
        _, factory = ENGINES[engine]
    except KeyError:
        raise EngineUnavailable(
            f"engine {engine!r} is not supported by this runtime (known: {', '.join(ENGINES)})"
        ) from None
    return factory(path)
