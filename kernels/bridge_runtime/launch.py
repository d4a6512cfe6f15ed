"""Start an IPython kernel for kernel-bridge: ipykernel's app, our extension, no lost output.

Used as ``python -m bridge_runtime.launch -f {connection_file}`` by the kernel spec.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def main() -> None:
    # As ipykernel_launcher does: keep the cwd off sys.path while ipykernel loads;
    # InteractiveShellApp.init_path() puts it back.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]

    import zmq
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    class BridgeKernelApp(IPKernelApp):  # type: ignore[misc]
        def parse_command_line(self, argv: Any = None) -> None:
            args = sys.argv[1:] if argv is None else list(argv)
            if len(args) == 2 and args[0] == "-f":
                # The kernel spec's only arguments. traitlets would build an argparse parser
                # of every option of every IPython class to read them: a tenth of a start.
                self.argv = args
                self.connection_file = args[1]
                return
            super().parse_command_line(argv)

        def init_iopub(self, context: Any) -> None:
            # IOPub is a (X)PUB socket: at its high-water mark ZeroMQ drops messages without a
            # word when the host reads slowly. Unbounded keeps every output; the host caps
            # what it keeps instead. A context default, so it is set before the socket binds.
            context.setsockopt(zmq.SNDHWM, 0)
            super().init_iopub(context)

        def init_kernel(self) -> None:
            # The kernel spec says debugger: false, yet ipykernel imports debugpy (pydevd) while
            # it builds the kernel: a quarter of a kernel's start-up CPU, paid by every pool
            # kernel. Hide it for that moment only; code run in the kernel imports it as usual.
            hidden = "debugpy" not in sys.modules
            if hidden:
                sys.modules["debugpy"] = None  # type: ignore[assignment]
            try:
                super().init_kernel()
            finally:
                if hidden and sys.modules.get("debugpy", False) is None:
                    del sys.modules["debugpy"]

    config = Config()
    config.IPKernelApp.extra_extensions = ["bridge_runtime"]
    # History in memory: bridge calls store none, and a sqlite file per kernel would be only
    # I/O and locking; notebook cells (run_cell) and attached consoles get theirs, and the
    # kernel answers history requests as any IPython kernel does (no saving thread either).
    config.HistoryManager.hist_file = ":memory:"
    # ipykernel sleeps 0.5 ms after every execute so that a late stdout flush reaches clients
    # before the reply. The bridge completes a call on its idle status, which IOPub sends
    # after that flush, so the sleep only adds latency.
    config.IPKernelApp.kernel_class = "ipykernel.ipkernel.IPythonKernel"
    config.IPythonKernel._execute_sleep = 0.0
    BridgeKernelApp.launch_instance(config=config)


if __name__ == "__main__":
    main()
