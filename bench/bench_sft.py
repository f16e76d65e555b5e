"""SFT (M0 -> M1) training throughput and peak memory: the launcher's old SFT settings against faster ones.

    .venv/bin/python bench/bench_sft.py [--ift 48] [--eft 24] [--model default] [--variants baseline,packed]

Every variant trains the same model on the same rows (the built-in task's IFT + EFT mixture, rendered exactly as
the launcher's ``sft_data`` stage renders them) with the same optimiser and DeepSpeed settings, as real CLI runs
of upstream ``python -m openrlhf.cli.train_sft``; only the batch shapes differ:

- ``baseline``: what tiny_cpu ran before (micro batch 4, rows padded to the longest of the micro batch).
- ``micro1``: micro batch 1 (no padding at all, but 4x as many small matmuls).
- ``packed``: ``--ds.packing_samples`` with the micro batch = the whole optimiser batch: upstream removes the
  padding and runs the rows as one sequence; transformers >= 5 builds the block-diagonal causal mask for sdpa from
  the restarting position ids, so rows never attend to each other (checked by tests/integration/test_sft_packing.py).
  Upstream switches packing to flash-attn, which CPUs lack: the CPU patch 0004 keeps sdpa.
- ``packed4`` / ``packed2``: packed micro batches of 4 / 2 rows, gradients accumulated up to the same optimiser batch
  (``packed2`` is what the CPU recipes run); ``packed2_lora``: the same with LoRA rank 64 (``--ds.lora.rank``).
  sdpa with a block-diagonal mask computes the whole (packed length)^2 score matrix, so one 16-row sequence of
  ~6,000 tokens spends most of its time on scores it masks out; shorter packs keep no padding and skip that.

Printed: trained tokens/s in the loop (non-pad tokens of prompt + response, from the TensorBoard event times of
steps 2..N so start-up is excluded; also from the median step time, which other processes on a shared machine
disturb less), the padded tokens the model actually ran per real token, peak RSS of the run and
its descendants, wall time, and each variant's ratio against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "baseline": {"micro": 4, "extra": []},
    "micro1": {"micro": 1, "extra": []},
    "packed": {"micro": None, "extra": ["--ds.packing_samples"]},  # None: the optimiser batch
    "packed4": {"micro": 4, "extra": ["--ds.packing_samples"]},
    "packed2": {"micro": 2, "extra": ["--ds.packing_samples"]},
    # packed2 training LoRA adapters (rank 64 on every linear layer) instead of every weight: no weight gradients
    # for the frozen model and Adam on 1/7 of the parameters; the launcher merges them into M1 (sft_merge)
    "packed2_lora": {"micro": 2, "extra": ["--ds.packing_samples", "--ds.lora.rank", "64", "--ds.lora.alpha", "128"]},
}


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB of the training process and its descendants)."""
    from _memory import PeakRSS

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakRSS(pid=proc.pid) as memory:
        stderr = proc.stderr.read()
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"train_sft failed:\n{stderr[-3000:]}")
    return time.perf_counter() - start, memory.gib()[1]


