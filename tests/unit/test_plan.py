"""``openrlhf-psr plan``: the memory arithmetic checked against hand calculations for 7B and 72B, the refusals and
the knobs they name, and the recipes' own hardware (every GPU recipe must fit what its cluster section states)."""

from __future__ import annotations

import argparse
import doctest
import json
from pathlib import Path

import pytest

from openrlhf_psr import plan as plan_module
from openrlhf_psr.cli import plan as plan_cli
from openrlhf_psr.plan import (
    KNOWN_SHAPES,
    Hardware,
    PlanError,
    TrainSettings,
    model_shape,
    plan_recipe,
    plan_training,
    plan_vllm,
)
from openrlhf_psr.recipe import load_recipe

pytestmark = pytest.mark.unit
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GPU_RECIPES = ["psr_qwen2.5_math_7b.yaml", "psr_qwen2.5_math_72b.yaml", "srlm_baseline_7b.yaml"]
GB = 1e9


def _lines(stage_plan) -> dict[str, float]:
    return {line.what.split(" (")[0]: line.gb for line in stage_plan.gpu}


def _stage(plans, name):
    return next(p for p in plans if p.stage == name)


def test_doctests():
    assert doctest.testmod(plan_module).failed == 0


def test_parameter_counts_by_hand():
    # Qwen2.5-Math-7B: h 3584, i 18944, 28 layers, 28 heads (head_dim 128), 4 KV heads (kv_dim 512), V 152064.
    # One layer: q 3584*3584 + 3584 (bias), k and v 3584*512 + 512 each, o 3584*3584, MLP 3*3584*18944, 2 norms.
    layer_7b = 12_845_056 + 3_584 + 2 * (1_835_008 + 512) + 12_845_056 + 203_685_888 + 2 * 3_584
    assert layer_7b == 233_057_792 == KNOWN_SHAPES["qwen2.5-math-7b"].layer_params
    # untied embedding and head 152064*3584 each, final norm 3584
    assert 2 * 544_997_376 + 28 * layer_7b + 3_584 == 7_615_616_512 == KNOWN_SHAPES["qwen2.5-math-7b"].params
    # Qwen2.5-Math-72B: h 8192, i 29568, 80 layers, 64 heads (128), 8 KV heads (kv_dim 1024)
    layer_72b = 67_108_864 + 8_192 + 2 * (8_388_608 + 1_024) + 67_108_864 + 726_663_168 + 2 * 8_192
    assert layer_72b == 877_684_736 == KNOWN_SHAPES["qwen2.5-math-72b"].layer_params
    assert 2 * 1_245_708_288 + 80 * layer_72b + 8_192 == 72_706_203_648 == KNOWN_SHAPES["qwen2.5-math-72b"].params
    # the small ones match their published sizes (0.49B, 1.54B, 135M)
    assert KNOWN_SHAPES["qwen2.5-0.5b"].params == 494_032_768
    assert KNOWN_SHAPES["qwen2.5-1.5b"].params == 1_543_714_304
    assert KNOWN_SHAPES["smollm2-135m"].params == 134_515_008


