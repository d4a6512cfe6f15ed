"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway instead of on this machine.

A gateway serves Jupyter Server's kernel API: REST to start, interrupt and delete kernels, and
one websocket per kernel (``/api/kernels/{id}/channels``) that carries every channel. Here:

- ``Gateway`` is that REST API, with the token on every request. It remembers every kernel
  it created, so closing deletes whatever is left.
- ``GatewayTransport`` is the core's ``Transport`` (bridge/core/transport.py) over the
  websocket (token in the upgrade request too) and the REST calls: the ``Kernel`` on top of
  it (router, execute loop, comms, the timeout and death logic) is the local one. Jupyter
  Server's own ``GatewayKernelClient`` is not used: it sends no token on its websocket, and
  takes some 48 ms per trivial execute (delayed ACKs: see ``Channels._quickack``).
- The runtime from ``kernels/`` is not installed on the gateway's host: the first execute sends
  its sources and imports them from memory.

Frames use Jupyter Server's ``v1.kernel.websocket.jupyter.org`` protocol when the gateway
offers it (the gateway relays the kernel's frames without parsing them), else the legacy JSON
one; the (de)serializers are Jupyter Server's.
"""
