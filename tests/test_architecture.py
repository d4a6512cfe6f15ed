"""The house rules of docs/architecture.md, checked on the source (imports read with ``ast``).

- Layers, bottom up: core; transports and backends (on core); api (on those); the service
  layer (``bridge.service``) on the public ``bridge`` API only; front ends (cli, notebooks,
  server, qntx) on the public API and the service layer, never on each other (the CLI
  dispatches to the other front ends' entry points).
- No import cycle among bridge's modules, counting imports inside functions.
- ``kernels/bridge_runtime`` needs nothing but the standard library and ipykernel.
- The wire contract's names are written once, in ``kernels/bridge_runtime/protocol.py``.
- ``Kernel`` (bridge/core/kernel.py) routes messages; process control is a transport's.
- Public names show as ``bridge.X``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from paths import ROOT

import bridge

PACKAGE = ROOT / "bridge"
RUNTIME = ROOT / "kernels" / "bridge_runtime"

# What each layer may import of bridge, besides itself and bridge._version.
CORE = ("bridge.core",)
ALLOWED = {
    "bridge.core": CORE,
    "bridge.transports": (*CORE, "bridge.transports"),
    "bridge.backends": (*CORE, "bridge.backends"),
    "bridge.api": (*CORE, "bridge.transports", "bridge.backends", "bridge.api"),
}
# The service layer every front end shares sits on the public API (``bridge`` itself) only.
SERVICE = "bridge.service"
# Front ends reach kernels through the public API and the service layer. They never import
# each other; the CLI dispatches to the other front ends' entry points.
FRONT_ENDS = {
    "bridge.cli": ("bridge.cli", "bridge.server", "bridge.notebooks", "bridge.qntx", SERVICE),
    "bridge.notebooks": ("bridge.notebooks", SERVICE),
    "bridge.server": ("bridge.server", SERVICE),
    "bridge.qntx": ("bridge.qntx", SERVICE),
}
ABOVE_API = {SERVICE: (SERVICE,), **FRONT_ENDS}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import nodes under ``if TYPE_CHECKING:``: for annotations, never run."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",):
            for inner in node.body:
                found.update(ast.walk(inner))
    return found


def imports(path: Path, *, annotations: bool = True) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in *path*, at any depth; *annotations*:
    with those under ``if TYPE_CHECKING:``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if annotations else _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # `from bridge.core import wire` imports a module
                yield f"{target}.{alias.name}", node.lineno


def bridge_imports(
    path: Path, known: dict[str, Path], *, annotations: bool = True
) -> set[tuple[str, int]]:
    """The modules of bridge that *path* imports (``from pkg import name``: pkg.name if that
    is a module, else pkg)."""
    found = set()
    for target, line in imports(path, annotations=annotations):
        if target == "bridge" or target.startswith("bridge."):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            found.add((target, line))
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        if name in ("bridge", "bridge.__main__", "bridge._version"):
            continue
        layer = next((p for p in {**ALLOWED, **ABOVE_API} if within(name, (p,))), None)
        assert layer is not None, f"{name} is in no layer: put it in one (docs/architecture.md)"
        for target, line in bridge_imports(path, known):
            if target in (name, "bridge._version"):
                continue
            if layer in ABOVE_API:
                ok = target == "bridge" or within(target, ABOVE_API[layer])
            else:
                ok = within(target, ALLOWED[layer])
            if not ok:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_front_ends_share_the_service_layer_and_never_import_each_other() -> None:
    known = modules()
    front = {"bridge.server", "bridge.qntx"}
    wrong = []
    uses_service = set()
    for name, path in known.items():
        mine = next((f for f in front if within(name, (f,))), None)
        if mine is None:
            continue
        for target, line in bridge_imports(path, known):
            if within(target, (SERVICE,)):
                uses_service.add(mine)
            other = next((f for f in front if f != mine and within(target, (f,))), None)
            if other is not None:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target}")
    assert not wrong, "\n".join(wrong)
    assert uses_service == front, f"front ends on the service layer: {sorted(uses_service)}"


def test_no_import_cycles_even_inside_functions() -> None:
    known = modules()
    graph = {
        name: {
            t
            for t, _ in bridge_imports(path, known, annotations=False)
            if t not in (name, "bridge")
        }
        for name, path in known.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_kernel_runtime_needs_only_ipykernel() -> None:
    # ipykernel brings IPython, comm, traitlets and pyzmq; numpy is imported only to rebuild an
    # array the host sent (so numpy is there: the host's array came from it).
    allowed = set(sys.stdlib_module_names) | {"IPython", "ipykernel", "comm", "traitlets", "zmq"}
    allowed.add("numpy")
    wrong = []
    for path in sorted(RUNTIME.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_kernel_routes_messages_and_controls_no_process() -> None:
    """``Kernel`` runs over a ``Transport`` (bridge/core/transport.py); signals, process
    groups, pidfds, jupyter_client's managers and websockets are the transports' business."""
    path = PACKAGE / "core" / "kernel.py"
    process_control = {"os", "signal", "subprocess", "jupyter_client", "tornado", "zmq"}
    wrong = [
        f"{name} (line {line})"
        for name, line in imports(path)
        if name.split(".")[0] in process_control
    ]
    assert not wrong, f"bridge/core/kernel.py imports {wrong}"


CONTRACT = (
    "kernel-bridge",
    "kernel-bridge.backend",
    "kernel-bridge.files",
    "kernel_bridge",
    "__methods__",
)


def test_the_wire_contract_is_written_once() -> None:
    protocol = RUNTIME / "protocol.py"
    where: dict[str, list[str]] = {}
    for path in [*PACKAGE.rglob("*.py"), *RUNTIME.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in CONTRACT:
                where.setdefault(str(node.value), []).append(
                    f"{path.relative_to(ROOT)}:{node.lineno}"
                )
    elsewhere = {
        value: [p for p in places if not p.startswith(str(protocol.relative_to(ROOT)))]
        for value, places in where.items()
    }
    # "kernel-bridge" is also the product's name (the kernel spec, the CLI, loggers), and
    # "kernel_bridge" the Jupyter Server extension's: those uses are not the contract's.
    elsewhere.pop("kernel-bridge", None)
    elsewhere["kernel_bridge"] = [
        p for p in elsewhere.get("kernel_bridge", []) if not p.startswith("bridge/server/app.py")
    ]
    assert {v: p for v, p in elsewhere.items() if p} == {}
    assert set(CONTRACT) <= set(where)


@pytest.mark.parametrize("name", [n for n in bridge.__all__ if not n.startswith("__")])
def test_public_names_show_as_bridge(name: str) -> None:
    value = getattr(bridge, name)
    assert value.__module__ == "bridge", f"{name} shows as {value.__module__}.{name}"
