"""QNTX's plugin protocol as Python modules, made from the .proto files in ``protos/``.

grpcio-tools generates the message and service modules from them when this module is first
imported (``grpc.protos_and_services``): nothing generated is ever written into the
repository or edited by hand. The modules are typed ``Any`` here, the boundary past which
the plugin's own code is typed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc

MAX_MESSAGE = 100 * 1024 * 1024  # QNTX's core sends and takes messages up to 100 MB

_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the `bridge` package
PROTOS = Path(__file__).resolve().parent / "protos"


def _load(name: str, *, services: bool = True) -> Any:
    # protoc finds the file (and those it imports), and the names its modules get, through
    # sys.path.
    relative = f"bridge/qntx/protos/{name}.proto"
    added = str(_ROOT) not in sys.path
    if added:
        sys.path.append(str(_ROOT))
    try:
        if services:
            return grpc.protos_and_services(relative)  # type: ignore[attr-defined]
        return grpc.protos(relative)  # type: ignore[attr-defined]
    finally:
        if added:
            sys.path.remove(str(_ROOT))


sigil_pb = _load("sigil", services=False)
domain_pb, domain_rpc = _load("domain")
python_pb, python_rpc = _load("python")
ats_pb, ats_rpc = _load("atsstore")

SERVICE_NAMES = (
    "protocol.DomainPluginService",
    "protocol.PythonService",
)
