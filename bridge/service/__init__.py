"""The service layer every front end shares: what each route does, once, whatever carries it.

The HTTP service (bridge.server) and the QNTX plugin (bridge.qntx, gRPC) both import this
package and never each other; it imports only the public ``bridge`` API.

- ``models``: one msgspec Struct per request and answer (the contract).
- ``errors``: ``ErrorType``, the one list of failure causes, and ``ApiError``.
- ``service``: ``Service``, what the routes do (the pool, backends, contexts, limits).
- ``dispatch``: ``ROUTES``, the one route table, and ``respond`` for whole requests.
- ``openapi``: the OpenAPI document, generated from ``ROUTES`` and ``models``.
"""

from __future__ import annotations
