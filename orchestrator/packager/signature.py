"""Reading and validating an ONNX model file, and its input/output signature.

The controller calls this at the edge (before any host is touched) so that a missing,
non-ONNX or truncated file fails in one line; the packager calls it again on the host
because it must never trust what arrived.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np

from .causes import exception_cause
from .ort_ops import expand_nonstandard


#: how an unnamed dynamic dimension is written; unlike named ones, two of them need not agree
ANONYMOUS = "?"


class ModelError(ValueError):
    """The file is not a usable ONNX model; the message says why."""


class UnrankedInput(ModelError):
    """An input has no shape in the model and the spec's ``shapes`` does not give it."""


def unranked_inputs(model: Any) -> list[str]:
    """The inputs whose type carries no shape at all: onnxruntime runs them at any rank,
    and onnx's checker refuses the model until they have one."""
    return [v.name for v in tensor_inputs(model)
            if v.type.WhichOneof("value") == "tensor_type" and not v.type.tensor_type.HasField("shape")]


def unshaped_outputs(model: Any) -> list[str]:
    """The outputs whose type carries no shape: onnxruntime runs such a model, and onnx's
    checker refuses it."""
    return [v.name for v in model.graph.output
            if v.type.WhichOneof("value") == "tensor_type" and not v.type.tensor_type.HasField("shape")]


def _zipmaps(model: Any) -> list[Any]:
    """The ZipMap nodes whose maps are outputs of the model."""
    outputs = {v.name for v in model.graph.output}
    return [node for node in model.graph.node
            if node.op_type == "ZipMap" and node.domain == "ai.onnx.ml" and node.output[0] in outputs]


def zipmap_outputs(model: Any) -> dict[str, list[Any]]:
    """The outputs a ZipMap makes (scikit-learn classifiers converted by skl2onnx: one
    {class: probability} map per row), each with its classes in column order."""
    return {node.output[0]: next((list(a.ints) or [s.decode() for s in a.strings] for a in node.attribute
                                  if a.name in ("classlabels_int64s", "classlabels_strings")), [])
            for node in _zipmaps(model)}


def write_zipmaps_as_tensors(model: Any) -> list[str]:
    """Return each ZipMap output as the [N, classes] float tensor it is made of, one
    column per class in :func:`zipmap_outputs`' order: a sequence of maps is no tensor,
    which no engine but onnxruntime, no golden file and no gate can hold. The ZipMap
    becomes an Identity. Returns the outputs so written."""
    import onnx

    written = zipmap_outputs(model)
    for node in _zipmaps(model):
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
    for value in model.graph.output:
        if value.name in written:  # ZipMap takes [N, classes]; N is the batch, unnamed as skl2onnx leaves it
            value.type.CopyFrom(onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT,
                                                                   [None, len(written[value.name])]))
    return list(written)


def maps_as_tensors(outputs: Mapping[str, Any], zipmaps: Mapping[str, list[Any]]) -> dict[str, Any]:
    """``outputs`` of the model as it arrived, each ZipMap output as the tensor the
    package gives in its place (see :func:`write_zipmaps_as_tensors`)."""
    return {name: (np.array([[row[label] for label in zipmaps[name]] for row in value], np.float32)
                   .reshape(-1, len(zipmaps[name])) if name in zipmaps else value)
            for name, value in outputs.items()}


def write_output_shapes(model: Any) -> list[str]:
    """Give each output with no shape the one onnx's shape inference finds for it (run
    on a copy, after the inputs have their ranks); returns the outputs given a shape.
    Raises :class:`ModelError` for one whose shape inference cannot find."""
    import onnx

    missing = unshaped_outputs(model)
    if not missing:
        return []
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
    except Exception as exc:  # onnx raises its own errors and plain C++ ones
        raise ModelError(f"output {missing[0]!r} has no shape in the model, and onnx's shape inference failed:"
                         f" {exception_cause(exc)}") from None
    for value in model.graph.output:
        if value.name not in missing:
            continue
        found = inferred.get(value.name)
        if found is None or not found.type.tensor_type.HasField("shape"):
            raise ModelError(f"output {value.name!r} has no shape in the model, and onnx's shape inference cannot"
                             f" find its rank")
        value.type.tensor_type.shape.CopyFrom(found.type.tensor_type.shape)
    return missing


