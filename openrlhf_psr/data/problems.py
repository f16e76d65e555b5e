"""Problems for the search and evaluation: from the built-in task, a local JSONL/Parquet file, or a HF dataset.

A source is one string:
- ``builtin:arith`` (optionally ``builtin:arith?seed=3``): the package's own arithmetic task, any size;
- a path to ``.jsonl`` / ``.json`` / ``.parquet``;
- anything else is a Hugging Face dataset name (``name`` or ``name:config``), loaded with ``datasets``.

Gold answers go through a rule: ``gsm8k`` (the number after ``####``), ``boxed`` (last ``\\boxed{}``), ``first``
(first item of a list, OlympiadBench), or ``raw``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from openrlhf_psr.steps import extract_boxed


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str | None = None  # gold final answer, if known
    reference_steps: tuple[str, ...] = ()  # a reference solution in steps, if known (IFT)


def gold_answer(value, rule: str) -> str | None:
    """Apply a gold-answer rule.

    >>> gold_answer("She pays 5 * 2 = <<5*2=10>>10.\\n#### 1,000", "gsm8k")
    '1000'
    >>> gold_answer("so \\\\boxed{\\\\frac{1}{2}}.", "boxed")
    '\\\\frac{1}{2}'
    >>> gold_answer(["3", "4"], "first"), gold_answer(27.0, "raw")
    ('3', '27.0')
    """
    if value is None:
        return None
    if rule == "gsm8k":
        text = str(value)
        return text.split("####")[-1].strip().replace(",", "") if "####" in text else None
    if rule == "boxed":
        return extract_boxed(str(value))
    if rule == "first":
        return str(value[0]) if isinstance(value, list | tuple) and value else (str(value) if value else None)
    if rule == "raw":
        return str(value).strip().strip("$").strip()
    raise ValueError(f"unknown gold-answer rule {rule!r}; expected gsm8k, boxed, first or raw")


def _rows(source: str, split: str) -> Iterable[tuple[str, int, dict]]:
    """(where, row number, row) for every row of a file or dataset."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"problem file {source} does not exist")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            for number, row in enumerate(pq.read_table(path).to_pylist(), 1):
                yield str(path), number, row
            return
        from openrlhf_psr.shards import read_jsonl

        for number, row in enumerate(read_jsonl(path), 1):
            yield str(path), number, row
        return
    import datasets

    name, _, config = source.partition(":")
    for number, row in enumerate(datasets.load_dataset(name, config or None, split=split), 1):
        yield f"{source}[{split}]", number, row


def load_problems(
    source: str,
    *,
    question_key: str = "question",
    answer_key: str | None = "answer",
    answer_rule: str = "raw",
    id_key: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    split: str = "train",
) -> list[Problem]:
    """Load problems; ``limit`` takes a seeded random subset when ``seed`` is given, else the first rows."""
    if source.startswith("builtin:"):
        problems = _builtin(source, limit or 24)
    else:
        problems = []
        for where, number, row in _rows(source, split):
            if question_key not in row:
                raise KeyError(f"{where}: row {number} has no field {question_key!r} (fields: {sorted(row)})")
            answer = None
            if answer_key is not None:
                if answer_key not in row:
                    raise KeyError(f"{where}: row {number} has no field {answer_key!r} (fields: {sorted(row)})")
                answer = gold_answer(row[answer_key], answer_rule)
            pid = str(row[id_key]) if id_key and id_key in row else f"{Path(source).stem}-{number - 1}"
            problems.append(Problem(pid, str(row[question_key]), answer))
    if limit is not None and len(problems) > limit:
        if seed is not None:
            problems = random.Random(seed).sample(problems, limit)
        else:
            problems = problems[:limit]
    return problems


def _builtin(source: str, n: int) -> list[Problem]:
    from openrlhf_psr.data import arith

    name, _, query = source.removeprefix("builtin:").partition("?")
    if name != "arith":
        raise ValueError(f"unknown built-in task {name!r} in {source!r}; available: arith")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    seed = int(params.pop("seed", 0))
    if params:
        raise ValueError(f"unknown option(s) {sorted(params)} in {source!r}; available: seed")
    return [Problem(p.id, p.question, str(p.answer), p.steps) for p in arith.make_problems(n, seed=seed)]