def test_7b_full_parameter_zero3_adam_on_8_gpus_by_hand():
    phi = 7_615_616_512
    shape, hw = KNOWN_SHAPES["qwen2.5-math-7b"], Hardware(1, 8, 80, 1000)
    dpo = TrainSettings(zero_stage=3, gradient_checkpointing=True, micro_batch_size=2, max_len=4096,
                        scored_tokens=1024, reference="cached", tree_mask=True)  # fmt: skip
    lines = _lines(plan_training("dpo", ["iter_1/dpo"], shape, hw, dpo))
    # ZeRO-3 over 8 GPUs: 2 + 2 + 12 bytes per parameter, all divided by 8 -> 2*phi bytes = 15.23 GB in all
    assert lines["weights"] == pytest.approx(2 * phi / 8 / GB) == pytest.approx(1.903904128)
    assert lines["gradients"] == pytest.approx(1.903904128)
    assert lines["Adam states"] == pytest.approx(12 * phi / 8 / GB) == pytest.approx(11.423424768)
    # micro batch 2 x 4096 = 8192 tokens, gradient checkpointing: layer inputs 28*8192*3584*2 bytes, plus one layer
    # recomputed with its gradients 2 * 8192 * (4*3584 + 2*512 + 4*18944 = 91136) * 2 bytes
    assert lines["activations"] * GB == pytest.approx(1_644_167_168 + 2_986_344_448)
    # logits at the two steps' positions only: 2 rows x 1024 positions x 152064 x 10 bytes
    assert lines["logits"] * GB == pytest.approx(3_114_270_720)
    assert lines["tree attention mask"] * GB == pytest.approx(2 * 4096**2 * 4)
    # ZeRO-3: current + prefetched layer and the embedding, bf16: 2 * (2*233057792 + 544997376)
    assert lines["ZeRO-3 gathered layers + embedding"] * GB == pytest.approx(2_022_225_920)
    total = 1.903904128 * 2 + 11.423424768 + 4.630511616 + 3.11427072 + 0.134217728 + 2.02222592 + 3.0
    plan = plan_training("dpo", ["iter_1/dpo"], shape, hw, dpo)
    assert plan.gpu_gb == pytest.approx(total) and plan.fits  # ~28.1 GB of 80


def test_7b_lora_step_dpo_keeps_gradients_and_adam_states_for_the_adapters_only(recipe_data):
    # all-linear LoRA of rank 16 on Qwen2.5-Math-7B, per layer: q and o 16*(3584+3584) each, k and v
    # 16*(3584+512) each, gate and up 16*(3584+18944) each, down 16*(18944+3584): 229,376 + 131,072 + 1,081,344
    per_layer = 2 * 114_688 + 2 * 65_536 + 3 * 360_448
    assert per_layer == 1_441_792 and KNOWN_SHAPES["qwen2.5-math-7b"].lora_params(16) == 28 * per_layer
    lora = 28 * per_layer  # 40,370,176
    shape, hw = KNOWN_SHAPES["qwen2.5-math-7b"], Hardware(1, 8, 80, 1000)
    lora_dpo = TrainSettings(zero_stage=2, reference="cached", lora_rank=16)
    plan = plan_training("dpo", ["iter_1/dpo"], shape, hw, lora_dpo)
    lines = _lines(plan)
    assert lines["weights"] == pytest.approx(2 * 7_615_616_512 / GB)  # the frozen model stays whole under ZeRO-2
    assert lines["gradients"] * GB == pytest.approx(2 * lora / 8)
    assert lines["Adam states"] * GB == pytest.approx(12 * lora / 8)  # 60.6 MB instead of 11.4 GB
    assert "LoRA rank 16: 40.4M parameters" in plan.gpu[1].what
    assert {line.what: line.gb for line in plan.host}["LoRA merge (rank 0 loads M(t) in bf16)"] == pytest.approx(
        15.231233024
    )
    # read from each stage's own pass-through flags
    recipe = load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", [*recipe_data, 'openrlhf.dpo={"--ds.lora.rank": 16}'])
    assert plan_module.training_settings(recipe, "dpo").lora_rank == 16
    assert plan_module.training_settings(recipe, "sft").lora_rank == 0
    recipe = load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", [*recipe_data, 'openrlhf.sft={"--ds.lora.rank": 8}'])
    assert plan_module.training_settings(recipe, "sft").lora_rank == 8
    # LoRA SFT: the same adapter-only states; its merge is the sft_merge stage, after training, not a training line
    sft = plan_training("sft", ["sft"], shape, hw, TrainSettings(zero_stage=2, lora_rank=16))
    assert _lines(sft)["Adam states"] * GB == pytest.approx(12 * lora / 8)
    assert not [line for line in sft.host if "merge" in line.what]


