"""One run layout (issue 9): the launcher writes, the trainer plugin names and the report reads a run folder's
paths through :mod:`openrlhf_psr.layout`, so what one stage writes is where the next one looks."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from openrlhf_psr import layout as layout_module
from openrlhf_psr.cli.report import build_report
from openrlhf_psr.launcher import RecipeRun, Stage
from openrlhf_psr.layout import RunLayout
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _flag(stage: Stage, flag: str) -> Path:
    """A path setting of a stage: a flag of its command, or a key of the config its command reads."""
    command = stage.settings_args()
    return Path(command[command.index(flag) + 1])


def test_every_stage_of_a_run_reads_and_writes_the_layouts_paths(tmp_path):
    run = RecipeRun(
        load_recipe(RECIPES / "tiny_cpu.yaml", ["stages.iterations=2", "stages.prompts_per_iteration=[4, 4]"]),
        runs_dir=tmp_path,
    )
    layout = run.layout
    assert layout == RunLayout(tmp_path / "tiny_cpu") and run.manifest_path == layout.manifest()
    stages = {stage.name: stage for stage in run.plan()}
    for stage in stages.values():
        assert stage.log == layout.log(stage.name) and layout.root in stage.output.parents
    assert stages["sft_data"].output == layout.sft_data()
    assert _flag(stages["sft"], "--ckpt.output_dir") == layout.model(1)
    assert _flag(stages["sft"], "--ckpt.path") == layout.sft_ckpt()
    for t in (1, 2):
        search, dpo = stages[f"iter_{t}/search"], stages[f"iter_{t}/dpo"]
        assert Path(search.config["out"]) == layout.search(t) and search.output == layout.search_summary(t)
        assert Path(search.config["model"]) == layout.model(t)  # M(t) searches in iteration t (its stage config)
        assert _flag(dpo, "--data.dataset") == layout.search(t)  # trains on that search's pairs
        assert _flag(dpo, "--ckpt.output_dir") == layout.model(t + 1)
        assert _flag(dpo, "--ckpt.path") == layout.dpo_ckpt(t)
        assert _flag(dpo, "--logger.tensorboard_dir") == layout.dpo_tb(t)
        assert dpo.output == layout.model(t + 1) / "config.json"
        evaluation = stages[f"iter_{t}/eval"]
        assert evaluation.output == layout.eval_result(t + 1)
        assert Path(evaluation.config["model"]) == layout.model(t + 1)
    assert stages["report"].output == layout.report_json()


def test_the_report_finds_every_evaluation_and_search_in_model_and_iteration_order(tmp_path):
    """Iteration 10 comes after iteration 2 (a sort of folder names put it first)."""
    layout = RunLayout(tmp_path / "runs" / "demo")
    metrics = {"accuracy": 0.5, "boxed_rate": 1.0, "step_marker_rate": 1.0, "mean_steps": 3.0,
               "mean_step_tokens": 20.0, "n": 2}  # fmt: skip
    result = {"benchmarks": {"arith": {"metrics": metrics, "records": []}}, "judges": {}}
    for k in (0, 1, 3, 11):  # M2 never evaluated; M11 from iteration 10
        layout.eval(k).mkdir(parents=True)
        layout.eval_result(k).write_text(json.dumps(result))
    for t in (1, 2, 10):
        layout.search(t).mkdir(parents=True)
        layout.search_summary(t).write_text(json.dumps({"problems": t}))
    layout.iteration(3).mkdir()  # started, nothing finished
    summary = build_report(layout.root)
    assert list(summary["models"]) == ["M0", "M1", "M3", "M11"]
    assert list(summary["search"]) == ["iter_1", "iter_2", "iter_10"]
    assert [name for name, _ in layout.searches()] == ["iter_1", "iter_2", "iter_10"]
    assert all(path.is_file() for path in (layout.report_markdown(), layout.report_json(), layout.report_plot()))


def test_numbers_below_the_first_iteration_or_trained_model_are_refused():
    layout = RunLayout("runs/demo")
    with pytest.raises(ValueError, match="iteration >= 1, found 0"):
        layout.search(0)
    with pytest.raises(ValueError, match="trained model number >= 1, found 0"):
        layout.model(0)  # M0 is the recipe's model, not a folder of the run
    assert layout.iterations() == [] and layout.evaluations() == []  # no folder: nothing finished
    assert doctest.testmod(layout_module).failed == 0
