"""The paper's benchmarks (Table 1) and their gold-answer rules, from local JSONL or a Hugging Face dataset.

Local layout (as ../shared/data/eval): ``<root>/<name>/test.jsonl``. A benchmark can be pointed at any other file
or dataset with ``source``, a spec of the source grammar (``jsonl:PATH``, ``hf:NAME[:CONFIG]``, see
:mod:`openrlhf_psr.data.sources`). A benchmark is kept whole unless ``limit`` is given (a seeded subset, for CPU
runs); a file whose gold-answer field yields no answer under the benchmark's rule is an error naming file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openrlhf_psr.data.problems import Problem, load_problems
from openrlhf_psr.data.sources import Source


@dataclass(frozen=True)
class Benchmark:
    name: str
    question_key: str
    answer_key: str
    answer_rule: str  # see openrlhf_psr.data.problems.gold_answer
    size: int  # rows in the paper's version


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark("gsm8k", "question", "answer", "gsm8k", 1319),
        Benchmark("math", "problem", "solution", "boxed", 5000),
        Benchmark("math500", "problem", "answer", "raw", 500),
        Benchmark("gaokao2023en", "question", "answer", "raw", 385),
        Benchmark("olympiadbench", "question", "final_answer", "first", 675),
        Benchmark("aime24", "problem", "answer", "raw", 30),
        Benchmark("amc23", "question", "answer", "raw", 40),
    )
}


def load_benchmark(
    name: str,
    *,
    root: str | Path | None = None,
    source: str | Source | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Problem]:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if source is None:
        if root is None:
            raise ValueError(f"benchmark {name!r} needs a data root (e.g. ../shared/data/eval) or a source")
        source = Source("jsonl", str(Path(root) / name / "test.jsonl"))
    problems = load_problems(
        source,
        question_key=bench.question_key,
        answer_key=bench.answer_key,
        answer_rule=bench.answer_rule,
        limit=limit,
        seed=seed,
        split="test",
    )
    return [Problem(f"{name}-{p.id.rsplit('-', 1)[-1]}", p.question, p.answer) for p in problems]
