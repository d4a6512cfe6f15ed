"""The kernel-bridge runtime for a gateway's kernels, which do not have it installed: a cell
that imports every module of ``bridge_runtime`` from sources sent with it."""

from __future__ import annotations

import functools

from bridge.core.wire import kernel_side_dir

# Run by exec() in a namespace of its own: nothing of it is left in the user's namespace, where
# the runtime records its baseline for isolated calls.
_LOADER = """\
import importlib.abc, importlib.util, linecache, sys

class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in sources:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=sources[name][0])

    def exec_module(self, module):
        package, filename, text = sources[module.__name__]
        # Tracebacks and inspect show the runtime's lines, though no file holds them.
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        module.__file__ = filename  # the name its code objects carry, as for a file
        exec(compile(text, filename, "exec"), module.__dict__)

if "bridge_runtime" not in sys.modules:  # else the kernel came with it: keep that one
    sys.meta_path.insert(0, Finder())
get_ipython().extension_manager.load_extension("bridge_runtime")
"""


@functools.cache
def runtime_loader() -> str:
    """A cell that loads ``bridge_runtime`` (every module of it) into a kernel from memory."""
    root = kernel_side_dir()
    sources: dict[str, tuple[bool, str, str]] = {}
    for path in sorted((root / "bridge_runtime").rglob("*.py")):
        relative = path.relative_to(root)
        parts = list(relative.with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        filename = f"<kernel-bridge>/{relative.as_posix()}"
        sources[".".join(parts)] = (package, filename, path.read_text(encoding="utf-8"))
    names = f"{{'sources': {sources!r}, 'get_ipython': get_ipython, '__name__': 'kernel_bridge'}}"
    return f"exec({_LOADER!r}, {names})\n"