def loop_seconds(tb_dir: Path) -> tuple[float, int, float]:
    """(seconds from the first logged step to the last, steps logged, median seconds between steps). The median
    is the figure that survives other processes taking the cores for a while (a shared 2-core machine)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run_dir] = [p for p in tb_dir.iterdir() if p.is_dir()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    times = [e.wall_time for e in events.Scalars("train/gpt_loss")]
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    return times[-1] - times[0], len(times), gaps[len(gaps) // 2] if gaps else float("nan")


def padded_tokens(lengths: list[int], micro: int, packed: bool) -> int:
    """Tokens the model runs for the rows in a shuffled order: each micro batch padded to its longest row, or
    packed (no padding)."""
    if packed:
        return sum(lengths)
    lengths = random.Random(0).sample(lengths, len(lengths))
    return sum(max(lengths[i : i + micro]) * len(lengths[i : i + micro]) for i in range(0, len(lengths), micro))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--ift", type=int, default=48, help="built-in IFT examples")
    parser.add_argument("--eft", type=int, default=24, help="built-in EFT pairs (x2 orders)")
    parser.add_argument("--batch", type=int, default=16, help="optimiser batch (the CPU recipes' 16)")
    parser.add_argument("--max-len", type=int, default=768)
    parser.add_argument("--variants", default="baseline,packed,packed2", help=f"comma list of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or "baseline" not in names:
        raise SystemExit(f"--variants {args.variants!r}: expected baseline plus some of {', '.join(VARIANTS)}")

    from transformers import AutoTokenizer

    from openrlhf_psr.cli.sft_data import build
    from openrlhf_psr.data.sft import render_records
    from openrlhf_psr.model_cache import resolve_model
    from openrlhf_psr.preflight import cpu_distributed_env

    model = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = render_records(build([f"builtin:arith?n={args.ift}"], [f"builtin:arith?n={args.eft}"], seed=0), tokenizer,
                          chat_template=True)  # fmt: skip
    lengths = [min(len(tokenizer.encode(r["prompt"] + r["response"], add_special_tokens=False)) + 1, args.max_len)
               for r in rows]  # fmt: skip
    real = sum(lengths)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name in names:
            variant, out = VARIANTS[name], tmp / name
            micro = variant["micro"] or args.batch
            cmd = [sys.executable, "-m", "openrlhf.cli.train_sft", "--model.model_name_or_path", model,
                   "--data.dataset", str(data), "--data.input_key", "prompt", "--data.output_key", "response",
                   "--data.input_template", "{}", "--data.max_len", str(args.max_len), "--train.max_epochs", "1",
                   "--adam.lr", "5e-5", "--train.batch_size", str(args.batch),
                   "--train.micro_batch_size", str(micro), "--train.seed", "0", "--ds.zero_stage", "2",
                   "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa", "--logger.logging_steps", "1",
                   "--ckpt.output_dir", str(out / "model"), "--logger.tensorboard_dir", str(out / "tb"),
                   *variant["extra"]]  # fmt: skip
            print(f"running {name} ...", flush=True)
            wall, rss = run(cmd, cpu_distributed_env())
            seconds, steps, median = loop_seconds(out / "tb")
            # upstream's sampler shuffles with the seed, identically for every variant: per-step token counts are
            # taken as the average, so the ratio between variants is exact and the absolute figure is an estimate
            per_step = real / steps
            ran = padded_tokens(lengths, micro, "--ds.packing_samples" in variant["extra"])
            results[name] = {"loop_tok_s": per_step * (steps - 1) / seconds, "median_tok_s": per_step / median,
                             "peak_rss_gib": rss, "wall_s": wall, "steps": steps,
                             "ran_per_real": ran / real}  # fmt: skip
    print(
        f"\nmodel={args.model} rows={len(rows)} (ift {args.ift}, eft {2 * args.eft}) batch={args.batch} zero=2 bf16 "
        f"sdpa; median row {sorted(lengths)[len(lengths) // 2]} tokens, min {min(lengths)}, max {max(lengths)}"
    )
    print(f"{'':10}{'loop tok/s':>12}{'median-step tok/s':>19}{'ran/real tokens':>17}{'peak RSS GiB':>14}"
          f"{'wall s':>9}{'ratio':>8}{'median ratio':>14}")  # fmt: skip
    base, base_median = results["baseline"]["loop_tok_s"], results["baseline"]["median_tok_s"]
    for name, r in results.items():
        print(f"{name:10}{r['loop_tok_s']:>12.1f}{r['median_tok_s']:>19.1f}{r['ran_per_real']:>17.2f}"
              f"{r['peak_rss_gib']:>14.2f}{r['wall_s']:>9.1f}{r['loop_tok_s'] / base:>7.2f}x"
              f"{r['median_tok_s'] / base_median:>13.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
