"""Compare a cell's fresh outputs with the stored ones by nbval's rules, and show a readable diff.

The verdict is nbval's (``nbval/plugin.py``, ``IPyNbCell.compare_outputs``, 0.11): stream
outputs of one name are merged into one (wherever they are in the cell, ``\r`` and ``\b``
applied), then every output is flattened to keys (a stream's name, each MIME type of
``data``, ``ename`` and ``evalue`` of an error) and each key's values are compared in order;
the order of outputs of different keys does not count. Never compared: execution counts, output
metadata, tracebacks, PNG and JPEG data (a new library version redraws a plot pixel by pixel),
widget model ids. Strings pass through the sanitizers first (the user's; with ``--nb-compare``
also ours for memory addresses and timestamps, which nbval leaves to a sanitizer file).

What a person reads is a unified diff of the two sides, one ``[key]`` header per value.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import InvalidRequest
from bridge.notebooks.reading import cell_marks
from bridge.notebooks.report import CellFailure

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@dataclass(frozen=True)
class Sanitizer:
    """Replace every match of *pattern* with *replacement* before outputs are compared."""

    pattern: re.Pattern[str]
    replacement: str = "<sanitized>"

    @classmethod
    def of(cls, regex: str, replacement: str = "<sanitized>") -> Sanitizer:
        try:
            return cls(re.compile(regex), replacement)
        except re.error as exc:
            raise InvalidRequest(f"bad sanitizer regex {regex!r}: {exc}") from None

    def __call__(self, text: str) -> str:
        return self.pattern.sub(self.replacement, text)


DEFAULT_SANITIZERS = (
    # Memory addresses in reprs: <object at 0x7f3a2c1d0e80>.
    Sanitizer.of(r"\b0x[0-9a-fA-F]{6,16}\b", "0xADDRESS"),
    # Timestamps: 2024-05-01T12:30:45.123+02:00, 2024-05-01 12:30:45, and times of day 12:30:45.
    Sanitizer.of(
        r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?", "TIMESTAMP"
    ),
    Sanitizer.of(r"\b\d{2}:\d{2}:\d{2}(\.\d+)?\b", "TIME"),
)


_SANITIZER_PAIR = re.compile(r"^regex: (.*)$\n^replace: (.*)$", re.MULTILINE)


def read_sanitizer_file(path: str | Path) -> list[Sanitizer]:
    """nbval's sanitizer file: ``regex: ...`` lines, each followed by a ``replace: ...`` line
    (sections in ``[brackets]`` for the reader), read as nbval reads it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read sanitizer file {path}: {exc.strerror}") from None
    pairs = _SANITIZER_PAIR.findall(text)
    if not pairs:
        raise InvalidRequest(
            f"sanitizer file {path} has no 'regex: ...' line followed by a 'replace: ...' line"
        )
    return [Sanitizer.of(regex, replace) for regex, replace in pairs]


def _sanitize(value: Any, sanitizers: Sequence[Sanitizer]) -> Any:
    if not isinstance(value, str):
        return value  # JSON MIME data: compared as data, as nbval does
    for sanitizer in sanitizers:
        value = sanitizer(value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, list):  # multiline strings as stored in .ipynb JSON
        return "".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, sort_keys=True, default=str)


_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)
_BACKSPACE = re.compile("[^\n]\b")  # a backspace character, as in nbval


