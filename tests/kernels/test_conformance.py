"""The Jupyter kernel conformance suite (jupyter_kernel_test) against the bridge's kernel spec,
on both launch paths: forked from the fork server, and launched as a new interpreter.

Every check of the suite runs (none is skipped for want of a sample; its history "range"
check is replaced by one of what IPython answers): what a notebook front
end or an attached ``jupyter console`` asks of a kernel (execute, streams, errors, display
data, completion, is_complete, inspect, the pager, history, clear_output, the IOPub welcome)
works in a bridge kernel as in any IPython kernel. History is in memory (launch.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jupyter_kernel_test as jkt
from jupyter_client.manager import KernelManager

from bridge.core.wire import kernel_side_dir
from bridge.transports.local import forkserver
from bridge.transports.local.factory import KERNEL_NAME, BridgeSpecManager, bridge_kernel_spec
from bridge.transports.local.provisioner import ForkProvisioner, WatchedProvisioner


def _start(*, fork_server: bool) -> KernelManager:
    """A kernel of the bridge's kernel spec, started by jupyter_client alone."""
    spec = bridge_kernel_spec(sys.executable, fork_server=fork_server)
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=BridgeSpecManager(spec))
    paths = [str(kernel_side_dir()), *filter(None, [os.environ.get("PYTHONPATH")])]
    km.start_kernel(env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    return km


class _BridgeKernel(jkt.KernelTests):
    """The suite's IPython samples (as in jupyter_kernel_test's own tests of ipykernel)."""

    fork_server = True

    @classmethod
    def setUpClass(cls) -> None:
        if cls.fork_server:
            forkserver.hold()  # released in tearDownClass: the server ends with its last kernel
        cls.km = _start(fork_server=cls.fork_server)
        cls.kc = cls.km.client()
        cls.kc.start_channels()
        cls.kc.wait_for_ready(timeout=60)

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        if cls.fork_server:
            forkserver.release()

    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: list[dict[str, Any]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    # Not "range": IPython answers a range of the current session as session 0 (its name for
    # "this session"), not the number tail gave, as for every IPython kernel.
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    def test_history_range_answers_the_current_session_as_session_0(self) -> None:
        """The suite's "range" check is left out above; what IPython answers is checked here."""
        codes = ["a_value = 6", "a_value * 7"]
        reply = self.history_helper(codes, output=False, raw=True, hist_access_type="tail", n=2)
        _, start, _ = reply["content"]["history"][0]
        reply = self.history_helper(
            [],
            output=False,
            raw=True,
            hist_access_type="range",
            session=0,
            start=start,
            stop=start + 2,
        )
        assert [tuple(h) for h in reply["content"]["history"]] == [
            (0, start, codes[0]),
            (0, start + 1, codes[1]),
        ]

    def test_the_launch_path_is_the_one_named(self) -> None:
        provisioner = self.km.provisioner
        if self.fork_server:
            assert isinstance(provisioner, ForkProvisioner) and provisioner.forked
        else:
            assert type(provisioner) is WatchedProvisioner


class TestForkedBridgeKernel(_BridgeKernel):
    fork_server = True


class TestLaunchedBridgeKernel(_BridgeKernel):
    fork_server = False


class TestIopubWelcome(jkt.IopubWelcomeTests):
    """ipykernel 7 welcomes a new IOPub subscriber (the bridge's ready handshake uses it)."""

    kernel_name = KERNEL_NAME
    support_iopub_welcome = True

    @classmethod
    def setUpClass(cls) -> None:
        cls.km = _start(fork_server=False)
        cls.kc = cls.km.client()
