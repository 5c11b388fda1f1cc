"""The one line that says what went wrong.

Engines and converters bury the cause: onnxruntime wraps it in an error-code prefix, a
file path and a C++ function signature; a converter prints a page of progress and
ends on a generic "convert failed". A candidate's reason in the manifest must be the
first message that names the problem, so that is what these functions extract.
"""

from __future__ import annotations

import re

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_LOAD_PREFIX = re.compile(r"^(Load model from|Exception during loading:|Error in loading model from)\s+\S+\s+failed:\s*")
_SOURCE_LOCATION = re.compile(r"/?\S+\.(cc|cpp|h|hpp|c):\d+\s+(\S+\s+)*?\S+\(.*?\)\s*")
#: terminal colour codes, which converters print around log lines
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: an onnxruntime warning or info record printed inside a converter's own progress line
_ENGINE_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \[[VIW]:onnxruntime:[^\]]*\].*$")
#: MNN's log prefix: "[16:54:12] :220: "
_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*\S*:\d+:\s*")
#: onnxruntime nests a subgraph's failure: "... running If node ... Status Message: <the cause>"
_NESTED = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: ((?:(?!Status Message:).)*)$")
#: lines that wrap or announce a failure without saying what it is
_WRAPPERS = [re.compile(p, re.IGNORECASE) for p in (
    r"^Check '.*' failed at \S+:\d+:?$", r"^(\w+Error: )?Exception from \S+:\d+:?$",
    r"^FrontEnd API failed with \w+:?$", r"^Model wasn't fully converted",
    r"^While validating ONNX node ", r"^\[ONNX Frontend\] Conversion failed for ", r"^-- \S+ with a message:$",
    r"^Summary:$", r"^-- Conversion is failed for:", r"^traceback", r"^(error|failed|fail|exception)[.:!]?$",
    r"^\[?error\]?:?\s*convert.*failed", r"^convert(ed|ing)? failed")]
_FAILURE = re.compile(r"error|fail|unsupported|not support|not implemented|invalid|cannot|can't|unknown|"
                      r"mismatch|must|expect|has to|segmentation|abort|exception|missing|only", re.IGNORECASE)
_SUMMARY = re.compile(r"^-- Conversion is failed for:\s*(.*)$")


def clean(line: str) -> str:
    """One message without the wrapping engines put around it."""
    line = _ENGINE_LOG.sub("", _ANSI.sub("", line)).strip()
    line = _LOG_PREFIX.sub("", line)
    line = _ORT_PREFIX.sub("", line)
    line = _LOAD_PREFIX.sub("", line)
    line = _SOURCE_LOCATION.sub("", line)
    nested = _NESTED.search(line)
    if nested:
        op, node, message = nested.groups()
        line = f"{op} node {node!r}: {message.strip()}"
    return " ".join(line.split())


def root_cause(text: str, limit: int = 300) -> str:
    """The first line of ``text`` that names a problem (the root cause), cleaned; else
    its last non-empty line. Stack-trace frames and wrapper lines are skipped; a
    converter's list of the operators it could not convert is kept alongside."""
    raw = [line.strip() for line in text.splitlines() if line.strip()]
    summary = next((m.group(1) for m in map(_SUMMARY.match, raw) if m), None)
    lines = [clean(line) for line in raw]
    lines = [line for line in lines if line and not line.startswith(("File \"", "at ", "^", "~"))
             and not any(w.search(line) for w in _WRAPPERS)]
    if not lines:
        lines = [clean(raw[-1])] if raw else ["no message"]
    chosen = next((line for line in lines if _FAILURE.search(line)), lines[0])
    if summary:
        chosen += f" (operators not converted: {summary})"
    return chosen if len(chosen) <= limit else chosen[: limit - 1] + "…"


def names_a_problem(line: str) -> bool:
    """Whether a message says what went wrong (rather than what the tool was doing)."""
    return bool(_FAILURE.search(line))


def exception_cause(exc: BaseException) -> str:
    """``root_cause`` of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return root_cause(text) if text else type(exc).__name__
