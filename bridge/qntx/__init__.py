"""kernel-bridge as QNTX's Python plugin: ``qntx-python-plugin``, a gRPC server QNTX launches.

QNTX's core discovers the executable, starts it with ``--port N``, reads ``QNTX_PLUGIN_PORT=N``
from its stdout and calls ``DomainPluginService`` on it; HTTP requests to ``/api/python/...``
reach the plugin tunnelled through ``HandleHTTP``, where the route table the HTTP service
serves answers them too (bridge.service.dispatch). See docs/qntx.md.

Needs the ``qntx`` extra: ``pip install 'kernel-bridge[qntx]'``.
"""
