"""The recipe preflight (``run --dry-run``) and the single-process environment of a stage run by hand."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_psr.preflight import run_preflight, single_process_env

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_single_process_env_is_rank_0_of_1_and_cpu_only_on_cpu():
    cpu = single_process_env(cpu=True, base={"PATH": "/bin"})
    gpu = single_process_env(cpu=False, base={"PATH": "/bin"})
    for env in (cpu, gpu):
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "0", "1", "127.0.0.1")
        assert int(env["MASTER_PORT"]) > 0 and env["PATH"] == "/bin"
    assert cpu["DS_ACCELERATOR"] == "cpu" and "DS_ACCELERATOR" not in gpu


def test_a_run_folder_outside_the_runs_folder_and_a_missing_model_are_problems(tmp_path):
    from openrlhf_psr.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "tiny_cpu.yaml").model_copy(update={"model": str(tmp_path / "nomodel")})
    outside = SimpleNamespace(recipe=recipe, root=tmp_path / "elsewhere" / "x", plan=lambda: [])
    problems, _ = run_preflight(outside, tmp_path / "runs")
    assert any(p.startswith("name: the run folder") and "outside the runs folder" in p for p in problems), problems
    assert any(p.startswith("model: ") and "config.json" in p for p in problems), problems


def test_prompt_counts_are_checked_against_the_problems_a_file_holds(tmp_path):
    import json

    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import load_recipe

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(6)))
    overrides = [f"data.prompts.source=jsonl:{data}", "stages.iterations=2", "stages.prompts_per_iteration=[4, 4]"]
    run = RecipeRun(load_recipe(REPO / "recipes" / "tiny_cpu.yaml", overrides), runs_dir=tmp_path / "runs")
    problems, _ = run_preflight(run, tmp_path / "runs")
    assert problems == ["stages.prompts_per_iteration: [4, 4] need 8 problems over 2 iteration(s), found 6 in "
                        f"jsonl:{data}"]  # fmt: skip


def test_cpu_sft_that_packs_many_rows_per_sequence_gets_a_note(tmp_path):
    from openrlhf_psr.launcher import RecipeRun
    from openrlhf_psr.recipe import load_recipe

    def notes(*overrides):
        run = RecipeRun(load_recipe(REPO / "recipes" / "tiny_cpu.yaml", list(overrides)), runs_dir=tmp_path / "runs")
        return [n for n in run_preflight(run, tmp_path / "runs")[1] if "packed sequence" in n]

    assert notes() == []  # the recipe's own two rows per pack
    [note] = notes("stages.sft.micro_batch_size=16")
    assert note.startswith("stages.sft.micro_batch_size: 16 rows per packed sequence on CPU"), note
    assert notes("stages.sft.micro_batch_size=16", "openrlhf.sft={ds.packing_samples: false}") == []  # padded rows
    assert notes("openrlhf.sft={ds.packing_samples: true, train.micro_batch_size: 8}") != []  # the flag wins
