"""Step-level DPO: tokenisation at the step boundary, the shared-prefix forward, and real CPU training runs through
OpenRLHF's DPOTrainer + DeepSpeed (gloo): falling loss, growing margin, resume, vLLM loads the result; and SFT."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

from openrlhf_psr.data.sft import builtin_step_pairs
from openrlhf_psr.preflight import cpu_distributed_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_steps_are_tokenised_apart_from_the_prefix_with_eos_only_on_final_steps(tokenizer, tmp_path):
    from openrlhf_psr.data.step_pairs import StepPairDataset, pairs_from_jsonl
    from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt

    # "carpet" would merge across a "car" | "pet" boundary if the joined string were tokenised
    row = {"prompt": "Q?", "prefix_steps": ["Step 1: a car"], "chosen": "pet", "rejected": "Step 2: \\boxed{3}"}
    [pair] = pairs_from_jsonl(_write(tmp_path / "p.jsonl", [row]), tokenizer, prefix_key="prefix_steps")
    prompt = prompt_token_ids(tokenizer, render_step_prompt("Q?"))
    prefix = tokenizer.encode("Step 1: a car\n", add_special_tokens=False)
    assert list(pair.prompt_ids) == prompt + prefix
    assert list(pair.chosen_ids) == tokenizer.encode("pet", add_special_tokens=False)  # no EOS: not final
    assert tokenizer.encode("a carpet", add_special_tokens=False) != tokenizer.encode(
        "a car", add_special_tokens=False
    ) + tokenizer.encode("pet", add_special_tokens=False)  # the merge the separate tokenisation avoids
    assert pair.rejected_ids[-1] == tokenizer.eos_token_id  # boxed: final step ends with EOS
    assert pair.rejected_ids[:-1] == tuple(tokenizer.encode("Step 2: \\boxed{3}", add_special_tokens=False))

    dataset = StepPairDataset([pair], max_len=10_000, pad_token_id=tokenizer.pad_token_id)
    ids, segments, positions = dataset.items[0]
    assert segments.count(2) == len(pair.chosen_ids) and segments.count(3) == len(pair.rejected_ids)
    assert ids[: len(pair.prompt_ids)] == list(pair.prompt_ids)


def test_bad_rows_are_counted_and_long_rows_keep_the_question_and_the_latest_steps(tokenizer, tmp_path):
    from openrlhf_psr.data.step_pairs import StepPair, StepPairDataset, pairs_from_jsonl

    pairs = [
        StepPair(tuple(range(10, 60)), (1, 2), (3, 4), "long", question_len=5),
        StepPair(tuple(range(10, 60)), (1, 2), (3, 4), "long-question-unknown"),
        StepPair((5, 6), (7,), (7,), "same"),
        StepPair((5, 6), (), (7,), "empty"),
        StepPair((5, 6), tuple(range(20)), tuple(range(20, 40)), "steps-too-long"),
        StepPair((5, 6), (7,), (8,), "ok"),
    ]
    dataset = StepPairDataset(pairs, max_len=24, pad_token_id=0)
    s = dataset.stats
    assert (s.rows, s.kept, s.skipped_identical, s.skipped_empty, s.dropped_too_long) == (6, 2, 1, 1, 2)
    assert s.truncated_prefix == 1 and s.truncated_tokens == 50 - 20  # 50 prefix tokens, room for 20
    ids, segments, _ = dataset.items[0]
    # the question (5 ids) and the newest 15 prefix ids survive, and both steps
    assert ids[:20] == list(range(10, 15)) + list(range(45, 60)) and ids[20:] == [1, 2, 3, 4]
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "rejected": "b"}]
    with pytest.raises(KeyError, match=r"p.jsonl:2: missing field 'chosen'"):
        list(pairs_from_jsonl(_write(tmp_path / "p.jsonl", rows), tokenizer))


def test_shared_prefix_log_probs_equal_two_full_forwards(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from openrlhf_psr.data.step_pairs import StepPair, StepPairDataset
    from openrlhf_psr.trainers.shared_prefix import branch_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    rng = random.Random(0)
    pairs = [
        StepPair(
            tuple(rng.randrange(100, 5000) for _ in range(rng.randint(3, 40))),
            tuple(rng.randrange(100, 5000) for _ in range(rng.randint(1, 12))),
            tuple(rng.randrange(100, 5000) for _ in range(rng.randint(1, 12))),
            str(k),
        )
        for k in range(5)
    ]
    dataset = StepPairDataset(pairs, max_len=1000, pad_token_id=0)
    ids, segments, positions, _, _ = dataset.collate_fn([dataset[i] for i in range(len(dataset))])

    def full(prefix, step):
        with torch.no_grad():
            logits = model(torch.tensor([list(prefix) + list(step)])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        return sum(logp[len(prefix) - 1 + k, t].item() for k, t in enumerate(step))

    with torch.no_grad():
        chosen, rejected, n_chosen, n_rejected = branch_logps(model, ids, segments, positions)
    for k, pair in enumerate(pairs):
        # within 1e-5 per token (fp32 sums of up to 12 log-probs near -8 each)
        tol_c, tol_r = 1e-5 * len(pair.chosen_ids), 1e-5 * len(pair.rejected_ids)
        assert chosen[k].item() == pytest.approx(full(pair.prompt_ids, pair.chosen_ids), abs=tol_c)
        assert rejected[k].item() == pytest.approx(full(pair.prompt_ids, pair.rejected_ids), abs=tol_r)
        assert (n_chosen[k], n_rejected[k]) == (len(pair.chosen_ids), len(pair.rejected_ids))


def _scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run in sorted(p for p in tb_dir.iterdir() if p.is_dir()):
        events = EventAccumulator(str(run))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            out.update({e.step: e.value for e in events.Scalars(tag)})
    return [out[k] for k in sorted(out)], sorted(out)


def _train(tmp_path, data, *extra, tb="tb"):
    cmd = [
        sys.executable, "-m", "openrlhf_psr.cli.train_step_dpo",
        "--model.model_name_or_path", "default", "--data.dataset", str(data),
        "--data.max_len", "512", "--train.micro_batch_size", "4", "--train.batch_size", "8",
        "--adam.lr", "2e-5", "--lr_warmup_ratio", "0", "--lr_scheduler", "constant", "--model.beta", "0.1",
        "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--ckpt.output_dir", str(tmp_path / "out"), "--ckpt.path", str(tmp_path / "ckpt"),
        "--logger.logging_steps", "1", "--logger.tensorboard_dir", str(tmp_path / tb), *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=cpu_distributed_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


VLLM_GENERATE = textwrap.dedent(
    """
    import json, sys
    if __name__ == "__main__":
        from vllm import SamplingParams
        from openrlhf_psr.engines.vllm_local import create_llm
        llm = create_llm(sys.argv[1], enforce_eager=True, max_model_len=512)
        [out] = llm.generate(["Ava has 3 coins."], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
        print("RESULT", json.dumps(list(out.outputs[0].token_ids)), flush=True)
    """
)


def test_step_dpo_on_the_default_model_learns_resumes_and_serves(tmp_path):
    data = _write(tmp_path / "pairs.jsonl", builtin_step_pairs(32))
    # first run: one epoch (4 steps), a DeepSpeed checkpoint every 2 steps
    first = _train(tmp_path, data, "--train.max_epochs", "1", "--ckpt.save_steps", "2")
    losses, steps = _scalars(tmp_path / "tb", "train/loss")
    assert steps == [1, 2, 3, 4] and abs(losses[0] - 0.6931) < 0.01  # policy == cached reference at the start
    assert "reference log-probs" in first.stderr and (tmp_path / "out" / "step_pair_stats.json").is_file()
    # second run: resume from the step-4 checkpoint and train a second epoch
    second = _train(tmp_path, data, "--train.max_epochs", "2", "--ckpt.save_steps", "2", "--ckpt.load_enable",
                    tb="tb2")  # fmt: skip
    assert "consumed_samples: 32" in second.stdout + second.stderr
    losses2, steps2 = _scalars(tmp_path / "tb2", "train/loss")
    assert steps2 == [5, 6, 7, 8]  # continued at the same step, not from 1
    margins = [c - r for c, r in zip(_scalars(tmp_path / "tb", "train/chosen_reward")[0]
                                     + _scalars(tmp_path / "tb2", "train/chosen_reward")[0],
                                     _scalars(tmp_path / "tb", "train/reject_reward")[0]
                                     + _scalars(tmp_path / "tb2", "train/reject_reward")[0], strict=True)]  # fmt: skip
    all_losses = losses + losses2
    assert sum(all_losses[-3:]) / 3 < sum(all_losses[:3]) / 3 - 0.02, all_losses
    assert sum(margins[-3:]) / 3 > sum(margins[:3]) / 3, margins
    # the cached reference log-probs were reused, not recomputed, on resume
    assert "reference log-probs" not in second.stderr
    gen = subprocess.run([sys.executable, "-c", VLLM_GENERATE, str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-4000:]
    [line] = [x for x in gen.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(json.loads(line.removeprefix("RESULT "))) == 5


def test_lora_step_dpo_leaves_a_whole_merged_model_for_the_next_stage(tmp_path, default_model):
    import torch
    from safetensors.torch import load_file

    data = _write(tmp_path / "pairs.jsonl", builtin_step_pairs(16))
    # the flags a recipe passes through as openrlhf.dpo: {--ds.lora.rank: 8, --ds.lora.alpha: 16}
    proc = _train(tmp_path, data, "--train.max_epochs", "1", "--ds.lora.rank", "8", "--ds.lora.alpha", "16",
                  "--adam.lr", "1e-3")  # fmt: skip
    out = tmp_path / "out"
    assert (out / "lora_adapter" / "adapter_config.json").is_file() and "merged into" in proc.stdout + proc.stderr
    # a whole model under the base model's own names (what the next stage's engine loads), not an adapter
    base, merged = load_file(f"{default_model}/model.safetensors"), load_file(out / "model.safetensors")
    assert set(merged) == set(base)
    # in --ds.param_dtype, as a full-parameter save writes it
    q, embed = "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"
    assert merged[q].dtype == merged[embed].dtype == torch.bfloat16
    assert not merged[q].equal(base[q].to(torch.bfloat16))  # the adapter's update is in the weights
    assert merged[embed].equal(base[embed].to(torch.bfloat16))  # and LoRA left the embedding alone


def test_pairs_from_another_tokenizer_are_refused(tmp_path):
    from openrlhf_psr.io import ShardStore

    ShardStore(tmp_path / "search").commit(
        {
            "pairs": [
                {
                    "problem_id": "p",
                    "step_index": 0,
                    "prompt_ids": [1, 2, 10**6],
                    "chosen_ids": [3],
                    "rejected_ids": [4],
                }
            ]
            * 8,
            "trajectories": [{"problem_id": "p"}],
        }  # fmt: skip
    )
    cmd = [sys.executable, "-m", "openrlhf_psr.cli.train_step_dpo", "--model.model_name_or_path", "default",
           "--data.dataset", str(tmp_path / "search"), "--train.micro_batch_size", "4", "--train.batch_size", "8",
           "--ds.param_dtype", "bf16", "--ckpt.output_dir", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, env=cpu_distributed_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "tokenised for another model" in proc.stderr


def test_sft_on_ift_and_eft_data_through_upstream_train_sft_lowers_the_loss(tmp_path):
    from openrlhf_psr.cli.sft_data import build

    records = build(["builtin:arith?n=16"], ["builtin:arith?n=8"])
    assert sum(r["kind"] == "eft" for r in records) == 16  # both orders of 8 judged pairs
    assert sum(r["output"].endswith("[[A]]") for r in records) == sum(r["output"].endswith("[[B]]") for r in records)
    data = _write(tmp_path / "sft.jsonl", records)
    cmd = [
        sys.executable, "-m", "openrlhf.cli.train_sft", "--model.model_name_or_path", "default",
        "--data.dataset", str(data), "--data.input_key", "input", "--data.output_key", "output",
        "--data.apply_chat_template", "--data.max_len", "640",
        "--train.micro_batch_size", "4", "--train.batch_size", "8", "--train.max_epochs", "2",
        "--adam.lr", "5e-5", "--lr_warmup_ratio", "0", "--ds.zero_stage", "2", "--ds.param_dtype", "bf16",
        "--ds.attn_implementation", "sdpa", "--ckpt.output_dir", str(tmp_path / "out"),
        "--ckpt.path", str(tmp_path / "ckpt"), "--logger.logging_steps", "1",
        "--logger.tensorboard_dir", str(tmp_path / "tb"),
    ]  # fmt: skip
    # the launcher resolves "default"; here the CLI is upstream's own, so resolve it first
    from openrlhf_psr.model_cache import resolve_model

    cmd[cmd.index("default")] = resolve_model("default")
    proc = subprocess.run(cmd, env=cpu_distributed_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    losses, steps = _scalars(tmp_path / "tb", "train/gpt_loss")
    assert len(losses) >= 6
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert (tmp_path / "out" / "model.safetensors").is_file()