def write_ranks(model: Any, shapes: Mapping[str, Sequence[Any]]) -> list[str]:
    """Give each input with no shape the rank of its entry under ``shapes`` (the sizes a
    user writes there), every dimension dynamic: the sizes themselves are checked and
    ranged like any dynamic dimension's. Returns the inputs given a rank; raises
    :class:`UnrankedInput` for one that ``shapes`` does not give."""
    written = []
    missing = set(unranked_inputs(model))
    for value in tensor_inputs(model):
        if value.name not in missing:
            continue
        if value.name not in shapes:
            raise UnrankedInput(f"input {value.name!r} has no shape in the model, so its rank is unknown (onnxruntime"
                                f" runs it at any rank); give its size under shapes, one entry per axis, e.g."
                                f" shapes: {{{value.name}: [1, 3, 224, 224]}}")
        shape = value.type.tensor_type.shape
        for _ in shapes[value.name]:
            shape.dim.add()
        written.append(value.name)
    return written


def load_onnx(path: Path, shapes: Mapping[str, Sequence[Any]] | None = None) -> Any:
    """Load an ONNX model as standard ONNX and check it, raising :class:`ModelError`.
    What onnxruntime runs but onnx's checker and the converters refuse is written first:
    an input with no shape gets the rank of its entry in ``shapes`` (:func:`write_ranks`),
    an output with no shape the inferred one (:func:`write_output_shapes`), a ZipMap's
    maps the tensor they are made of (:func:`write_zipmaps_as_tensors`), and
    onnxruntime's own operators become standard ones (:mod:`.ort_ops`)."""
    return load_onnx_with_data(path, shapes)[0]


