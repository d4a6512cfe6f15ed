"""The service's token: where it comes from and the private file that holds it.

The token is never printed and never needs to be on a command line: it comes from
``JUPYTER_TOKEN_FILE`` (a file only its owner can read), ``JUPYTER_TOKEN``, ``--token`` (which
``ps`` shows to every user, so it warns), or is generated. Unless it already is in
``JUPYTER_TOKEN_FILE``, it is written to a private file of its own (0600, in Jupyter's private
runtime folder) for the banner to point at, and that file is removed when the service stops.

>>> found = find_token(None)   # doctest: +SKIP
>>> found.path                  # doctest: +SKIP
'/run/user/1000/jupyter/kernel-bridge-4242.token'
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from dataclasses import dataclass

COMMAND_LINE_WARNING = (
    "kernel-bridge: warning: --token puts the token where `ps` shows it to every user of "
    "this machine; put it in a file only you can read and set JUPYTER_TOKEN_FILE to that file"
)


@dataclass
class Token:
    """The token, the file that holds it, and whether that file is ours to remove."""

    value: str
    path: str = ""
    owned: bool = False
    generated: bool = False

    def remove(self) -> None:
        if self.owned and self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def find_token(given: str | None) -> Token:
    """--token, else ``JUPYTER_TOKEN``, else ``JUPYTER_TOKEN_FILE``, else a generated one."""
    if given is not None:
        print(COMMAND_LINE_WARNING, file=sys.stderr, flush=True)
        return Token(given)
    if "JUPYTER_TOKEN" in os.environ:
        return Token(os.environ["JUPYTER_TOKEN"])
    path = os.environ.get("JUPYTER_TOKEN_FILE")
    if path:
        try:
            with open(path) as f:
                return Token(f.read().strip(), os.path.abspath(path))
        except OSError as exc:
            raise SystemExit(
                f"kernel-bridge: error: JUPYTER_TOKEN_FILE {path}: {exc.strerror}"
            ) from None
    return Token(secrets.token_hex(24), generated=True)


def keep_in_file(token: Token) -> None:
    """Write *token* to a private file of its own unless it is in one already."""
    if token.path:
        return
    from jupyter_core.paths import jupyter_runtime_dir
    from jupyter_core.utils import ensure_dir_exists

    folder = jupyter_runtime_dir()
    ensure_dir_exists(folder, 0o700)
    path = os.path.join(folder, f"kernel-bridge-{os.getpid()}.token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a file left by an older process keeps its mode
        f.write(token.value + "\n")
    token.path, token.owned = path, True
