"""kernel-bridge's kernel side: loaded into every bridge kernel as an IPython extension.

It needs nothing but ipykernel, so it runs in any interpreter the host points at.
"""

from __future__ import annotations

from typing import Any

from ._backend import PythonBridge
from ._execute import attest

__all__ = ["PythonBridge", "attest", "load_ipython_extension"]


def load_ipython_extension(shell: Any) -> None:
    from ._backend import install as install_backends
    from ._execute import install
    from ._files import install as install_files
    from ._magic import install as install_magic

    install(shell)
    install_backends()
    install_files()
    install_magic(shell)
