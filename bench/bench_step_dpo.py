"""Step-DPO training throughput and peak memory: this trainer against upstream's DPOTrainer + RewardDataset.

    .venv/bin/python bench/bench_step_dpo.py [--pairs 48] [--model default] [--zero-stage 2]

Both runs train the same model on the same step pairs with the same batch, optimiser and DeepSpeed settings, as
real CLI runs (``python -m openrlhf.cli.train_dpo`` with prompt = problem + prefix text, and
``python -m openrlhf_psr.cli.train_step_dpo`` with the same rows as plain step pairs). Pairs come from the
human-labelled PRM800K train positions when ../shared/data is present (realistic lengths), else the built-in task;
only pairs that fit ``--max-len`` whole are used, so neither side drops or truncates anything.

Printed: pair tokens/s in the training loop (from the TensorBoard event times of steps 2..N, so start-up is
excluded; "pair tokens" = (P + C) + (P + R) per pair, the work two full forwards would do), the same end to end
(wall time including start-up and, for this trainer, the one-off reference pass), peak RSS of each run, the ratios,
and the FLOP ceiling 2(P+S)/(P+2S) of sharing the prefix, for the data's median P (prompt+prefix) and S (step).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_rows(n: int, tokenizer, max_len: int, seed: int = 0) -> list[dict]:
    from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt

    prm = SHARED / "train" / "prm800k_phase1_train.stepwise.parquet"
    rows = []
    if prm.is_file():
        from openrlhf_psr.data.prm800k import human_step_pairs

        for p in human_step_pairs(prm):  # steps numbered already; "\n" separates a non-final step from the next
            rows.append(replace(p, better=p.better + "\n", worse=p.worse + "\n", is_final=False).to_json())
    else:
        from openrlhf_psr.data.sft import builtin_step_pairs

        rows = builtin_step_pairs(4 * n, seed)
    random.Random(seed).shuffle(rows)
    kept = []
    for r in rows:
        prompt = prompt_token_ids(tokenizer, render_step_prompt(r["prompt"])) + tokenizer.encode(
            "".join(s + "\n" for s in r["prefix_steps"]), add_special_tokens=False
        )
        c = tokenizer.encode(r["chosen"], add_special_tokens=False)
        rj = tokenizer.encode(r["rejected"], add_special_tokens=False)
        if len(prompt) + max(len(c), len(rj)) + 4 < max_len:
            r["_lens"] = (len(prompt), len(c), len(rj))
            kept.append(r)
        if len(kept) == n:
            break
    return kept


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GiB of the training process and its descendants, stderr)."""
    from _memory import PeakRSS

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakRSS(pid=proc.pid) as memory:
        stderr = proc.stderr.read()
        proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2]} failed:\n{stderr[-3000:]}")
    return wall, memory.gib()[1], stderr


def loop_seconds(tb_dir: Path) -> tuple[float, int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run_dir] = [p for p in tb_dir.iterdir() if p.is_dir()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    loss = events.Scalars("train/loss")
    return loss[-1].wall_time - loss[0].wall_time, len(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=768)
    parser.add_argument("--zero-stage", default="2")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from openrlhf_psr.model_cache import resolve_model
    from openrlhf_psr.preflight import cpu_distributed_env
    from openrlhf_psr.prompts import render_step_prompt

    model = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = make_rows(args.pairs, tokenizer, args.max_len)
    lens = [r.pop("_lens") for r in rows]
    p_med = statistics.median(p for p, _, _ in lens)
    s_med = statistics.median([c for _, c, _ in lens] + [r for _, _, r in lens])
    pair_tokens = sum(2 * p + c + r for p, c, r in lens)
    ceiling = 2 * (p_med + s_med) / (p_med + 2 * s_med)
    common = [
        "--model.model_name_or_path", model, "--data.max_len", str(args.max_len),
        "--train.micro_batch_size", str(args.micro_batch), "--train.batch_size", str(args.batch),
        "--train.max_epochs", "1", "--adam.lr", "1e-6", "--lr_warmup_ratio", "0", "--model.beta", "0.1",
        "--ds.zero_stage", args.zero_stage, "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--logger.logging_steps", "1",
    ]  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps_data = tmp / "steps.jsonl"
        steps_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        # upstream's input: the same context as one prompt string (chat template applied here, as our side does)
        upstream_data = tmp / "upstream.jsonl"
        with open(upstream_data, "w") as handle:
            for r in rows:
                prompt = tokenizer.apply_chat_template(
                    [{"role": "user", "content": render_step_prompt(r["prompt"])}], add_generation_prompt=True,
                    tokenize=False,
                ) + "".join(s + "\n" for s in r["prefix_steps"])  # fmt: skip
                handle.write(json.dumps({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")
        sides = {
            "upstream DPOTrainer + RewardDataset": ["openrlhf.cli.train_dpo", upstream_data,
                                                    ["--data.prompt_key", "prompt"]],
            "openrlhf-psr step DPO": ["openrlhf_psr.cli.train_step_dpo", steps_data, []],
        }  # fmt: skip
        for name, (module, data, extra) in sides.items():
            out = tmp / module
            cmd = [sys.executable, "-m", module, *common, "--data.dataset", str(data), *extra,
                   "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
                   "--logger.tensorboard_dir", str(out / "tb")]  # fmt: skip
            print(f"running {name} ...", flush=True)
            wall, rss, _ = run(cmd, cpu_distributed_env())
            seconds, steps = loop_seconds(out / "tb")
            per_step = pair_tokens / steps
            results[name] = {"loop_tok_s": per_step * (steps - 1) / seconds, "e2e_tok_s": pair_tokens / wall,
                             "peak_rss_gib": rss, "wall_s": wall, "steps": steps}  # fmt: skip
    print(f"\nmodel={args.model} pairs={len(rows)} batch={args.batch} micro={args.micro_batch} zero={args.zero_stage} "
          f"bf16; median prompt+prefix P={p_med:.0f} tokens, median step S={s_med:.0f} tokens")  # fmt: skip
    print(f"{'':38}{'loop tok/s':>12}{'end-to-end tok/s':>18}{'peak RSS GiB':>14}{'wall s':>9}")
    for name, r in results.items():
        print(f"{name:38}{r['loop_tok_s']:>12.1f}{r['e2e_tok_s']:>18.1f}{r['peak_rss_gib']:>14.2f}{r['wall_s']:>9.1f}")
    up, ours = results.values()
    print(f"\nspeed-up (training loop): {ours['loop_tok_s'] / up['loop_tok_s']:.2f}x   (target >= 1.6x)")
    print(f"speed-up (end to end, incl. start-up and the one-off reference pass): "
          f"{ours['e2e_tok_s'] / up['e2e_tok_s']:.2f}x")  # fmt: skip
    print(f"peak memory ratio (upstream / ours): {up['peak_rss_gib'] / ours['peak_rss_gib']:.2f}x")
    print(
        f"shared-prefix FLOP ceiling 2(P+S)/(P+2S) = {ceiling:.2f}x (before dropping the per-step reference forward)"
    )


if __name__ == "__main__":
    main()
