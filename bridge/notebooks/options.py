"""How notebooks run as tests: one options model for the pytest plugin and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.notebooks.compare import Sanitizer

DEFAULT_CELL_TIMEOUT = 300.0


@dataclass
class NotebookOptions:
    """How notebooks run: the options of ``pytest --nb`` and ``kernel-bridge test``."""

    timeout: float = DEFAULT_CELL_TIMEOUT
    params: dict[str, Any] = field(default_factory=dict)
    compare: bool = False
    sanitizers: Sequence[Sanitizer] = ()
    write_dir: Path | None = None
    root: Path | None = None  # names and written paths are relative to it (default: cwd)