def test_7b_vllm_tp1_kv_cache_by_hand():
    shape, hw = KNOWN_SHAPES["qwen2.5-math-7b"], Hardware(1, 8, 80, 1000)
    p = plan_vllm("search", [], shape, hw, None, 1, 0.9, 4096, "search")
    # KV per token: 2 (K, V) x 28 layers x 4 KV heads x 128 x 2 bytes = 57,344; room 0.9*80 - 15.231 - 4 GB
    assert shape.kv_bytes_per_token(1) == 57_344
    room = 72e9 - 2 * 7_615_616_512 - 4e9
    assert _lines(p)["KV cache"] * GB == pytest.approx(room)
    assert f"{int(room // 57_344):,} tokens" in p.gpu[-1].what
    assert p.fits and "8 engine(s) x TP 1" in p.notes[0]


def test_72b_on_its_stated_hardware_by_hand(recipe_data):
    recipe = load_recipe(RECIPES / "psr_qwen2.5_math_72b.yaml", recipe_data)
    phi = 72_706_203_648
    plans = plan_recipe(recipe)
    assert all(p.fits for p in plans), [p.refusals for p in plans]
    assert "dpo (reference pass)" not in [p.stage for p in plans]  # live reference: no whole-model pass
    dpo = _stage(plans, "dpo")
    lines = _lines(dpo)
    # 2 nodes x 8 GPUs = 16 ranks, ZeRO-3, Adam offloaded: 2*phi/16 weights, 2*phi/16 gradients, nothing else
    assert lines["weights"] == pytest.approx(2 * phi / 16 / GB) == pytest.approx(9.088275456)
    assert lines["gradients"] == pytest.approx(9.088275456)
    assert lines["Adam states"] == 0
    assert lines["reference"] == pytest.approx(9.088275456)  # live, ZeRO-3 sharded like the policy's weights
    # 1 x 4096 tokens: 80*4096*8192*2 + 2*4096*(4*8192 + 2*1024 + 4*29568 = 153088)*2
    assert lines["activations"] * GB == pytest.approx(5_368_709_120 + 2_508_193_792)
    assert lines["logits"] * GB == pytest.approx(1024 * 152_064 * 10)
    assert lines["ZeRO-3 gathered layers + embedding"] * GB == pytest.approx(2 * (2 * 877_684_736 + 1_245_708_288))
    total = 3 * 9.088275456 + 7.876902912 + 1.55713536 + 0.067108864 + 6.00215552 + 3.0
    assert dpo.gpu_gb == pytest.approx(total)  # ~45.8 GB of 80
    # host: per node 8 ranks x (12 + 4 bytes) * phi / 16 = 8 * phi bytes = 581.6 GB, plus 8 processes x 4 GB
    assert dpo.host_gb == pytest.approx(8 * phi / GB + 32) == pytest.approx(613.649629184)
    search = _stage(plans, "search")
    assert _lines(search)["weights"] == pytest.approx(2 * phi / 8 / GB)  # TP 8: 18.2 GB per GPU
    assert KNOWN_SHAPES["qwen2.5-math-72b"].kv_bytes_per_token(8) == 2 * 80 * 1 * 128 * 2


def test_72b_as_it_was_is_refused_with_the_knobs_to_turn(recipe_data):
    """The 72B recipe's old settings: one node, DPO at ZeRO-3 without Adam offload, cached reference."""
    recipe = load_recipe(RECIPES / "psr_qwen2.5_math_72b.yaml", [
        *recipe_data, "cluster.nodes=1", "cluster.dpo.adam_offload=false", "psr.trainer.settings={}"])  # fmt: skip
    plans = {p.stage: p for p in plan_recipe(recipe)}
    dpo = plans["dpo"]
    # 16 bytes per parameter over 8 GPUs: 2 * 72.7e9 = 145.4 GB of states per GPU before anything else
    assert sum(_lines(dpo)[k] for k in ("weights", "gradients", "Adam states")) == pytest.approx(145.412407296)
    assert not dpo.fits and "cluster.dpo.adam_offload: true" in dpo.refusals[0]
    ref = plans["dpo (reference pass)"]
    assert not ref.fits and "psr.trainer.settings.reference: live" in ref.refusals[0]
    assert _lines(ref)["reference"] == pytest.approx(2 * 72_706_203_648 / GB)
    # SFT with Adam offload on one node: 16 bytes per parameter on one host = 1.16 TB > 1 TB -> more nodes
    sft = plans["sft"]
    assert not sft.fits and "raise cluster.nodes to 2" in sft.refusals[0]


