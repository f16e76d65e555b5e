"""``openrlhf-psr sft-data``: write the M0 -> M1 SFT mixture (IFT + EFT) as JSONL for upstream ``train_sft``.

    openrlhf-psr sft-data --out sft.jsonl --ift builtin:64 --eft builtin:64
    openrlhf-psr sft-data --out sft.jsonl --ift gsm8k:../shared/data/train/gsm8k_train.jsonl:2000 \\
        --eft prm800k:../shared/data/train/prm800k_phase1_train.stepwise.parquet:1000

Sources are ``kind:path[:limit]`` (``builtin:n`` for the built-in task). ``srlm-builtin:n`` and
``srlm-gsm8k:path[:n]`` are the SRLM baseline's own judging task (whole solutions scored 0..5 with its prompt).
Each row also holds ``prompt`` / ``response``: the example rendered for ``--model`` in the format of
``--chat-template`` (the recipe's), exactly as the search and evaluation render prompts. Then train with
``python -m openrlhf.cli.train_sft --data.dataset sft.jsonl --data.input_key prompt --data.output_key response
--data.input_template {} ...`` (the launcher does this for a recipe's SFT stage).
"""

from __future__ import annotations

import argparse
import json
import random


def _split(spec: str) -> tuple[str, str | None, int | None]:
    kind, _, rest = spec.partition(":")
    if kind in ("builtin", "srlm-builtin"):
        return kind, None, int(rest or 64)
    path, _, limit = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
    return kind, path, int(limit) if limit else None


def build(ift: list[str], eft: list[str], seed: int = 0) -> list[dict]:
    from openrlhf_psr.data import sft
    from openrlhf_psr.errors import DataError
    from openrlhf_psr.io import read_jsonl

    records: list[dict] = []
    for spec in ift:
        kind, path, limit = _split(spec)
        if kind == "builtin":
            records += [r for r in sft.builtin_sft(n_ift=limit, n_eft=0, seed=seed) if r["kind"] == "ift"]
        elif kind == "gsm8k":
            rows = list(read_jsonl(path))
            chosen = random.Random(seed).sample(rows, limit) if limit and limit < len(rows) else rows
            records += sft.gsm8k_ift(chosen, source=f"--ift {spec}")
        else:
            raise DataError(f"--ift {spec!r}: unknown source kind {kind!r}; expected builtin or gsm8k")
    for spec in eft:
        kind, path, limit = _split(spec)
        if kind == "builtin":
            records += [r for r in sft.builtin_sft(n_ift=0, n_eft=limit, seed=seed + 1) if r["kind"] == "eft"]
        elif kind == "prm800k":
            records += sft.prm800k_eft(path, limit=limit, seed=seed)
        elif kind in ("srlm-builtin", "srlm-gsm8k"):  # the SRLM baseline's judging task: 5-point scores
            records += sft.srlm_source(kind, path, limit, seed=seed)
        else:
            raise DataError(
                f"--eft {spec!r}: unknown source kind {kind!r}; expected builtin, prm800k, srlm-builtin or srlm-gsm8k"
            )
    random.Random(seed).shuffle(records)
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrlhf_psr.cli.app import add_switch

    parser.add_argument("--out", required=True)
    parser.add_argument("--ift", action="append", default=[], help="builtin:N | gsm8k:PATH[:N]")
    parser.add_argument("--eft", action="append", default=[],
                        help="builtin:N | prm800k:PATH[:N] (pairs; x2 orders) | srlm-builtin:N | srlm-gsm8k:PATH[:N] "
                        "(SRLM 5-point scoring, 6 graded solutions per problem)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="the model to be trained (its tokenizer renders rows)")
    add_switch(parser, "--chat-template", True, "render in the model's chat template (off: raw, for base models)")


def main(argv: list[str] | None = None) -> int:
    from openrlhf_psr.cli.app import module_main

    return module_main(add_arguments, run, argv, "python -m openrlhf_psr.cli.sft_data", __doc__)


def run(args: argparse.Namespace) -> int:
    built = build(args.ift, args.eft, args.seed)  # bad sources fail before transformers loads
    from transformers import AutoTokenizer

    from openrlhf_psr.data.sft import render_records, write_jsonl
    from openrlhf_psr.model_cache import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    records = render_records(built, tokenizer, chat_template=args.chat_template)
    n = write_jsonl(records, args.out)
    kinds = {k: sum(r["kind"] == k for r in records) for k in ("ift", "eft")}
    verdicts = {v: sum(r["output"].endswith(f"[[{v}]]") for r in records) for v in ("A", "B")}
    scores = {v: sum(r["output"].endswith(f"Score: {v}") for r in records) for v in range(6)}
    print(json.dumps({"out": args.out, "records": n, **kinds, "eft_verdicts": verdicts, "eft_scores": scores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
