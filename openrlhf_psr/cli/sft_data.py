"""``openrlhf-psr sft-data``: write the M0 -> M1 SFT mixture (IFT + EFT) as JSONL for upstream ``train_sft``.

    openrlhf-psr sft-data --out sft.jsonl --ift builtin:64 --eft builtin:64
    openrlhf-psr sft-data --out sft.jsonl --ift gsm8k:../shared/data/train/gsm8k_train.jsonl:2000 \\
        --eft prm800k:../shared/data/train/prm800k_phase1_train.stepwise.parquet:1000

Sources are ``kind:path[:limit]`` (``builtin:n`` for the built-in task). Then train with
``python -m openrlhf.cli.train_sft --data.dataset sft.jsonl --data.input_key input --data.output_key output
--data.apply_chat_template ...`` (the launcher does this for a recipe's SFT stage).
"""

from __future__ import annotations

import argparse
import json
import random


def _split(spec: str) -> tuple[str, str | None, int | None]:
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        return kind, None, int(rest or 64)
    path, _, limit = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
    return kind, path, int(limit) if limit else None


def build(ift: list[str], eft: list[str], seed: int = 0) -> list[dict]:
    from openrlhf_psr.data import sft
    from openrlhf_psr.shards import read_jsonl

    records: list[dict] = []
    for spec in ift:
        kind, path, limit = _split(spec)
        if kind == "builtin":
            records += [r for r in sft.builtin_sft(n_ift=limit, n_eft=0, seed=seed) if r["kind"] == "ift"]
        elif kind == "gsm8k":
            rows = list(read_jsonl(path))
            records += sft.gsm8k_ift(random.Random(seed).sample(rows, limit) if limit and limit < len(rows) else rows)
        else:
            raise ValueError(f"--ift {spec!r}: unknown source kind {kind!r}; expected builtin or gsm8k")
    for spec in eft:
        kind, path, limit = _split(spec)
        if kind == "builtin":
            records += [r for r in sft.builtin_sft(n_ift=0, n_eft=limit, seed=seed + 1) if r["kind"] == "eft"]
        elif kind == "prm800k":
            records += sft.prm800k_eft(path, limit=limit, seed=seed)
        else:
            raise ValueError(f"--eft {spec!r}: unknown source kind {kind!r}; expected builtin or prm800k")
    random.Random(seed).shuffle(records)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openrlhf-psr sft-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", required=True)
    parser.add_argument("--ift", action="append", default=[], help="builtin:N | gsm8k:PATH[:N]")
    parser.add_argument("--eft", action="append", default=[], help="builtin:N | prm800k:PATH[:N] (pairs; x2 orders)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from openrlhf_psr.data.sft import write_jsonl

    records = build(args.ift, args.eft, args.seed)
    n = write_jsonl(records, args.out)
    kinds = {k: sum(r["kind"] == k for r in records) for k in ("ift", "eft")}
    verdicts = {v: sum(r["output"].endswith(f"[[{v}]]") for r in records) for v in ("A", "B")}
    print(json.dumps({"out": args.out, "records": n, **kinds, "eft_verdicts": verdicts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
