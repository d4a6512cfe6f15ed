"""nbval's and nbmake's own test notebooks (tests/notebooks/upstream) under the original tool and
under kernel-bridge's aliases of its options: the same verdict for every item, each cell of
nbval's, each notebook of nbmake's.

kernel-bridge's runs leave nbval and nbmake out (``-p no:nbval -p no:nbmake``), as in a
project that switched: that is when ``--nbval`` and ``--nbmake`` are kernel-bridge's. The four
runs go at once, each a pytest of its own in a copy of the notebooks (no ini file applies).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

UPSTREAM = Path(__file__).parent / "upstream"
UNRELATED = ("-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest")
# How nbval's own Makefile runs its notebooks: this environment's kernel, its sanitizer file.
NBVAL_ARGS = ("--nbval", "--nbval-current-env", "--nbval-sanitize-with", "sanitize_defaults.cfg")


def start(cwd: Path, report: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *UNRELATED, "--junit-xml", report, *args, "."],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def verdicts(path: Path) -> dict[str, str]:
    """{classname::name: passed|failed|skipped} from a JUnit XML report."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag, verdict in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            if case.find(tag) is not None:
                outcome = verdict
        out[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return out


def test_nbval_and_nbmake_notebooks_get_the_same_verdicts_from_kernel_bridge(
    tmp_path: Path,
) -> None:
    for tool in ("nbval", "nbmake"):
        for who in ("original", "ours"):
            shutil.copytree(UPSTREAM / tool, tmp_path / who / tool)
    runs = {
        ("nbval", "original"): ("-p", "no:kernel_bridge", "-p", "no:nbmake", *NBVAL_ARGS),
        ("nbval", "ours"): ("-p", "no:nbval", "-p", "no:nbmake", *NBVAL_ARGS),
        ("nbmake", "original"): ("-p", "no:kernel_bridge", "-p", "no:nbval", "--nbmake"),
        ("nbmake", "ours"): ("-p", "no:nbval", "-p", "no:nbmake", "--nbmake"),
    }
    procs = {
        key: start(tmp_path / key[1] / key[0], str(tmp_path / f"{key[0]}-{key[1]}.xml"), *args)
        for key, args in runs.items()
    }
    found = {}
    for key, proc in procs.items():
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode in (0, 1), out  # 1: some notebooks fail, as they should
        found[key] = verdicts(tmp_path / f"{key[0]}-{key[1]}.xml")
    # The same items, named the same (nbval: "path::Cell N"), with the same verdicts.
    assert found["nbval", "ours"] == found["nbval", "original"]
    assert found["nbmake", "ours"] == found["nbmake", "original"]
    # And they are the verdicts upstream's tests expect: its "-fail-" samples fail, and where.
    nbval = found["nbval", "ours"]
    assert sorted(k for k, v in nbval.items() if v == "failed") == [
        "ipynb-test-samples.test-exceptions-fail-storedmismatch.ipynb::Cell 0",
        "ipynb-test-samples.test-latex-fail-randomoutput.ipynb::Cell 2",
        "ipynb-test-samples.test-stream-fail-missingoutput.ipynb::Cell 1",
    ]
    assert sum(v == "skipped" for v in nbval.values()) == 3  # sample_notebook's NBVAL_SKIP cells
    assert len(nbval) == 51
    nbmake = found["nbmake", "ours"]
    assert sorted(k.split("::")[1] for k, v in nbmake.items() if v == "failed") == [
        "import_errs.ipynb",
        "magic_error.ipynb",
        "post_cell_execute_error.ipynb",
        "post_cell_execute_masked_error.ipynb",
    ]
    assert len(nbmake) == 9


def test_nbval_or_nbmake_loaded_and_nb_together_is_a_usage_error(tmp_path: Path) -> None:
    for flag, plugin in (("--nbval", "nbval"), ("--nbmake", "nbmake")):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *UNRELATED, "--nb", flag, "."],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
        assert f"{plugin} is installed, so {flag} runs {plugin} itself" in done.stderr
        assert f"-p no:{plugin}" in done.stderr
