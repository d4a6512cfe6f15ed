"""Write small notebooks for the notebook tests: ``write_nb(path, "print(1)", ("1/0", ["tag"]))``.

A cell is a source string (a code cell), a ``(source, tags)`` pair, or an nbformat cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import nbformat.v4 as v4

PYTHON = {"name": "python3", "display_name": "Python 3", "language": "python"}


def cell(item: Any) -> Any:
    if isinstance(item, tuple):
        source, tags = item
        return v4.new_code_cell(source, metadata={"tags": list(tags)})
    if isinstance(item, str):
        return v4.new_code_cell(item)
    return item


def write_nb(path: Path, *cells: Any, kernelspec: Any = PYTHON, **metadata: Any) -> Path:
    nb = v4.new_notebook(cells=[cell(c) for c in cells])
    if kernelspec is not None:
        nb.metadata["kernelspec"] = kernelspec
    nb.metadata.update(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def stored(item: Any, *outputs: dict[str, Any], count: int = 1) -> Any:
    """A code cell as a notebook saved after a run has it: outputs and an execution count."""
    made = cell(item)
    made.execution_count = count
    made.outputs = [nbformat.from_dict(o) for o in outputs]
    return made


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def result(data: dict[str, Any], count: int = 1) -> dict[str, Any]:
    return {"output_type": "execute_result", "data": data, "metadata": {}, "execution_count": count}


def read_nb(path: Path) -> Any:
    return nbformat.read(str(path), as_version=4)
