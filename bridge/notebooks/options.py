"""How notebooks run as tests: the one options model of ``pytest --nb-*`` and ``kernel-bridge
test``, and the one place their raw values are checked.

Each front end maps its own flags to ``build_options`` and turns its ``InvalidRequest`` into its
own usage error (``pytest.UsageError``; the command's exit status 2).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import InvalidRequest
from bridge.notebooks.compare import Sanitizer, read_sanitizer_file

DEFAULT_CELL_TIMEOUT = 300.0


@dataclass
class NotebookOptions:
    """How notebooks run: the options of ``pytest --nb`` and ``kernel-bridge test``.

    ``workers`` and ``python`` say what bridge a front end makes for a batch of notebooks
    (``workers`` notebooks at once, on kernels run by ``python``); ``run_notebook`` uses the
    bridge it is given and reads the others only.
    """

    timeout: float = DEFAULT_CELL_TIMEOUT
    params: dict[str, Any] = field(default_factory=dict)
    compare: bool = False
    sanitizers: Sequence[Sanitizer] = ()
    write_dir: Path | None = None
    root: Path | None = None  # names and written paths are relative to it (default: cwd)
    workers: int = 1
    python: str | None = None
    lax: bool = False  # compare only cells marked NBVAL_CHECK_OUTPUT (nbval's --nbval-lax)
    default_sanitizers: bool = True  # mask addresses and timestamps (off under --nbval)
    kernel: str | None = None  # checked instead of each notebook's kernel spec name
    import_errors_only: bool = False  # nbmake's --nbmake-find-import-errors
    overwrite: bool = False  # write each executed notebook over its source (nbmake's)
    # coverage.Coverage's arguments for each notebook's kernel (``cells.start_coverage``),
    # and "cwd", where it starts: set by the pytest plugin under pytest-cov's --cov.
    coverage: dict[str, Any] | None = None


def parse_param(text: str) -> tuple[str, Any]:
    """``"n=3"`` -> ``("n", 3)``: a Python literal when the value is one, else the string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise InvalidRequest(f"a parameter is NAME=VALUE with a Python name, got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return name, value


def build_options(
    *,
    flag: str,
    timeout: float = DEFAULT_CELL_TIMEOUT,
    params: Iterable[str] = (),
    compare: bool = False,
    sanitize: Iterable[str] = (),
    sanitize_with: str | Path | None = None,
    write: str | Path | None = None,
    workers: int = 1,
    python: str | None = None,
    root: Path | None = None,
    **modes: Any,
) -> NotebookOptions:
    """NotebookOptions from a front end's raw values; InvalidRequest names what is wrong.

    *flag* prefixes option names in messages (``"--nb-"`` for pytest, ``"--"`` for the
    command). *params* are ``NAME=VALUE`` texts, *sanitize* regexes, *sanitize_with* an
    nbval sanitizer file, *write* the folder executed notebooks go to; *modes* are the
    remaining fields of NotebookOptions as they are (``lax``, ``kernel``, ``overwrite``...).

    >>> build_options(flag="--", params=["n=3"], workers=2).params    # doctest: +SKIP
    {'n': 3}
    """
    parsed = dict(parse_param(p) for p in params)
    sanitizers = [Sanitizer.of(r) for r in sanitize]
    if sanitize_with:
        sanitizers += read_sanitizer_file(sanitize_with)
    if not timeout > 0:
        raise InvalidRequest(f"{flag}timeout must be positive, got {timeout}")
    if workers < 1:
        raise InvalidRequest(f"{flag}workers must be at least 1, got {workers}")
    return NotebookOptions(
        timeout=timeout,
        params=parsed,
        compare=compare,
        sanitizers=sanitizers,
        write_dir=Path(write).resolve() if write else None,
        root=root,
        workers=workers,
        python=python,
        **modes,
    )
