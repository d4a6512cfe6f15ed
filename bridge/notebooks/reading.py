"""A notebook as a document: read it, check its kernel, its cell tags and execution metadata,
inject parameters, write it back.

The one place nbformat is called, so the one place its errors become ``InvalidNotebook``.

Reading does not import nbformat when it need not: ``import nbformat`` imports jsonschema, whose
format checkers compile rfc3987_syntax's lark grammar (about a second, paid by every ``pytest
--nb`` run). A notebook that is nbformat 4 and valid against nbformat's own JSON schema for its
minor version (checked with fastjsonschema, which nbformat itself uses by default) is read as
nbformat's v4 reader reads it: multiline strings joined, transient metadata dropped, dicts
with attribute access. Anything else (nbformat 3, a schema error, JSON that is no notebook)
goes through ``nbformat.reads`` as before, so its upgrade, its log line and its errors are
nbformat's. Writing (``--nb-write``) imports nbformat and validates with it.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import InvalidNotebook, InvalidRequest

if TYPE_CHECKING:
    from bridge import AsyncBridge

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"  # papermill's name for the cell it adds

_PYTHON_KERNEL = re.compile(r"python|ipykernel|^py\d*$|[-_]py\d*$|^kernel-bridge$", re.IGNORECASE)


def display_name(path: Path, root: Path | None = None) -> str:
    """*path* relative to *root* (default: the working directory) when it is inside it."""
    root = (root or Path.cwd()).resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def cell_tags(cell: Any) -> set[str]:
    """The tags of *cell* (``metadata.tags``); a malformed list counts as none."""
    tags = cell.get("metadata", {}).get("tags") or []
    return {str(t) for t in tags} if isinstance(tags, list) else set()


class Node(dict[str, Any]):
    """A notebook node: a dict whose keys are also attributes, as nbformat's NotebookNode."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]


