"""kernel-bridge's kernel side: loaded into every bridge kernel as an IPython extension.

It needs nothing but ipykernel, so it runs in any interpreter the host points at.
"""

from __future__ import annotations

from typing import Any

from ._execute import attest

__all__ = ["attest", "load_ipython_extension"]


def load_ipython_extension(shell: Any) -> None:
    from ._execute import install

    install(shell)
