"""What `make run` installs: what running needs (the base dependencies and the lab extra, since
JupyterLab at /lab is part of what it serves) and nothing else."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from paths import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TEST_TOOLS = {
    "pytest",
    "schemathesis",
    "scikit-learn",
    "jupyter-kernel-gateway",
    "jupyter-enterprise-gateway",
    "mypy",
    "ruff",
    "httpx",
}


def _names(requirements: list[str]) -> list[str]:
    return [Requirement(r).name.lower() for r in requirements]


def test_running_needs_no_test_tools() -> None:
    base = _names(PROJECT["dependencies"])
    assert not set(base) & TEST_TOOLS
    assert "jupyter-server" in base


def test_jupyter_server_is_listed_once() -> None:
    every = _names(PROJECT["dependencies"])
    for extra, requirements in PROJECT["optional-dependencies"].items():
        every += [n for n in _names(requirements) if n != "kernel-bridge"] if extra else []
    assert every.count("jupyter-server") == 1


def test_the_lab_extra_holds_no_test_tools() -> None:
    assert _names(PROJECT["optional-dependencies"]["lab"]) == ["jupyterlab"]


def test_make_run_installs_the_package_with_lab_alone() -> None:
    makefile = (ROOT / "Makefile").read_text()
    run = re.search(r"^run: (.*)$", makefile, re.MULTILINE)
    assert run is not None
    stamp = run.group(1).split()[0].replace("$(", "").replace(")", "")
    recipe = re.search(rf"^\$\({stamp}\):.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, f"no recipe for {stamp}"
    installs = [line for line in recipe.group(1).splitlines() if "pip install" in line]
    assert installs[-1].rstrip().endswith("install --quiet -e '.[lab]'"), installs
