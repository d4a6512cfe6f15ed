"""Compare a cell's fresh outputs with the stored ones, as nbval does, and show a readable diff.

Both sides are turned into lines of text and diffed. Each output becomes a header line
(``[stdout]``, ``[execute_result text/plain]``...) and its sanitized text. What cannot be the
same from run to run is left out or masked: execution counts, output metadata, tracebacks (only
the exception's name and message count), image bytes (only that an image of that type is
there: a new library version redraws a plot pixel by pixel), widget model ids, and whatever the
sanitizers match (memory addresses and timestamps by default, plus the user's regexes).
"""

from __future__ import annotations

import configparser
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import InvalidRequest
from bridge.notebooks.reading import INJECTED_TAG, cell_tags
from bridge.notebooks.report import CellFailure

IGNORE_OUTPUT_TAGS = frozenset({"ignore-output", "nbval-ignore-output"})
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


def read_sanitizer_file(path: str | Path) -> list[Sanitizer]:
    """nbval's sanitizer file: INI sections, each with ``regex:`` and ``replace:``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise InvalidRequest(f"cannot read sanitizer file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise InvalidRequest(f"sanitizer file {path} is not an INI file: {exc}") from None
    out = []
    for name in parser.sections():
        section = parser[name]
        if "regex" not in section:
            raise InvalidRequest(f"sanitizer file {path}: section [{name}] has no regex")
        out.append(Sanitizer.of(section["regex"], section.get("replace", "<sanitized>")))
    return out


def _sanitize(text: str, sanitizers: Sequence[Sanitizer]) -> str:
    for sanitizer in sanitizers:
        text = sanitizer(text)
    return text


def _text(value: Any) -> str:
    if isinstance(value, list):  # multiline strings as stored in .ipynb JSON
        return "".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def _merged_streams(outputs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive stream outputs of one name as one: how they are split is chance."""
    merged: list[dict[str, Any]] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (
            output.get("output_type") == "stream"
            and last is not None
            and last.get("output_type") == "stream"
            and last.get("name") == output.get("name")
        ):
            merged[-1] = {**last, "text": _text(last.get("text", "")) + _text(output.get("text"))}
        else:
            merged.append(dict(output))
    return merged


def output_lines(outputs: Iterable[dict[str, Any]], sanitizers: Sequence[Sanitizer]) -> list[str]:
    """The comparable text of a cell's outputs, one list item per line."""
    lines: list[str] = []

    def add(header: str, text: str = "") -> None:
        lines.append(header)
        if text:
            lines.extend(_sanitize(text, sanitizers).splitlines())

    for output in _merged_streams(outputs):
        kind = output.get("output_type", "")
        if kind == "stream":
            add(f"[{output.get('name', 'stdout')}]", _text(output.get("text", "")))
        elif kind in ("display_data", "execute_result"):
            for mime, value in sorted((output.get("data") or {}).items()):
                if mime.startswith("image/") or mime == WIDGET_VIEW:
                    add(f"[{kind} {mime}]")
                else:
                    add(f"[{kind} {mime}]", _text(value))
        elif kind == "error":
            add("[error]", f"{output.get('ename', '')}: {output.get('evalue', '')}")
        else:
            add(f"[{kind}]")
    return lines


def diff_outputs(
    stored: Iterable[dict[str, Any]],
    fresh: Iterable[dict[str, Any]],
    sanitizers: Sequence[Sanitizer],
) -> str:
    """A unified diff of the stored and fresh outputs; "" when they match."""
    a = output_lines(stored, sanitizers)
    b = output_lines(fresh, sanitizers)
    if a == b:
        return ""
    return "\n".join(difflib.unified_diff(a, b, "stored", "fresh", lineterm=""))


def compare_outputs(
    stored: Any, executed: Any, indices: Iterable[int], sanitizers: Sequence[Sanitizer]
) -> list[CellFailure]:
    """A mismatch for each executed cell whose outputs differ from the stored notebook's.

    Cells never run when the notebook was saved (no execution count, no outputs), injected
    parameters and cells tagged ``ignore-output`` / ``nbval-ignore-output`` are not compared.
    """
    mismatches = []
    for index in sorted(indices):
        old, new = stored.cells[index], executed.cells[index]
        if IGNORE_OUTPUT_TAGS & cell_tags(old) or INJECTED_TAG in cell_tags(old):
            continue
        if old.get("execution_count") is None and not old.get("outputs"):
            continue
        diff = diff_outputs(old.get("outputs", []), new.get("outputs", []), sanitizers)
        if diff:
            mismatches.append(
                CellFailure(
                    index=index,
                    kind="mismatch",
                    headline=f"cells[{index}]: outputs differ from the stored ones",
                    source=new.source,
                    outputs=new.outputs,
                    execution_count=new.execution_count,
                    diff=diff,
                )
            )
    return mismatches
