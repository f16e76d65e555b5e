"""``run --until STAGE`` stops after that stage and a later run goes on from there; every stage process finds the
run's own interpreter's bin folder first on ``PATH``. The real launcher loop, on small ``python -c`` stages."""

from __future__ import annotations

import doctest
import os
import sys
from pathlib import Path

import pytest

from openrlhf_psr import launcher
from openrlhf_psr.cli import main as cli_main
from openrlhf_psr.errors import UserError
from openrlhf_psr.launcher import RecipeRun, Stage
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# A stage that writes the PATH it was started with as its output (named by --out, as real stages name theirs).
STAGE_CODE = "import os, pathlib, sys; p = pathlib.Path(sys.argv[2]); p.parent.mkdir(parents=True, exist_ok=True); "
STAGE_CODE += "p.write_text(os.environ['PATH'])"


class ThreeStageRun(RecipeRun):
    def plan(self) -> list[Stage]:
        names = ["sft", "iter_1/search", "iter_1/dpo"]
        return [Stage(name, [self.python, "-c", STAGE_CODE, "--out", str(self.root / name / "out.txt")],
                      self.root / name / "out.txt", log=self.root / "logs" / f"{name.replace('/', '_')}.log")
                for name in names]  # fmt: skip


def _run(tmp_path: Path, until: str | None) -> list[str]:
    shown: list[str] = []
    ThreeStageRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path / "runs").run(
        progress=shown.append, until=until
    )
    return shown


def test_until_stops_after_the_named_stage_and_a_later_run_goes_on(tmp_path):
    root = tmp_path / "runs" / "tiny_cpu"
    shown = _run(tmp_path, "iter_1/search")
    assert (root / "iter_1/search" / "out.txt").is_file() and not (root / "iter_1/dpo").exists()
    assert shown[-1] == "stopped after iter_1/search (--until): 1 stage(s) left; run again without --until to go on"
    assert "[2/3] iter_1/search: done in" in "\n".join(shown)  # numbered against the whole plan

    shown = _run(tmp_path, None)
    assert shown[0] == "[1/3] sft: done, skipped" and shown[1] == "[2/3] iter_1/search: done, skipped"
    assert (root / "iter_1/dpo" / "out.txt").is_file() and not any("stopped after" in line for line in shown)


def test_an_unknown_until_names_the_stages_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match=r"--until iter_1/serch: expected one of this recipe's stages: sft, "
                                         r"iter_1/search, iter_1/dpo"):  # fmt: skip
        _run(tmp_path, "iter_1/serch")
    assert not (tmp_path / "runs").exists()


def test_every_stage_finds_the_runs_interpreter_first_on_path(tmp_path, monkeypatch):
    """Even when the user's PATH lacks it (``make demo`` from a shell without the venv activated): another ninja
    first on PATH rebuilds DeepSpeed's CPU ops."""
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    _run(tmp_path, None)
    seen = (tmp_path / "runs" / "tiny_cpu" / "sft" / "out.txt").read_text().split(os.pathsep)
    assert seen == [os.path.dirname(sys.executable), "/usr/bin", "/bin"]


def test_stage_env_doctests():
    assert doctest.testmod(launcher).failed == 0


def test_the_dry_run_prints_the_stages_up_to_until(capsys):
    assert cli_main.main(["run", str(RECIPES / "tiny_cpu.yaml"), "--dry-run", "--until", "sft"]) == 0
    out = capsys.readouterr().out
    assert "# sft_data\n" in out and "# sft\n" in out
    assert "# iter_1/search" not in out and "# report" not in out
