"""The kernel-bridge command, run as a separate process as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "bridge"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=90, check=False
    )


def test_exec_prints_outputs_and_the_value() -> None:
    done = run("exec", "print('hello')\nreturn {'answer': 42}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n{'answer': 42}\n"


def test_exec_prints_each_output_as_the_kernel_makes_it() -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')\nreturn 3"
    with subprocess.Popen(
        [*CLI, "exec", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        seen_at = time.monotonic()
        rest = proc.stdout.read()
        ended_at = time.monotonic()
        assert proc.wait(timeout=90) == 0
    assert first == "first\n"
    assert rest == "second\n3\n"
    assert ended_at - seen_at > 1.5  # 'first' came while the code still slept


def test_exec_json_reads_code_from_stdin() -> None:
    done = run(
        "exec",
        "-",
        "--json",
        "--input",
        "n=20",
        stdin="import sys\nprint('err', file=sys.stderr)\nreturn n + 1",
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["success"] is True and payload["result"] == 21
    assert payload["stderr"] == "err\n" and payload["error"] is None


def test_eval_error_exits_1_with_a_traceback() -> None:
    done = run("eval", "1 / 0")
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and "\x1b[" not in done.stderr


def test_run_file(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("total = sum(range(5))\nprint('total', total)\nreturn total\n")
    done = run("run", str(script), "--json", "--capture-variables")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["result"] == 10 and payload["variables"] == {"total": 10}


def test_timeout_is_a_bridge_error_exit_2() -> None:
    done = run(
        "exec", "import time\nprint('waiting', flush=True)\ntime.sleep(60)", "--timeout", "1"
    )
    assert done.returncode == 2
    assert "waiting" in done.stdout and "ExecutionTimeout" in done.stderr


def test_bad_interpreter_exit_2() -> None:
    done = run("eval", "1", "--python", "/no/such/python")
    assert done.returncode == 2 and "KernelStartError" in done.stderr


def test_version() -> None:
    done = run("version")
    assert done.returncode == 0 and done.stdout.startswith("kernel-bridge ")
