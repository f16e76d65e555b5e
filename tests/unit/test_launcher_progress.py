"""While a stage runs, the launcher shows its progress (issue 13): the newest line of the stage's own output, now
and then, instead of a silent "running" for the whole stage. Runs the real launcher loop on a small ``python -c``
stage that draws a tqdm-like bar with carriage returns."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from openrlhf_psr import launcher
from openrlhf_psr.launcher import RecipeRun, Stage, last_progress_line
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# A stage that redraws a progress bar 5 times, 0.4 s apart, then writes its output.
STAGE_CODE = """
import pathlib, sys, time
for k in range(1, 6):
    sys.stdout.write(f"\\rsearching: {k}/5 problems"); sys.stdout.flush(); time.sleep(0.4)
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True); (out / "done.txt").write_text("ok")
"""


class BarRun(RecipeRun):
    def plan(self) -> list[Stage]:
        out = self.root / "search"
        cmd = [self.python, "-c", STAGE_CODE, str(out)]
        return [Stage("search", cmd, out / "done.txt", log=self.root / "logs" / "search.log")]


def test_a_running_stage_shows_the_newest_line_of_its_own_output(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRLHF_PSR_PROGRESS_EVERY", "0")
    shown: list[str] = []
    run = BarRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path / "runs")
    run.run(progress=shown.append)
    bars = [line for line in shown if line.startswith("    search: searching:")]
    assert bars, shown
    # each progress line is one redraw of the bar (the newest at that moment), never two glued together
    assert all(line.count("searching:") == 1 for line in bars), bars
    assert len(set(bars)) == len(bars)  # a line is shown once, not repeated while it stays the newest
    assert shown[-1].startswith("[1/1] search: done in")


def test_progress_lines_are_rate_limited(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRLHF_PSR_PROGRESS_EVERY", "3600")
    shown: list[str] = []
    run = BarRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path / "runs")
    run.run(progress=shown.append)
    assert not [line for line in shown if "searching:" in line], shown


def test_last_progress_line_skips_the_command_header_and_reads_only_after_the_offset(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text("old run: 9/9\n$ python -m openrlhf_psr.cli.search --out x\n")
    offset = log.stat().st_size
    assert last_progress_line(log, offset) == ""
    with open(log, "a") as f:
        f.write("x" * 300 + "\n")
    line = last_progress_line(log, offset)
    assert len(line) == 160 and line.endswith("...")
    assert last_progress_line(tmp_path / "missing.log") == ""


def test_last_progress_line_drops_terminal_control_sequences(tmp_path):
    """SFT's nested tqdm bars end each redraw with ESC [A (cursor up); relayed as is it moves the launcher's output."""
    log = tmp_path / "sft.log"
    log.write_text("\x1b[A\rTrain step:  6%|\x1b[32m#\x1b[0m  | 24/400 [00:47<15:31, gpt_loss=1.49]\x1b[A\r\x1b[A")
    assert last_progress_line(log) == "Train step:  6%|#  | 24/400 [00:47<15:31, gpt_loss=1.49]"


def test_doctests():
    assert doctest.testmod(launcher).failed == 0


class FailingRun(RecipeRun):
    def plan(self) -> list[Stage]:
        out = self.root / "search"
        code = "import sys; print('stage says: bad judge output'); sys.exit(3)"
        return [Stage("search", [self.python, "-c", code], out / "done.txt", log=self.root / "logs" / "search.log")]


def test_a_failed_stage_is_reported_as_its_name_exit_log_and_last_lines_not_a_traceback(tmp_path, capsys):
    import argparse

    from openrlhf_psr.cli.app import EXIT_STAGE_FAILED, execute

    run = FailingRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path / "runs")
    code = execute(lambda args: run.run(progress=lambda line: None), argparse.Namespace())
    err = capsys.readouterr().err
    assert code == EXIT_STAGE_FAILED == 1
    assert "Traceback" not in err
    assert "openrlhf-psr: error: stage search failed (exit 3); its log: " in err
    assert str(tmp_path / "runs" / "tiny_cpu" / "logs" / "search.log") in err
    assert "    stage says: bad judge output" in err  # the stage's own last lines, indented
    with pytest.raises(RuntimeError, match="stage search failed"):  # --debug keeps the traceback
        execute(lambda args: run.run(progress=lambda line: None), argparse.Namespace(debug=True))
