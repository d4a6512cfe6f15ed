"""kernel-bridge's HTTP service, a Jupyter Server extension (``kernel-bridge serve``).

Importing this package imports Jupyter Server; ``import bridge`` does not.
"""

from __future__ import annotations

from .app import BridgeApp

__all__ = ["BridgeApp"]
