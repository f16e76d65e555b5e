"""Recipes: validation errors that name the key or file, overrides, plugin names, and the shipped recipes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from openrlhf_psr.recipe import RecipeError, apply_override, load_recipe

pytestmark = pytest.mark.unit

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _write(tmp_path, data) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"name": "t", "model": "default", "data": {"eval": {"benchmarks": ["arith?n=4"]}}}


def test_misspelt_key_names_the_path_and_suggests_the_right_one(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml: psr.search: unknown key 'widht'; did you mean 'width'"):
        load_recipe(_write(tmp_path, {**BASE, "psr": {"search": {"widht": 4}}}))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml: dpo.beta: expected .*number.*, found 'high'"):
        load_recipe(_write(tmp_path, {**BASE, "dpo": {"beta": "high"}}))


def test_a_learning_rate_list_shorter_than_the_iterations_names_both_keys(tmp_path):
    short = {**BASE, "stages": {"iterations": 3}, "dpo": {"lr_per_iteration": [1e-5, 5e-6]}}
    with pytest.raises(RecipeError, match=r"r.yaml: dpo.lr_per_iteration: expected one learning rate per iteration "
                                          r"\(3, stages.iterations\), found 2"):  # fmt: skip
        load_recipe(_write(tmp_path, short))
    with pytest.raises(RecipeError, match=r"dpo.lr_per_iteration.0: expected .*greater than 0"):
        load_recipe(_write(tmp_path, {**BASE, "dpo": {"lr_per_iteration": [0]}}))


def test_missing_file_names_the_key_and_file(tmp_path):
    data = {**BASE, "data": {"ift": ["gsm8k:/no/such/train.jsonl?limit=10"]}}
    with pytest.raises(RecipeError, match=r"data.ift\[0\]: file /no/such/train.jsonl does not exist"):
        load_recipe(_write(tmp_path, data))
    with pytest.raises(RecipeError, match="recipe file .* does not exist"):
        load_recipe(tmp_path / "absent.yaml")
    # a search folder (on-policy EFT) is a folder: its absence is named as one, its presence is no problem
    missing = {**BASE, "data": {"eft": [f"search:{tmp_path / 'no_run'}/iter_1/search?limit=8"]}}
    with pytest.raises(RecipeError, match=rf"data.eft\[0\]: folder {tmp_path}/no_run/iter_1/search does not exist"):
        load_recipe(_write(tmp_path, missing))
    (tmp_path / "run" / "iter_1" / "search").mkdir(parents=True)
    found = load_recipe(_write(tmp_path, {**BASE, "data": {"eft": [f"search:{tmp_path / 'run'}/iter_1/search"]}}))
    assert found.data.eft == [f"search:{tmp_path / 'run'}/iter_1/search"]


def test_unknown_plugin_is_an_error_with_a_suggestion(tmp_path):
    with pytest.raises(RecipeError, match=r"psr.judge.name: unknown judges 'logitt'.*did you mean 'logit'"):
        load_recipe(_write(tmp_path, {**BASE, "psr": {"judge": {"name": "logitt"}}}))


def test_validation_is_fast_because_it_imports_no_heavy_stack(tmp_path):
    import subprocess

    bad = _write(tmp_path, {**BASE, "psr": {"search": {"widht": 4}}})
    code = (
        "import sys\nfrom openrlhf_psr.recipe import load_recipe, RecipeError\n"
        f"load_recipe({str(RECIPES / 'tiny_cpu.yaml')!r})\n"
        f"try:\n    load_recipe({str(bad)!r})\nexcept RecipeError:\n    pass\n"
        "print(sorted(m for m in ('torch', 'vllm', 'deepspeed', 'ray') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"recipe validation pulled in the heavy stack: {proc.stdout}"


def test_overrides_use_dotted_paths_with_yaml_values(tmp_path):
    swap = ["psr.judge.name=generative", "psr.judge.settings={}"]  # the logit judge's settings are not its
    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", [*swap, "psr.search.width=3", "stages.iterations=0"])
    assert recipe.psr.judge.name == "generative" and recipe.psr.search.width == 3 and recipe.stages.iterations == 0
    assert apply_override({}, "a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        apply_override({}, "psr.judge.name")


def test_paper_recipes_carry_the_papers_settings():
    seven = load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml") if (RECIPES.parent.parent / "shared").is_dir() else None
    if seven is None:
        pytest.skip("the paper recipes name ../shared/data files, absent outside the project workplace")
    s = seven.psr.search
    assert (s.width, s.temperature, s.top_p, s.max_rounds, s.tournament, s.both_orders) == (
        6, 0.5, 0.95, 20, "round_robin", True)  # fmt: skip
    assert (seven.dpo.epochs, seven.dpo.lr, seven.dpo.batch_size) == (1, 5e-7, 32)
    assert (seven.stages.sft.epochs, seven.stages.sft.lr, seven.stages.sft.batch_size) == (3, 1e-6, 32)
    assert seven.stages.prompts_per_iteration == [400, 800, 1200] and seven.stages.iterations == 3
    srlm = load_recipe(RECIPES / "srlm_baseline_7b.yaml")
    assert srlm.psr.method == "srlm" and srlm.psr.search.width == 4
    assert load_recipe(RECIPES / "psr_qwen2.5_math_72b.yaml").model == "Qwen/Qwen2.5-Math-72B"


def test_swapping_the_judge_by_name_alone_says_the_old_settings_stayed():
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPES / "tiny_cpu.yaml", ["psr.judge.name=generative"])  # tiny_cpu's logit has reason_tokens
    lines = str(info.value).splitlines()
    assert any("psr.judge.settings.reason_tokens: unknown setting" in line for line in lines), lines
    assert any("reason_tokens are settings of another judge" in line and "--set psr.judge.settings={}" in line
               for line in lines), lines  # fmt: skip
