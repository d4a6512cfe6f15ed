"""The ``kernel-bridge`` command, a front end: exec, eval, run, serve, test, version."""

from bridge.cli.main import main

__all__ = ["main"]