def test_zero2_and_vllm_refusals_name_their_knobs():
    shape, hw = KNOWN_SHAPES["qwen2.5-math-72b"], Hardware(1, 8, 80, 1000)
    p = plan_training("sft", ["sft"], shape, hw, TrainSettings(zero_stage=2))
    assert not p.fits and "cluster.sft.zero_stage: 3" in p.refusals[0]
    p = plan_vllm("search", [], shape, hw, None, 1, 0.9, 4096, "search")  # 145 GB of weights on one GPU
    assert not p.fits and "raise cluster.search.tensor_parallel_size to 4" in p.refusals[-1]
    p = plan_vllm("eval", [], shape, hw, 2, 8, 0.9, 4096, "eval")
    assert not p.fits and "lower cluster.eval.engines" in p.refusals[0]
    p = plan_vllm("eval", [], shape, hw, None, 16, 0.9, 4096, "eval")
    assert "lower cluster.eval.tensor_parallel_size" in p.refusals[0]


def test_upstream_flags_win_over_the_cluster_section(recipe_data):
    recipe = load_recipe(RECIPES / "psr_qwen2.5_math_7b.yaml", [*recipe_data, 'openrlhf.dpo={"--ds.zero_stage": 1}'])
    assert plan_module.training_settings(recipe, "dpo").zero_stage == 1
    assert plan_module.training_settings(recipe, "sft").zero_stage == 3


def test_model_shape_from_local_config_and_unknown_models(tmp_path):
    config = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "tie_word_embeddings": True}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_shape(str(tmp_path)).params == KNOWN_SHAPES["qwen2.5-0.5b"].params
    assert model_shape("Qwen/Qwen2.5-Math-7B") is KNOWN_SHAPES["qwen2.5-math-7b"]
    assert model_shape("default") is KNOWN_SHAPES["smollm2-135m"]
    assert model_shape("HuggingFaceTB/SmolLM2-135M-Instruct") is KNOWN_SHAPES["smollm2-135m"]
    with pytest.raises(PlanError, match="no local config.json and not a known shape"):
        model_shape("org/unknown-13b")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(PlanError, match="config.json has no 'num_attention_heads'"):
        model_shape(str(tmp_path))


@pytest.mark.parametrize("name", [*GPU_RECIPES, "tiny_cpu.yaml"])
def test_every_recipe_fits_its_stated_hardware(name, capsys, recipe_data):
    args = argparse.Namespace(recipe=str(RECIPES / name), set=recipe_data)
    assert plan_cli.run(args) == 0, capsys.readouterr()
    assert "every stage fits" in capsys.readouterr().out


def test_cli_exit_codes(capsys, recipe_data):
    recipe = str(RECIPES / "psr_qwen2.5_math_72b.yaml")
    args = argparse.Namespace(recipe=recipe, set=[*recipe_data, "cluster.gpu_memory_gb=40"])
    assert plan_cli.run(args) == 1
    out = capsys.readouterr()
    assert "DOES NOT FIT" in out.out and "cannot fit" in out.err
    assert plan_cli.main(["nope.yaml"]) == 2  # the same one-line error handler as every command (cli.app)
    err = capsys.readouterr().err
    assert "openrlhf-psr: error:" in err and "nope.yaml does not exist" in err and "Traceback" not in err


def test_cpu_stages_show_the_recipes_host_limit_not_a_placeholder():
    from openrlhf_psr.plan import hardware

    recipe = load_recipe(RECIPES / "tiny_cpu.yaml")
    plans = plan_recipe(recipe)
    assert {p.host_limit_gb for p in plans} == {hardware(recipe).host_memory_gb}, [
        (p.stage, p.host_limit_gb) for p in plans
    ]
