"""``openrlhf-psr sft-data``: write the M0 -> M1 SFT mixture (IFT + EFT) as JSONL for upstream ``train_sft``.

    openrlhf-psr sft-data --out sft.jsonl --ift builtin:arith?n=64 --eft builtin:arith?n=64
    openrlhf-psr sft-data --out sft.jsonl --ift gsm8k:../shared/data/train/gsm8k_train.jsonl?limit=2000 \\
        --eft prm800k:../shared/data/train/prm800k_phase1_train.stepwise.parquet?limit=1000

Sources are specs of the source grammar (:mod:`openrlhf_psr.data.sources`): ``builtin:arith?n=N`` (the built-in
task; ``seed`` and the difficulty knobs as for the prompts), ``gsm8k:PATH[?limit=N]``, ``prm800k:PATH[?limit=N]``,
``search:DIR[?limit=N&ties=T]`` (a search's own candidate steps labelled by the exact checker,
:mod:`openrlhf_psr.data.own_steps`).
``srlm-builtin:arith?n=N`` and ``srlm-gsm8k:PATH[?limit=N]`` are the SRLM baseline's own judging task (whole
solutions scored 0..5 with its prompt).
Each row also holds ``prompt`` / ``response``: the example rendered for ``--model`` in the format of
``--chat-template`` (the recipe's), exactly as the search and evaluation render prompts. Then train with
``python -m openrlhf.cli.train_sft --data.dataset sft.jsonl --data.input_key prompt --data.output_key response
--data.input_template {} ...`` (the launcher does this for a recipe's SFT stage).
"""

from __future__ import annotations

import argparse
import json
import random


def build(ift: list[str], eft: list[str], seed: int = 0) -> list[dict]:
    """The IFT and EFT records of the sources, shuffled. A built-in source makes ``n`` (default 64) examples from
    its ``seed`` (default: ``seed``, EFT ``seed + 1``) at its difficulty; a file source takes ``limit`` rows (a
    ``seed``-ed random subset)."""
    from openrlhf_psr.data import sft
    from openrlhf_psr.data.sources import EFT, IFT, SourceError, parse_source
    from openrlhf_psr.errors import DataError
    from openrlhf_psr.io import read_jsonl

    def parse(flag: str, spec: str, kinds: tuple[str, ...]):
        try:
            return parse_source(spec, kinds)
        except SourceError as exc:
            raise DataError(f"{flag} {exc}") from None

    records: list[dict] = []
    for spec in ift:
        source = parse("--ift", spec, IFT)
        if source.kind == "builtin":
            built = sft.builtin_sft(n_ift=source.get("n", 64), n_eft=0, seed=source.get("seed", seed),
                                    difficulty=source.difficulty())  # fmt: skip
            records += [r for r in built if r["kind"] == "ift"]
        else:  # gsm8k
            rows, limit = list(read_jsonl(source.path)), source.get("limit")
            chosen = random.Random(seed).sample(rows, limit) if limit and limit < len(rows) else rows
            records += sft.gsm8k_ift(chosen, source=f"--ift {spec}")
    for spec in eft:
        source = parse("--eft", spec, EFT)
        if source.kind == "builtin":
            built = sft.builtin_sft(n_ift=0, n_eft=source.get("n", 64), seed=source.get("seed", seed + 1),
                                    difficulty=source.difficulty(), ties=source.get("ties", 0))  # fmt: skip
            records += [r for r in built if r["kind"] == "eft"]
        elif source.kind == "prm800k":
            records += sft.prm800k_eft(source.path, limit=source.get("limit"), seed=seed)
        elif source.kind == "search":  # the model's own candidates, labelled by the exact checker
            from openrlhf_psr.data.own_steps import search_source_eft

            records += search_source_eft(source.path, limit=source.get("limit"), ties=source.get("ties", 0),
                                         seed=seed)  # fmt: skip
        else:  # srlm-builtin, srlm-gsm8k: the SRLM baseline's judging task, 5-point scores
            records += sft.srlm_source(source, seed=seed)
    random.Random(seed).shuffle(records)
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrlhf_psr.cli.app import add_switch

    parser.add_argument("--out", required=True)
    parser.add_argument("--ift", action="append", default=[], help="builtin:arith?n=N | gsm8k:PATH[?limit=N]")
    parser.add_argument("--eft", action="append", default=[],
                        help="builtin:arith?n=N[&ties=T] (T: tie pairs, all rows in the tie prompt) | "
                        "prm800k:PATH[?limit=N] (pairs; x2 orders) | "
                        "search:DIR[?limit=N&ties=T] (a search's own candidates, labelled exactly) | "
                        "srlm-builtin:arith?n=N | srlm-gsm8k:PATH[?limit=N] "
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
