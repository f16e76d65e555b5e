"""Step DPO on a GPU (issue 11): is the shared-prefix forward exact in bf16, and how fast does it train?

    python bench/gpu_step_dpo.py [--shapes qwen2.5-0.5b,qwen2.5-1.5b] [--batch 8] [--prefix 512] [--step 64]
    python bench/gpu_step_dpo.py --shapes tiny --device cpu --dtype float32 --iters 2   # smoke test, any machine

Needs only torch and transformers (the GPU machines here have no vLLM, DeepSpeed or Ray), so the model is a
random-init model of the named shape (shapes from ``openrlhf_psr.plan.KNOWN_SHAPES``, the published configs), built
with the attention the launcher gives step DPO (``trainers.plugin.STEP_DPO_ATTENTION``), in bf16 on the device.
Each batch is ``--batch`` pairs with random token ids: prefix lengths in [prefix/2, prefix], step lengths in
[step/2, step], so rows are padded as in training.

Printed per shape:
- **exactness**: the summed chosen/rejected log-probs of ``shared_prefix.branch_logps`` (one packed row per pair,
  tree mask) against two separate forwards (``prefix+chosen`` and ``prefix+rejected``, padding mask, full logits, as
  upstream's DPO trainer does), max |difference| per branch sum and per token, in the run dtype and in fp32 (the fp32
  number says the packing is exact; the bf16 one is rounding).
- **training**: step-DPO forward + backward (sigmoid DPO loss against cached reference log-probs, i.e. OpenRLHF's
  ``DPOLoss`` arithmetic), pair tokens/s (``(P+C) + (P+R)`` per pair, the work unit of two full forwards), the same
  for the two-forward baseline in the same run and their ratio, peak GPU memory, and MFU: model FLOPs
  ``6 * N_layers_params * T + 6 * V * H * T_head + 12 * layers * H * sum(L_row^2)`` per step (T tokens the decoder
  runs, T_head positions the head runs, L_row the padded row length; attention counted dense, as the kernel computes
  it under an arbitrary mask) over wall time, against the card's dense bf16 peak (989 TFLOP/s for H100/H200 SXM) and
  against a bf16 matmul measured in the same run.
- **attention alone** (``--flex``): the tree-masked attention forward+backward at the shape's heads with sdpa and a
  dense mask (what step DPO runs) against ``flex_attention`` with a block mask of the same tree, compiled.

Nothing here is asserted: it is a measurement; put its numbers in the README with the card named.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrlhf_psr.data.step_pairs import PREFIX, StepPair, StepPairDataset  # noqa: E402
from openrlhf_psr.plan import KNOWN_SHAPES, ModelShape  # noqa: E402
from openrlhf_psr.trainers.plugin import STEP_DPO_ATTENTION  # noqa: E402
from openrlhf_psr.trainers.shared_prefix import branch_logps, tree_mask  # noqa: E402

SHAPES = {**KNOWN_SHAPES, "tiny": ModelShape("tiny", 64, 128, 2, 4, 2, 1000, True)}
DENSE_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
BETA = 0.1


def build_model(shape: ModelShape, dtype: torch.dtype, device: str, seed: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=32768,
        rope_theta=1e6,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=STEP_DPO_ATTENTION, dtype=dtype)
    return model


def make_batch(shape: ModelShape, batch: int, prefix: int, step: int, seed: int, device: str):
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(10, shape.vocab) for _ in range(n)]  # noqa: E731
    pairs = [
        StepPair(
            tuple(tok(rng.randint(prefix // 2, prefix))),
            tuple(tok(rng.randint(step // 2, step))),
            tuple(tok(rng.randint(step // 2, step))),
            f"random/{i}",
        )
        for i in range(batch)
    ]
    data = StepPairDataset(pairs, max_len=prefix + 2 * step, pad_token_id=0)
    ids, segments, positions, _, _ = data.collate_fn([data[i] for i in range(len(data))])
    return pairs, ids.to(device), segments.to(device), positions.to(device)


def two_forward_logps(model, pairs: list[StepPair], device: str):
    """Upstream's way: each branch as its own full sequence ``prefix + branch``, right-padded, full logits."""
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (a, b) in enumerate(rows):
        n = len(a) + len(b)
        ids[i, :n] = torch.tensor(a + b)
        mask[i, :n] = 1
        scored[i, len(a) : n] = True
    ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    per_token = token_logps * scored[:, 1:]
    sums = per_token.sum(-1)
    return sums[: len(pairs)], sums[len(pairs) :], token_logps, scored[:, 1:]


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected):
    """The sigmoid DPO loss (Rafailov et al. 2023, eq. 7), as OpenRLHF's DPOLoss computes it."""
    return -F.logsigmoid(BETA * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(step_fn, iters: int, device: str) -> float:
    for _ in range(2):  # warm-up: kernels chosen, allocator settled
        step_fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step_fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def step_flops(shape: ModelShape, decoder_tokens: int, head_positions: int, row_lengths: list[int]) -> float:
    layers = shape.layers * shape.layer_params
    attention = 12 * shape.layers * shape.heads * shape.dim * sum(n * n for n in row_lengths)
    return 6 * layers * decoder_tokens + 6 * shape.vocab * shape.hidden * head_positions + attention


def matmul_peak(device: str, dtype: torch.dtype) -> float | None:
    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    sync(device)
    return 2 * 8192**3 * n / (time.perf_counter() - start)


def exactness(model, pairs, ids, segments, positions, device) -> dict:
    with torch.no_grad():
        shared_c, shared_r, n_c, n_r = branch_logps(model, ids, segments, positions)
        sep_c, sep_r, _, _ = two_forward_logps(model, pairs, device)
    sums = torch.cat([(shared_c - sep_c).abs(), (shared_r - sep_r).abs()])
    tokens = torch.cat([n_c, n_r]).clamp(min=1)
    return {
        "max_abs_diff_branch_sum": sums.max().item(),
        "max_abs_diff_per_token_mean": (sums / tokens).max().item(),
        "mean_branch_logp": torch.cat([shared_c / n_c, shared_r / n_r]).mean().item(),
    }


def attention_alone(shape: ModelShape, segments: torch.Tensor, dtype: torch.dtype, device: str, iters: int) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, length = segments.shape
    q = torch.randn(b, shape.heads, length, shape.dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(b, shape.kv_heads, length, shape.dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    dense = tree_mask(segments, dtype)

    def sdpa_step():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
        out.sum().backward()

    seg = segments

    def tree(bi, hi, qi, ki):
        sq, sk = seg[bi, qi], seg[bi, ki]
        return (ki <= qi) & (sk != 0) & (sq != 0) & ((sk == PREFIX) | (sk == sq)) | (qi == ki)

    block = create_block_mask(tree, b, None, length, length, device=device)
    compiled = torch.compile(flex_attention)

    def flex_step():
        out = compiled(q, k, v, block_mask=block, enable_gqa=True)
        out.sum().backward()

    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
        got = compiled(q, k, v, block_mask=block, enable_gqa=True)
        real = segments != 0
        diff = (ref - got).abs().transpose(1, 2)[real].max().item()
    t_sdpa = timed_steps(sdpa_step, iters, device)
    t_flex = timed_steps(flex_step, iters, device)
    return {"sdpa_ms": 1e3 * t_sdpa, "flex_ms": 1e3 * t_flex, "flex_speedup": t_sdpa / t_flex, "max_abs_diff": diff}


def measure(name: str, args, peak: float | None) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    shape = SHAPES[name]
    model = build_model(shape, dtype, device, args.seed)
    pairs, ids, segments, positions = make_batch(shape, args.batch, args.prefix, args.step, args.seed, device)
    result = {"shape": shape.name, "params": shape.params, "attention": model.config._attn_implementation}
    result["exact_" + args.dtype] = exactness(model, pairs, ids, segments, positions, device)
    if dtype != torch.float32 and args.fp32_check:
        model.float()
        result["exact_float32"] = exactness(model, pairs, ids, segments, positions, device)
        model.to(dtype)

    with torch.no_grad():
        ref_c, ref_r, _, _ = branch_logps(model, ids, segments, positions)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()

    def shared_step():
        c, r, _, _ = branch_logps(model, ids, segments, positions)
        dpo_loss(c, r, ref_c, ref_r).backward()

    def two_forward_step():
        c, r, _, _ = two_forward_logps(model, pairs, device)
        dpo_loss(c, r, ref_c, ref_r).backward()

    lens = [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    pair_tokens = sum(2 * p + c + r for p, c, r in lens)
    out = {}
    for label, fn in (("shared_prefix", shared_step), ("two_forwards", two_forward_step)):
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        seconds = timed_steps(fn, args.iters, device)
        model.zero_grad(set_to_none=True)
        if label == "shared_prefix":
            width = ids.shape[1]
            flops = step_flops(shape, int((segments != 0).sum()), sum(c + r for _, c, r in lens), [width] * len(lens))
        else:
            width = max(p + max(c, r) for p, c, r in lens)
            flops = step_flops(shape, pair_tokens, pair_tokens, [width] * (2 * len(lens)))
        row = {
            "step_ms": 1e3 * seconds,
            "pair_tokens_per_s": pair_tokens / seconds,
            "model_tflops_per_step": flops / 1e12,
            "achieved_tflops": flops / seconds / 1e12,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        }
        if peak:
            row["mfu_vs_matmul"] = flops / seconds / peak
        if args.card:
            row["mfu_vs_spec"] = flops / seconds / DENSE_BF16_PEAK[args.card]
        out[label] = row
    out["speedup"] = out["two_forwards"]["step_ms"] / out["shared_prefix"]["step_ms"]
    result["train"] = out
    if args.flex:
        try:
            result["attention_alone"] = attention_alone(shape, segments, dtype, device, args.iters)
        except Exception as exc:  # a measurement, not the product: report why flex could not run
            result["attention_alone"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return result  # the model goes with this frame; main() empties the CUDA cache before the next shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prefix", type=int, default=512, help="longest prompt+prefix (tokens)")
    parser.add_argument("--step", type=int, default=64, help="longest step (tokens)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as the GPU recipes' DPO stage")
    parser.add_argument("--no-fp32-check", dest="fp32_check", action="store_false")
    parser.add_argument("--flex", action="store_true", help="also time the attention alone: sdpa vs flex_attention")
    parser.add_argument("--card", choices=sorted(DENSE_BF16_PEAK), help="for MFU against the card's spec peak")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    facts = {"torch": torch.__version__, "device": args.device, "dtype": args.dtype}
    if args.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name()
    import transformers

    facts["transformers"] = transformers.__version__
    peak = matmul_peak(args.device, getattr(torch, args.dtype))
    facts["matmul_tflops"] = peak / 1e12 if peak else None
    print(json.dumps(facts), flush=True)
    results = {"facts": facts, "args": vars(args) | {"json": str(args.json)}, "shapes": []}
    for name in args.shapes.split(","):
        row = measure(name, args, peak)
        print(json.dumps(row, indent=1), flush=True)
        results["shapes"].append(row)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print()
    exact = "exact " + {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(args.dtype, args.dtype) + " sum"
    print(
        f"{'shape':14} {exact:>14} {'fp32 sum':>9} {'shared tok/s':>12} {'2-fwd tok/s':>11} "
        f"{'ratio':>6} {'MFU':>6} {'peak GiB':>8}"
    )
    for r in results["shapes"]:
        t = r["train"]
        mfu = t["shared_prefix"].get("mfu_vs_spec", t["shared_prefix"].get("mfu_vs_matmul"))
        print(
            f"{r['shape']:14} {r['exact_' + args.dtype]['max_abs_diff_branch_sum']:14.4g} "
            f"{r.get('exact_float32', {}).get('max_abs_diff_branch_sum', float('nan')):9.2g} "
            f"{t['shared_prefix']['pair_tokens_per_s']:12.0f} {t['two_forwards']['pair_tokens_per_s']:11.0f} "
            f"{t['speedup']:6.2f} {mfu if mfu is not None else float('nan'):6.1%} "
            f"{t['shared_prefix']['peak_gpu_gib'] or float('nan'):8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
