"""The public API every front end goes through: ``AsyncBridge`` and ``AsyncSession`` (bridge.py),
and their blocking twins, a portal over a loop thread and nothing else (sync.py)."""
