"""The launcher's plan: stage order, the model chain M0 -> M1 -> M2, reference choice, cluster wrapping; and the
report built from stage outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrlhf_psr.launcher import RecipeRun
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _after(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_tiny_plan_orders_stages_and_chains_models(tmp_path):
    overrides = ["stages.iterations=2", "stages.prompts_per_iteration=[4, 6]"]
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", overrides), runs_dir=tmp_path)
    stages = {s.name: s for s in run.plan()}
    assert list(stages) == ["eval_m0", "sft_data", "sft", "eval_m1", "iter_1/search", "iter_1/dpo", "iter_1/eval",
                            "iter_2/search", "iter_2/dpo", "iter_2/eval", "report"]  # fmt: skip
    m1 = str(tmp_path / "tiny_cpu" / "sft" / "model")
    assert _after(stages["sft"].command, "--ckpt.output_dir") == m1
    assert stages["iter_1/search"].config["model"] == m1
    assert _after(stages["iter_1/dpo"].command, "--model.model_name_or_path") == m1
    assert _after(stages["iter_1/dpo"].command, "--ref.model_name_or_path") == m1  # reference = previous
    m2 = str(tmp_path / "tiny_cpu" / "iter_1" / "model")
    assert stages["iter_2/search"].config["model"] == m2
    assert _after(stages["iter_2/dpo"].command, "--ref.model_name_or_path") == m2
    # disjoint training prompts per iteration
    assert stages["iter_1/search"].config["subset"] == "0:4"
    assert stages["iter_2/search"].config["subset"] == "4:10"
    assert stages["sft"].distributed and stages["iter_1/dpo"].distributed and not stages["iter_1/search"].distributed


def test_reference_m1_knob_and_cluster_wrapping(tmp_path):
    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", ["stages.iterations=2", "stages.prompts_per_iteration=[4, 6]",
                                                     "dpo.reference=m1", "resources.launcher=ray_job",
                                                     "resources.num_gpus=8"])  # fmt: skip
    run = RecipeRun(recipe, runs_dir=tmp_path)
    stages = {s.name: s for s in run.plan()}
    m1 = str(tmp_path / "tiny_cpu" / "sft" / "model")
    assert _after(stages["iter_2/dpo"].command, "--ref.model_name_or_path") == m1
    assert stages["iter_2/dpo"].command[:4] == ["deepspeed", "--num_gpus", "8", "--module"]
    wrapped = run.wrap(stages["iter_1/search"])
    assert wrapped[:3] == ["ray", "job", "submit"] and wrapped[wrapped.index("--") + 1] == "python"
    assert json.loads(_after(wrapped, "--runtime-env-json"))["working_dir"] == "."


def test_each_iteration_trains_at_its_own_learning_rate_when_the_recipe_lists_them(tmp_path):
    two = ["stages.iterations=2", "stages.prompts_per_iteration=[4, 6]", "dpo.lr=1e-5"]
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", [*two, "dpo.lr_per_iteration=[1e-5, 5e-6]"]), tmp_path)
    stages = {s.name: s for s in run.plan()}
    assert [float(_after(stages[f"iter_{t}/dpo"].command, "--adam.lr")) for t in (1, 2)] == [1e-5, 5e-6]
    # without the list every iteration keeps `lr`, so a run that adds the list with lr's value first resumes its
    # first iteration (same command) and reruns only the later ones
    plain = {s.name: s for s in RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", two), tmp_path).plan()}
    assert [float(_after(plain[f"iter_{t}/dpo"].command, "--adam.lr")) for t in (1, 2)] == [1e-5, 1e-5]
    assert plain["iter_1/dpo"].command == stages["iter_1/dpo"].command


def test_report_builds_tables_plots_and_json_from_stage_outputs(tmp_path):
    from openrlhf_psr.cli.report import build_report

    run = tmp_path / "r"

    def ev(path, acc, steps):
        path.mkdir(parents=True)
        metrics = {"accuracy": acc, "boxed_rate": 0.5, "step_marker_rate": 0.25, "mean_steps": steps,
                   "mean_step_tokens": 20.0}  # fmt: skip
        judges = {"logit/builtin": {"accuracy": 0.5, "consistency": 0.0, "abstention_rate": 0.0,
                                    "prob_accuracy": 0.6, "always_a_rate": 1.0}}  # fmt: skip
        (path / "eval.json").write_text(json.dumps({"benchmarks": {"arith": {"metrics": metrics}}, "judges": judges}))

    ev(run / "m0" / "eval", 0.1, 2.0)
    ev(run / "sft" / "eval", 0.4, 3.0)
    ev(run / "iter_1" / "eval", 0.5, 3.5)
    summary = build_report(run)
    assert list(summary["models"]) == ["M0", "M1", "M2"]
    assert summary["models"]["M2"]["average"] == 0.5
    table = (run / "report" / "summary.md").read_text()
    assert "| M1 | 40.0 | 40.0 |" in table and "P(better) accuracy" in table
    assert (run / "report" / "accuracy_and_steps.png").stat().st_size > 1000


def test_cluster_scripts_are_valid_bash():
    import subprocess

    scripts = sorted((Path(__file__).resolve().parents[2] / "scripts").rglob("*.sh"))
    scripts += sorted((Path(__file__).resolve().parents[2] / "scripts" / "cluster").glob("*.sbatch"))
    assert len(scripts) >= 5
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_m0_can_be_evaluated_on_benchmarks_alone(tmp_path):
    def eval_stages(*overrides):
        every = ["data.eval.judges_every_iteration=on"]  # tiny_cpu scores the judge on M1 only
        run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", [*every, *overrides]), runs_dir=tmp_path)
        return {s.name: s.config for s in run.plan() if s.name.startswith("eval_m") or s.name.endswith("/eval")}

    judged = eval_stages("data.eval.judges_before_training=on")
    assert all(c["judge_sets"] for c in judged.values())
    plain = eval_stages("data.eval.judges_before_training=off")
    assert plain["eval_m0"]["judge_sets"] == [] and plain["eval_m0"]["benchmarks"] == judged["eval_m0"]["benchmarks"]
    assert plain["eval_m1"]["judge_sets"] == plain["iter_1/eval"]["judge_sets"] == judged["eval_m1"]["judge_sets"]
    # with no benchmarks and no M0 judging there is nothing to evaluate before training
    assert "eval_m0" not in eval_stages("data.eval.judges_before_training=off", "data.eval.benchmarks=[]")


def test_without_sft_m0_is_the_first_searchs_judge_and_its_judges_are_scored(tmp_path):
    """With SFT off, M0 is M1 (the search's judge). Judges off before training and off every iteration used to leave
    the run's only judge unscored: no evaluation of any model had a judge set."""

    def eval_stages(*overrides):
        quiet = ["stages.sft.enabled=off", "data.eval.judges_before_training=off"]
        quiet += ["data.eval.judges_every_iteration=off"]
        run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", [*quiet, *overrides]), runs_dir=tmp_path)
        return {s.name: s.config for s in run.plan() if s.name.startswith("eval_m") or s.name.endswith("/eval")}

    stages = eval_stages()
    assert sorted(stages) == ["eval_m0", "iter_1/eval"]
    assert stages["eval_m0"]["judge_sets"] and stages["iter_1/eval"]["judge_sets"] == []
    assert sorted(eval_stages("data.eval.benchmarks=[]")) == ["eval_m0"]
    # with SFT, M0 is not the search's judge: judges_before_training still turns its judge pass off
    with_sft = eval_stages("stages.sft.enabled=on")
    assert with_sft["eval_m0"]["judge_sets"] == [] and with_sft["eval_m1"]["judge_sets"]


def test_lora_sft_trains_an_adapter_then_merges_it_into_m1_for_the_engines(tmp_path):
    """Upstream's train_sft with ``--ds.lora.rank`` saves the adapter alone; M1 must be a whole model, so an
    ``sft_merge`` stage (upstream's lora_combiner) writes it, and only that marks M1 done."""
    lora = 'openrlhf.sft={"--ds.packing_samples": true, "--ds.lora.rank": 8}'
    run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", [lora]), runs_dir=tmp_path)
    stages = {s.name: s for s in run.plan()}
    names = list(stages)  # in the order they run
    assert names[names.index("sft") : names.index("sft") + 3] == ["sft", "sft_merge", "eval_m1"]
    sft, merge = stages["sft"], stages["sft_merge"]
    adapter = run.layout.sft_adapter()
    assert sft.command[sft.command.index("--ckpt.output_dir") + 1] == str(adapter)
    assert sft.output == adapter / "adapter_config.json"
    assert merge.command[2] == "openrlhf.cli.lora_combiner" and merge.output == run.layout.model(1) / "config.json"
    assert merge.command[merge.command.index("--lora_path") + 1] == str(adapter)
    assert merge.command[merge.command.index("--output_path") + 1] == str(run.layout.model(1))
    assert stages["iter_1/search"].config["model"] == str(run.layout.model(1))
    # full-parameter SFT: no merge, SFT writes M1 itself
    plain = {s.name: s for s in RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml"), runs_dir=tmp_path).plan()}
    assert "sft_merge" not in plain and plain["sft"].output == run.layout.model(1) / "config.json"


def test_the_trained_models_can_be_evaluated_on_benchmarks_alone(tmp_path):
    """``judges_every_iteration: off`` scores the judges on M1 only; M2, M3 run their benchmarks (the demo's last
    evaluation without its ~50 s judge pass)."""

    def eval_stages(*overrides):
        two = ["stages.iterations=2", "stages.prompts_per_iteration=[16,16]"]
        run = RecipeRun(load_recipe(RECIPES / "tiny_cpu.yaml", [*two, *overrides]), runs_dir=tmp_path)
        return {s.name: s.config for s in run.plan() if s.name.startswith("eval_m") or s.name.endswith("/eval")}

    every = eval_stages("data.eval.judges_every_iteration=on")
    assert every["eval_m1"]["judge_sets"] and every["iter_1/eval"]["judge_sets"] and every["iter_2/eval"]["judge_sets"]
    first = eval_stages("data.eval.judges_every_iteration=off")
    assert first["eval_m1"]["judge_sets"] == every["eval_m1"]["judge_sets"]
    assert first["iter_1/eval"]["judge_sets"] == first["iter_2/eval"]["judge_sets"] == []
    assert first["iter_2/eval"]["benchmarks"] == every["iter_2/eval"]["benchmarks"] != []
    # judges alone, scored on M1 only: the trained models have nothing to evaluate
    judges_only = eval_stages("data.eval.judges_every_iteration=off", "data.eval.benchmarks=[]")
    assert sorted(judges_only) == ["eval_m1"]
