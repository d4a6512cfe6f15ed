"""The ``bridge`` and ``notebook`` fixtures (testbook's job), on notebooks/analysis.ipynb."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nbfiles import write_nb

import bridge as kb
from bridge.core.kernel import Kernel
from bridge.notebooks.handle import Notebook, Ref

ANALYSIS = "notebooks/analysis.ipynb"
Opener = Callable[..., Notebook]


def test_the_bridge_fixture_is_a_blocking_bridge(bridge: kb.Bridge) -> None:
    assert isinstance(bridge, kb.Bridge)
    assert bridge.evaluate("sum(range(4))").value == 6


def test_ref_value_inject_cell_output_and_patch(notebook: Opener) -> None:
    nb = notebook(ANALYSIS, execute=True)
    assert nb.ref("add")(1, 2) == 3
    assert nb.ref("add")(a="x", b="y") == "xy"
    assert nb.value("summary") == {"mean": 3.875, "max": 9}
    assert nb.value("tuple(data[:2])") == [3, 1]  # JSON: a tuple comes back as a list
    assert nb.value("plt.gcf").startswith("<function")  # not JSON: its repr
    nb.inject("extra = [x * 2 for x in data]")
    assert nb.value("extra[-1]") == 12
    (plot,) = nb.cell_output("plot")
    assert plot["image/png"] and plot["text/plain"].startswith("<Figure")
    assert nb.cell_output(3) == [{"text/plain": "{'mean': 3.875, 'max': 9}"}]

    with nb.patch("os.path.expanduser", return_value="/tmp/config.json") as mock:
        assert nb.ref("config_path")() == "/tmp/config.json"
        assert mock.call_count == 1
        assert mock.calls == [[["~/.analysis.json"], {}]]
    assert nb.ref("config_path")().endswith("/.analysis.json")
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        nb.patch("os.path.expanduser", return_value="/patched"),
    ):
        raise RuntimeError("the test failed")
    assert nb.ref("config_path")() != "/patched"  # undone although the block raised

    with pytest.raises(kb.ExecutionError, match="TypeError"):
        nb.ref("add")(1)
    with pytest.raises(kb.InvalidRequest, match="dotted Python name"):
        nb.ref("add(1); import os")
    with pytest.raises(kb.ExecutionError, match="NameError"):
        nb.value("undefined_name")


def test_execute_runs_the_cells_named_by_tag_or_index(notebook: Opener) -> None:
    nb = notebook(ANALYSIS, execute=["setup", 2])
    assert nb.ref("add")(2, 3) == 5
    assert nb.value("'summary' in globals()") is False
    with pytest.raises(kb.InvalidRequest, match=r"cells\[3\] has not run"):
        nb.cell_output(3)
    nb.execute(3)
    assert nb.value("summary['max']") == 9
    with pytest.raises(kb.InvalidRequest, match="no code cell tagged 'nope'"):
        nb.execute("nope")
    with pytest.raises(kb.InvalidRequest, match="is not a code cell"):
        nb.execute(0)


def test_a_failing_notebook_raises_the_report_and_frees_its_kernel(
    bridge: kb.Bridge, tmp_path: Path
) -> None:
    path = write_nb(tmp_path / "broken.ipynb", "value = 1", "value / 0")
    factory = bridge.async_bridge.factory
    before = set(factory.kernels)
    with pytest.raises(kb.NotebookFailed) as info:
        Notebook.open(bridge, path, execute=True)
    assert "cells[1] raised ZeroDivisionError: division by zero" in str(info.value)
    assert "-> 1  value / 0" in str(info.value)
    gone = before - set(factory.kernels)
    assert len(gone) == 1 and not gone.pop().alive


@pytest.fixture
def kernels_after() -> Iterator[list[Kernel]]:
    """Kernels that must be shut down once the test's ``notebook`` fixture has ended.

    Requested before ``notebook``, so it is torn down after it.
    """
    kernels: list[Kernel] = []
    yield kernels
    for kernel in kernels:
        assert not kernel.alive, f"{kernel.name} outlived its notebook fixture"
        assert kernel.kernel_id not in kernel.transport.kernel_manager  # type: ignore[attr-defined]


def test_the_fixture_shuts_each_notebooks_kernel_down_at_the_end(
    kernels_after: list[Kernel], notebook: Opener
) -> None:
    first = notebook(ANALYSIS)
    second = notebook(ANALYSIS, execute="setup", params={})
    kernels: list[Any] = [nb._async.session.kernel for nb in (first, second)]
    assert all(k.alive for k in kernels) and kernels[0] is not kernels[1]
    kernels_after.extend(kernels)


def test_refs_hold_any_object_chain_attributes_and_calls(notebook: Opener, tmp_path: Path) -> None:
    path = write_nb(
        tmp_path / "objects.ipynb",
        "class Counter:\n"
        "    def __init__(self, start):\n"
        "        self.count = start\n"
        "    def add(self, n):\n"
        "        self.count += n\n"
        "        return self\n"
        "    def report(self):\n"
        "        return {'count': self.count}\n",
        "counter = Counter(1)",
    )
    nb = notebook(path, execute=True)
    # A call that returns an object that is not JSON gives a reference to it; JSON is a value.
    added = nb.ref("counter").add(2)
    assert isinstance(added, Ref) and added.type_name == "Counter"
    assert added.add(3).report() == {"count": 6}
    assert nb.ref("counter").count == 6  # an attribute is looked up at once
    made = nb.ref("Counter")(10)  # a new object, held in the kernel for the test
    assert made.type_name == "Counter" and made.add(1).count == 11
    assert nb.value("counter.count") == 6  # the two objects are apart
    # Held in the kernel until it shuts down: the objects, and the bound methods looked up.
    assert nb.value("sorted({type(v).__name__ for v in __kb_refs__.values()})") == [
        "Counter",
        "method",
    ]
    with pytest.raises(kb.ExecutionError, match="AttributeError"):
        _ = made.no_such_attribute
    with pytest.raises(AttributeError):
        _ = made.__wrapped__  # dunders stay on this side (inspect, copy, pickle ask)
