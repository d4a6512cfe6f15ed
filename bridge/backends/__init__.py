"""Persistent backends, host side: a user's class of methods in a kernel of its own, called by
name over a Jupyter comm (the kernel side is ``kernels/bridge_runtime/_backend.py``)."""
