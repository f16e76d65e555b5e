"""Training stages on a cluster, as commands: multi-node SFT and DPO placed by Ray (``cli/ray_train``), and
DeepSpeed checkpoints only where the recipe asks for them (by default none before the stage's end)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from openrlhf_psr.cli import ray_train
from openrlhf_psr.launcher import RecipeRun
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL_RECIPES = sorted(p.name for p in RECIPES.glob("*.yaml"))


def _training(run: RecipeRun) -> dict[str, list[str]]:
    return {s.name: s.command for s in run.plan() if s.name == "sft" or s.name.endswith("/dpo")}


def _last(cmd: list[str], flag: str) -> str | None:
    values = [cmd[k + 1] for k, x in enumerate(cmd[:-1]) if x == flag]
    return values[-1] if values else None


def test_the_72b_recipe_trains_on_both_nodes_placed_by_ray(tmp_path, recipe_data):
    run = RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_72b.yaml", recipe_data), runs_dir=tmp_path)
    assert run.recipe.cluster.nodes == 2 and run.recipe.cluster.gpus_per_node == 8
    commands = _training(run)
    assert set(commands) == {"sft", "iter_1/dpo", "iter_2/dpo", "iter_3/dpo"}
    for name, cmd in commands.items():
        module = "openrlhf.cli.train_sft" if name == "sft" else "openrlhf_psr.cli.train_step_dpo"
        k = cmd.index("openrlhf_psr.cli.ray_train")
        assert cmd[k - 1 : k + 6] == ["-m", "openrlhf_psr.cli.ray_train", "--nodes", "2", "--gpus-per-node", "8",
                                      module], name  # fmt: skip
        assert "deepspeed" not in cmd  # not a one-node `deepspeed --num_gpus 8` any more
    dry = run.dry_run()
    assert dry.count("openrlhf_psr.cli.ray_train --nodes 2 --gpus-per-node 8") == 4


def test_one_node_recipes_keep_the_deepspeed_launcher(tmp_path, recipe_data):
    run = RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", recipe_data), runs_dir=tmp_path)
    for cmd in _training(run).values():
        assert cmd[:3] == ["deepspeed", "--num_gpus", "8"] and "openrlhf_psr.cli.ray_train" not in cmd


def test_cpu_ranks_on_several_nodes(tmp_path):
    recipe = load_recipe(RECIPES / "tiny_cpu.yaml", ["cluster.nodes=2"])
    cmd = _training(RecipeRun(recipe, runs_dir=tmp_path))["sft"]
    k = cmd.index("openrlhf_psr.cli.ray_train")
    assert cmd[k + 1 : k + 5] == ["--nodes", "2", "--gpus-per-node", "0"]  # one CPU rank per node


def test_ray_train_hands_the_module_its_flags_unchanged():
    parser = argparse.ArgumentParser(prog="x")
    ray_train.add_arguments(parser)
    flags = ["--ds.zero_stage", "3", "--train.batch_size", "32", "--ckpt.load_enable", "--nodes", "9"]
    args = parser.parse_args(["--nodes", "2", "--gpus-per-node", "8", "openrlhf.cli.train_sft", *flags])
    assert (args.nodes, args.gpus_per_node, args.module, args.args) == (2, 8, "openrlhf.cli.train_sft", flags)
    env = ray_train.rank_env({"RANK": "0", "WORLD_SIZE": "1", "X": "y"}, 5, 16, ("10.1.2.3", 29400), cpu=False)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["X"]) == ("5", "16", "0", "y")


@pytest.mark.parametrize("name", ALL_RECIPES)
def test_no_deepspeed_checkpoint_before_a_stage_ends_by_default(name, tmp_path, recipe_data):
    # upstream: --ckpt.save_steps -1 saves no DeepSpeed checkpoint; the stage's model is saved at its end
    commands = _training(RecipeRun(load_recipe(RECIPES / name, recipe_data), runs_dir=tmp_path))
    assert commands
    for stage, cmd in commands.items():
        assert _last(cmd, "--ckpt.save_steps") == "-1", (stage, cmd)
        assert "--ckpt.load_enable" in cmd  # a stage run with periodic checkpoints resumes from its last one


def test_periodic_checkpoints_are_a_recipe_knob_and_openrlhf_flags_still_win(tmp_path, recipe_data):
    overrides = [*recipe_data, "cluster.sft.checkpoint_every=50", "cluster.dpo.checkpoint_every=5"]
    commands = _training(RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", overrides), runs_dir=tmp_path))
    assert _last(commands["sft"], "--ckpt.save_steps") == "50"
    assert {_last(c, "--ckpt.save_steps") for n, c in commands.items() if n != "sft"} == {"5"}
    overrides += ['openrlhf.dpo={"--ckpt.save_steps": 1}']
    commands = _training(RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", overrides), runs_dir=tmp_path))
    assert _last(commands["iter_1/dpo"], "--ckpt.save_steps") == "1"


def _start_head_args(tmp_path, *args, head_ip=None) -> list[str]:
    """``start_head.sh`` with a stand-in ``ray`` that records its arguments."""
    import json
    import os
    import subprocess
    import sys

    bin_dir, record = tmp_path / "bin", tmp_path / "ray_args.json"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ray").write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    (bin_dir / "ray").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("HEAD_IP", None)
    if head_ip:
        env["HEAD_IP"] = head_ip
    script = RECIPES.parent / "scripts" / "cluster" / "start_head.sh"
    subprocess.run(["bash", str(script), *args], env=env, check=True, capture_output=True)
    return json.loads(record.read_text())


def test_start_head_leaves_the_node_address_to_ray(tmp_path):
    # With --node-ip-address 0.0.0.0 (upstream's examples) Ray 2.55's dashboard agent binds 0.0.0.0:P and then
    # 127.0.0.1:P, which fails: no job can be submitted to that head ("No available agent to submit job").
    args = _start_head_args(tmp_path, "4")
    assert args[:1] == ["start"] and "--head" in args and "0.0.0.0" not in args[: args.index("--dashboard-host")]
    assert "--node-ip-address" not in args and args[args.index("--num-gpus") + 1] == "4"
    args = _start_head_args(tmp_path, "8", "--port", "7000", "--block", head_ip="10.0.0.5")
    assert args[args.index("--node-ip-address") + 1] == "10.0.0.5"
    assert args[-3:] == ["--port", "7000", "--block"]  # extra options reach `ray start`, after the defaults


def test_ray_train_doctests():
    import doctest

    result = doctest.testmod(ray_train)
    assert result.attempted >= 2 and result.failed == 0


def test_the_dry_run_shows_the_cpu_rank_environment_only_where_run_sets_it(tmp_path, recipe_data):
    """``run`` sets the single-process CPU environment (``RANK=0 ...``) only for local stages; a ``ray job submit``
    command printed with it would tell the user something the job never gets."""
    cpu = ["resources.num_gpus=0", *recipe_data]
    ray_job = RecipeRun(load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", cpu), runs_dir=tmp_path).dry_run()
    assert "ray job submit" in ray_job and "RANK=0" not in ray_job
    local = load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", [*cpu, "resources.launcher=local"])
    assert "RANK=0 WORLD_SIZE=1" in RecipeRun(local, runs_dir=tmp_path).dry_run()


def test_engines_the_ray_cluster_cannot_place_are_refused_in_one_line_instead_of_waiting_forever():
    """Upstream's placement group waits forever for GPUs the cluster lacks (seen: 8 engines asked of a 1-GPU head)."""
    import doctest

    from openrlhf_psr.engines import openrlhf_ray
    from openrlhf_psr.errors import UserError

    openrlhf_ray.check_engines_fit(8, 2, 4)
    with pytest.raises(UserError, match=r"^8 vLLM engines x tensor parallel 1 need 8 GPUs, the Ray cluster has 1: "):
        openrlhf_ray.check_engines_fit(1, 8, 1)
    assert doctest.testmod(openrlhf_ray).failed == 0