def coalesce_streams(outputs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stream's outputs as one, where its first one was (nbval's ``coalesce_streams``):
    how a stream is cut into messages, and how two streams interleave, is chance."""
    merged: list[dict[str, Any]] = []
    streams: dict[str, dict[str, Any]] = {}
    for output in outputs:
        if output.get("output_type") != "stream":
            merged.append(output)
            continue
        name = str(output.get("name", "stdout"))
        if name in streams:
            streams[name]["text"] += _text(output.get("text", ""))
        else:
            streams[name] = {**output, "text": _text(output.get("text", ""))}
            merged.append(streams[name])
    for stream in streams.values():
        text = stream["text"]
        while True:  # a character followed by a backspace cancels out
            shorter = _BACKSPACE.sub("", text)
            if len(shorter) == len(text):
                break
            text = shorter
        stream["text"] = _CARRIAGE_RETURN.sub("", text)
    return merged


# nbval's skip_compare: never part of the verdict.
NOT_COMPARED = frozenset(
    {
        "metadata",
        "traceback",
        "prompt_number",
        "output_type",
        "name",
        "execution_count",
        "transient",
        WIDGET_VIEW,
        "image/png",
        "image/jpeg",
    }
)


def comparable(
    outputs: Iterable[dict[str, Any]], sanitizers: Sequence[Sanitizer]
) -> dict[str, list[Any]]:
    """The outputs flattened as nbval flattens them: key -> its values in order."""
    flat: dict[str, list[Any]] = {}
    for output in coalesce_streams(outputs):
        if output.get("output_type") == "stream":
            fields: dict[str, Any] = {str(output.get("name", "stdout")): output.get("text", "")}
        else:
            fields = {}
            for key, value in output.items():
                if key == "data" and isinstance(value, dict):
                    fields.update(value)
                else:
                    fields[key] = value
        for key, value in fields.items():
            if key not in NOT_COMPARED:
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    value = "".join(value)  # multiline text as stored in .ipynb JSON
                flat.setdefault(key, []).append(_sanitize(value, sanitizers))
    return flat


def output_lines(outputs: Iterable[dict[str, Any]], sanitizers: Sequence[Sanitizer]) -> list[str]:
    """The compared part of a cell's outputs as lines: a ``[key]`` header per value, then the
    value's text."""
    lines: list[str] = []
    for key, values in sorted(comparable(outputs, sanitizers).items()):
        for value in values:
            lines.append(f"[{key}]")
            lines.extend(_text(value).splitlines())
    return lines


def diff_outputs(
    stored: Iterable[dict[str, Any]],
    fresh: Iterable[dict[str, Any]],
    sanitizers: Sequence[Sanitizer],
) -> str:
    """A unified diff of the stored and fresh outputs; "" when they match by nbval's rules."""
    stored, fresh = list(stored), list(fresh)
    if comparable(stored, sanitizers) == comparable(fresh, sanitizers):
        return ""
    a, b = output_lines(stored, sanitizers), output_lines(fresh, sanitizers)
    diff = "\n".join(difflib.unified_diff(a, b, "stored", "fresh", lineterm=""))
    return diff or "(the same text, of different types: " + repr(a) + ")"


def compare_outputs(
    stored: Any,
    executed: Any,
    indices: Iterable[int],
    sanitizers: Sequence[Sanitizer],
    *,
    lax: bool = False,
) -> list[CellFailure]:
    """A mismatch for each executed cell whose outputs differ from the stored notebook's.

    Compared: the cells ``cell_marks`` says are (every cell; *lax*: only those marked
    ``NBVAL_CHECK_OUTPUT``/``nbval-check-output``). Cells never run when the notebook was saved
    (no execution count) are not compared, and fail if they have outputs all the same, as in
    nbval. Injected parameters are never compared.
    """
    mismatches = []
    for index in sorted(indices):
        old, new = stored.cells[index], executed.cells[index]
        if not cell_marks(old).compared(lax=lax):
            continue
        if old.get("execution_count") is None:
            if old.get("outputs"):
                headline = f"cells[{index}] was not run when saved but has outputs"
                mismatches.append(_mismatch(index, new, headline, ""))
            continue
        diff = diff_outputs(old.get("outputs", []), new.get("outputs", []), sanitizers)
        if diff:
            headline = f"cells[{index}]: outputs differ from the stored ones"
            mismatches.append(_mismatch(index, new, headline, diff))
    return mismatches


def _mismatch(index: int, cell: Any, headline: str, diff: str) -> CellFailure:
    return CellFailure(
        index=index,
        kind="mismatch",
        headline=headline,
        source=cell.source,
        outputs=cell.outputs,
        execution_count=cell.execution_count,
        diff=diff,
    )