def _nodes(value: Any) -> Any:
    """*value* with every dict a ``Node`` (nbformat's ``from_dict``)."""
    if isinstance(value, dict):
        return Node((k, _nodes(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_nodes(v) for v in value]
    return value


def _joined(value: Any) -> Any:
    return (
        "".join(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value)
        else value
    )


def _is_json_mime(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _rejoin_bundle(data: dict[str, Any]) -> None:
    for mime, value in data.items():
        if not _is_json_mime(mime):
            data[mime] = _joined(value)


def _as_read(nb: Any) -> Any:
    """nbformat's v4 reader on a parsed notebook: ``rejoin_lines``, ``strip_transient``."""
    for key in ("orig_nbformat", "orig_nbformat_minor", "signature"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("trusted", None)
        if isinstance(cell.get("source"), list):
            cell.source = "".join(cell.source)
        for attachment in (cell.get("attachments") or {}).values():
            _rejoin_bundle(attachment)
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") in ("execute_result", "display_data"):
                _rejoin_bundle(output.get("data", {}))
            elif output.get("output_type") and isinstance(output.get("text"), list):
                output.text = "".join(output.text)
    return nb


@functools.cache
def _v4_validator(minor: int) -> Callable[[Any], Any] | None:
    """fastjsonschema's check of nbformat's own v4.*minor* schema; None if there is none."""
    spec = importlib.util.find_spec("nbformat")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "v4"
    schema = folder / f"nbformat.v4.{minor}.schema.json"
    if not schema.is_file():
        return None
    import fastjsonschema

    return fastjsonschema.compile(json.loads(schema.read_text(encoding="utf-8")))  # type: ignore[no-any-return]


def _read_fast(text: str) -> Any | None:
    """The notebook in *text* if it is a valid nbformat 4 one, read without nbformat; else None."""
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("nbformat") != 4:
        return None
    minor = raw.get("nbformat_minor")
    if isinstance(minor, bool) or not isinstance(minor, int):
        return None
    validator = _v4_validator(minor)
    if validator is None:
        return None
    try:
        validator(raw)
    except Exception:  # fastjsonschema's JsonSchemaException: nbformat's path says why
        return None
    return _as_read(_nodes(raw))


# nbval's comment markers and tags (nbval/plugin.py 0.11), with nbclient's and nbmake's tags:
# what each says about a code cell. A marker in the source wins over a tag, as in nbval.
_MARKERS = {
    "NBVAL_SKIP": ("skip", True),
    "NBVAL_IGNORE_OUTPUT": ("check", False),
    "PYTEST_VALIDATE_IGNORE_OUTPUT": ("check", False),
    "NBVAL_CHECK_OUTPUT": ("check", True),
    "NBVAL_RAISES_EXCEPTION": ("raises", True),
}
_TAGS = {
    **{name.lower().replace("_", "-"): mark for name, mark in _MARKERS.items()},
    "skip-execution": ("skip", True),
    "raises-exception": ("raises", True),
    "ignore-output": ("check", False),
    INJECTED_TAG: ("check", False),
}


@dataclass(frozen=True)
class CellMarks:
    """What a code cell's tags and nbval comment markers say: not run, run and expected to
    raise, outputs compared (None: as the run decides, all cells or, lax, marked ones only)."""

    skip: bool = False
    raises: bool = False
    check: bool | None = None

    def compared(self, *, lax: bool) -> bool:
        return self.check if self.check is not None else not lax


def cell_marks(cell: Any) -> CellMarks:
    """The ``CellMarks`` of *cell*: its tags, then its ``# NBVAL_...`` comment lines."""
    found: dict[str, bool] = {}
    for tag in sorted(cell_tags(cell)):
        if tag in _TAGS:
            key, value = _TAGS[tag]
            found[key] = value
    source = cell.get("source", "")
    for line in ("".join(source) if isinstance(source, list) else str(source)).splitlines():
        line = line.strip()
        if line.startswith("#"):
            mark = _MARKERS.get(line.lstrip("#").strip())
            if mark is not None:
                found[mark[0]] = mark[1]
    return CellMarks(**found)


def read_notebook(path: str | os.PathLike[str], name: str | None = None) -> Any:
    """The notebook at *path* as nbformat 4 (nbformat 3 is upgraded); InvalidNotebook if it
    is not one."""
    name = name or os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidNotebook(f"no such file: {name}") from None
    except UnicodeDecodeError as exc:
        raise InvalidNotebook(f"{name} is not UTF-8 text: {exc}") from None
    except IsADirectoryError:
        raise InvalidNotebook(f"{name} is a directory, not a notebook") from None
    except OSError as exc:  # no such file, no permission
        raise InvalidNotebook(f"cannot read {name}: {exc.strerror}") from None
    fast = _read_fast(text)
    if fast is not None:
        return fast
    try:
        import nbformat

        return nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:
        # Translated here, the one place a notebook is parsed: nbformat raises NotJSONError,
        # jsonschema's ValidationError, KeyError... for JSON that is not a notebook.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidNotebook(f"{name} is not a notebook nbformat can read: {detail}") from None


def as_outputs(outputs: list[dict[str, Any]]) -> Any:
    """A copy of *outputs* as notebook nodes, as a cell read from a file holds them."""
    return _nodes(copy.deepcopy(outputs))


def write_notebook(nb: Any, path: Path) -> Path:
    """Write *nb* to *path*, checked against the nbformat schema first."""
    import nbformat

    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, os.fspath(path))  # type: ignore[no-untyped-call]
    return path


async def check_kernel(
    bridge: AsyncBridge, nb: Any, name: str, *, kernel: str | None = None
) -> None:
    """Raise InvalidNotebook unless the notebook's kernel is one the bridge provides: Python.

    Any Python kernel name (``python3``, ``conda-env-x-py``...) maps to the bridge's kernel; a
    notebook without a kernel spec runs as Python, as nbclient does. Another name is looked up
    where the bridge's kernels run (``AsyncBridge.kernel_language``). *kernel* (nbval's
    ``--nbval-kernel-name``, nbmake's ``--nbmake-kernel``) replaces the notebook's kernel spec.
    """
    spec = {"name": kernel} if kernel else nb.metadata.get("kernelspec") or {}
    info = {} if kernel else nb.metadata.get("language_info") or {}
    kernel = str(spec.get("name") or "")
    language = str(spec.get("language") or info.get("name") or "")
    label = f"kernel spec {kernel!r}" if kernel else "kernel"
    if language:
        if language.lower() != "python":
            raise InvalidNotebook(
                f"{name} asks for the {label} (language {language}); "
                "kernel-bridge runs Python kernels only"
            )
        return
    if not kernel or _PYTHON_KERNEL.search(kernel):
        return
    installed = await bridge.kernel_language(kernel)
    if installed is None:
        raise InvalidNotebook(
            f"{name} asks for the kernel spec {kernel!r}, which is not installed and does not "
            "name a Python kernel; kernel-bridge runs Python notebooks "
            "(set metadata.kernelspec.name to 'python3')"
        )
    if installed.lower() != "python":
        raise InvalidNotebook(
            f"{name} asks for the kernel spec {kernel!r} (language {installed}); "
            "kernel-bridge runs Python kernels only"
        )


def execution_settings(nb: Any, timeout: float, name: str = "the notebook") -> tuple[float, bool]:
    """(cell timeout, allow errors): nbmake's ``metadata.execution`` overrides the defaults."""
    execution = nb.metadata.get("execution") or {}
    if not isinstance(execution, dict):
        raise InvalidNotebook(f"{name}: metadata.execution must be a mapping")
    seconds = execution.get("timeout")
    if seconds is None:
        seconds = timeout
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InvalidNotebook(
            f"{name}: metadata.execution.timeout must be a positive number, got {seconds!r}"
        )
    return float(seconds), bool(execution.get("allow_errors", False))


def inject_parameters(nb: Any, params: Mapping[str, Any]) -> int | None:
    """Add a cell that sets *params* after the cell tagged ``parameters``, as papermill does.

    Returns the new cell's index, or None when there are no params or no parameters cell.
    """
    if not params:
        return None
    tagged = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and PARAMETERS_TAG in cell_tags(c)
    ]
    if not tagged:
        return None
    index = tagged[0]
    lines = ["# Parameters"]
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidRequest(f"parameter names must be Python names, got {key!r}")
        lines.append(f"{key} = {value!r}")
    source = "\n".join(lines) + "\n"
    # nbformat.v4.new_code_cell's cell, without importing nbformat (see the module's doc).
    new = Node(
        cell_type="code",
        metadata=Node(tags=[INJECTED_TAG]),
        execution_count=None,
        source=source,
        outputs=[],
    )
    if (nb.nbformat, nb.nbformat_minor) >= (4, 5):
        new["id"] = uuid.uuid4().hex[:8]  # cell ids came with nbformat 4.5
    nb.cells.insert(index + 1, new)
    return index + 1