def load_onnx_with_data(path: Path, shapes: Mapping[str, Sequence[Any]] | None = None
                        ) -> tuple[Any, dict[str, Path]]:
    """:func:`load_onnx`, and the external data files the model names (big models keep
    their weights beside the graph: ``location`` relative to the model's folder → file),
    which must travel with it and be part of what identifies it."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelError("file not found" if not path.exists() else "not a regular file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        external = external_data_files(model, path)
        size = _serialized_size(model, external)
        if size > PROTOBUF_LIMIT:
            raise ModelError(f"the model is {size / 1e9:.2f} GB with its external data: modelpack rewrites"
                             f" models as one protobuf, which is limited to 2 GB, so models over 2 GB are not"
                             f" supported yet")
        # onnx refuses a location that is absolute, leaves the folder or passes a link
        onnx.load_external_data_for_model(model, str(path.parent))
    except ModelError:
        raise
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"its external data is refused: {exception_cause(exc)}") from None
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"not a valid ONNX model (cannot parse: {exc})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError("not a valid ONNX model (no graph or opset; truncated or not ONNX?)")
    write_ranks(model, shapes or {})
    try:
        expand_nonstandard(model)
    except ValueError as exc:
        raise ModelError(f"it uses onnxruntime's own operators, which cannot be written as standard ONNX: {exc}"
                         ) from None
    write_zipmaps_as_tensors(model)
    write_output_shapes(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises its own ValidationError and plain C++ errors
        raise ModelError(f"ONNX checker rejected the model: {exception_cause(exc)}") from None
    if not tensor_inputs(model):
        raise ModelError("the model has no inputs")
    return model, external


#: the largest protobuf message: a model must fit in it to be checked, rewritten or saved
PROTOBUF_LIMIT = 2**31 - 1


def _serialized_size(model: Any, files: Mapping[str, Path]) -> int:
    """The size the model will have with its external data inlined, from the graph and
    the lengths its external tensors declare (or their files' sizes, ``files`` as
    :func:`external_data_files` found them): known before a byte of a many-gigabyte
    file is read."""
    size = model.ByteSize()
    for entries in _external_entries(model):
        if "length" in entries:
            size += int(entries["length"])
        else:
            size += files[_location(entries["location"]).as_posix()].stat().st_size - int(entries.get("offset", 0))
    return size


def _external_entries(model: Any) -> list[dict[str, str]]:
    """The external-data entries (location, offset, length) of each tensor kept outside
    the graph."""
    import onnx

    return [{entry.key: entry.value for entry in tensor.external_data} for tensor in _all_tensors(model.graph)
            if tensor.data_location == onnx.TensorProto.EXTERNAL]


def _location(location: str) -> PurePosixPath:
    """An external tensor's file, as a path relative to the model's folder (Windows
    exporters write it with backslashes)."""
    return PurePosixPath(location.replace("\\", "/"))


def external_data_files(model: Any, path: Path) -> dict[str, Path]:
    """The files the model (loaded without its external data) keeps tensors in, by the
    location it names them with. Each must be a regular file in the model's folder or
    below it, named without ``..``, so that it can be placed beside the model on a host."""
    locations = {entries.get("location", "") for entries in _external_entries(model)}
    files = {}
    folder = path.parent.resolve()
    for location in sorted(locations):
        name = _location(location)
        file = folder / name
        if not location or name.is_absolute() or ".." in name.parts or not file.resolve().is_relative_to(folder):
            raise ModelError(f"its external data is refused: location {location!r} is not a file name inside"
                             f" the model's folder")
        if file.is_symlink() or not file.is_file():
            raise ModelError(f"its external data file {location!r} is "
                             + ("a link" if file.is_symlink() else "missing" if not file.exists() else
                                "not a regular file") + f" (beside {path.name})")
        if file.resolve() == path.resolve():
            raise ModelError(f"its external data location {location!r} is the model file itself")
        files[name.as_posix()] = file
    return files


#: operators of a quantised model (QDQ, QOperator, dynamic and integer forms)
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                  "MatMulIntegerToFloat", "QGemm", "QAttention", "MatMulNBits"}


def is_quantized(model: Any) -> bool:
    """Whether the model computes in integers somewhere: its engines then differ from its
    exact semantics by rounding steps of the quantised tensors, not by float noise."""
    return any(node.op_type in _QUANTIZED_OPS or node.op_type.startswith(("QLinear", "DynamicQuantize"))
               for node in all_nodes(model.graph))


def all_graphs(graph: Any) -> list[Any]:
    """A graph and every subgraph it holds (If/Loop/Scan bodies), at any depth."""
    graphs = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                graphs += all_graphs(sub)
    return graphs


def all_nodes(graph: Any) -> list[Any]:
    """Nodes of a graph and of every subgraph it holds."""
    return [node for g in all_graphs(graph) for node in g.node]


def _all_tensors(graph: Any) -> Any:
    """Every tensor of a graph: initializers and node attributes, subgraphs' included."""
    for g in all_graphs(graph):
        yield from g.initializer
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _tensor_spec(value_info: Any) -> dict[str, Any]:
    import onnx

    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(f"{value_info.name!r} is a {kind}; only tensor inputs/outputs are supported")
    tensor = value_info.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    shape: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            shape.append(int(dim.dim_value))
        else:  # named dynamic dimension, or "?" for an anonymous one (some exporters write -1)
            shape.append(dim.dim_param or ANONYMOUS)
    return {"name": value_info.name, "dtype": dtype, "shape": shape}


def tensor_inputs(model: Any) -> list[Any]:
    """Graph inputs that are real inputs (older exporters also list initializers)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def signature(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) as lists of ``{"name", "dtype", "shape"}``; symbolic dims are strings."""
    return (
        [_tensor_spec(i) for i in tensor_inputs(model)],
        [_tensor_spec(o) for o in model.graph.output],
    )


def opsets(model: Any) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
