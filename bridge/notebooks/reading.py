"""A notebook as a document: read it, check its kernel, its cell tags and execution metadata,
inject parameters, write it back.

The one place nbformat is called, so the one place its errors become ``InvalidNotebook``.
nbformat is imported when a notebook is read, not with this module: the pytest plugin reads
its options in every pytest run of a project that has ``--nb`` in its addopts.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
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
    try:
        import nbformat

        return nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:
        # Translated here, the one place a notebook is parsed: nbformat raises NotJSONError,
        # jsonschema's ValidationError, KeyError... for JSON that is not a notebook.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidNotebook(f"{name} is not a notebook nbformat can read: {detail}") from None


def as_outputs(outputs: list[dict[str, Any]]) -> Any:
    """A copy of *outputs* as nbformat nodes, as a cell read from a file holds them."""
    import nbformat

    return nbformat.from_dict(copy.deepcopy(outputs))  # type: ignore[no-untyped-call]


def write_notebook(nb: Any, path: Path) -> Path:
    """Write *nb* to *path*, checked against the nbformat schema first."""
    import nbformat

    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, os.fspath(path))  # type: ignore[no-untyped-call]
    return path


async def check_kernel(bridge: AsyncBridge, nb: Any, name: str) -> None:
    """Raise InvalidNotebook unless the notebook's kernel is one the bridge provides: Python.

    Any Python kernel name (``python3``, ``conda-env-x-py``...) maps to the bridge's kernel; a
    notebook without a kernel spec runs as Python, as nbclient does. Another name is looked up
    where the bridge's kernels run (``AsyncBridge.kernel_language``).
    """
    spec = nb.metadata.get("kernelspec") or {}
    kernel = str(spec.get("name") or "")
    language = str(
        spec.get("language") or (nb.metadata.get("language_info") or {}).get("name") or ""
    )
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
    import nbformat.v4

    new = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})  # type: ignore[no-untyped-call]
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        del new["id"]  # cell ids came with nbformat 4.5
    nb.cells.insert(index + 1, new)
    return index + 1
