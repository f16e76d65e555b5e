"""A stage that wrote everything exits with its own code even when native threads would abort the interpreter's
teardown (seen with vLLM: "terminate called without an active exception", SIGABRT after the search's summary)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

# An object that aborts the process when the interpreter finalizes it, like a joinable std::thread destroyed at
# teardown; an atexit handler that leaves a mark (the grading pool stops its workers this way).
SCRIPT = textwrap.dedent(
    """
    import atexit, os, sys

    class AbortsAtTeardown:
        def __del__(self):
            os.abort()

    keep = AbortsAtTeardown()
    atexit.register(lambda: print("atexit ran", flush=True))
    if sys.argv[1] == "stage":
        from openrlhf_psr.cli.app import exit_without_teardown

        exit_without_teardown(3)
    raise SystemExit(3)
    """
)


def test_the_stage_exit_code_survives_a_native_abort_at_teardown_and_atexit_still_runs():
    plain = subprocess.run([sys.executable, "-c", SCRIPT, "plain"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == -6  # what the launcher saw: a finished stage reported as failed
    stage = subprocess.run([sys.executable, "-c", SCRIPT, "stage"], capture_output=True, text=True, timeout=60)
    assert stage.returncode == 3 and "atexit ran" in stage.stdout


def test_search_and_evaluate_leave_through_it():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "openrlhf_psr" / "cli"
    for name in ("search.py", "evaluate.py"):
        assert "exit_without_teardown(main())" in (root / name).read_text(), name
