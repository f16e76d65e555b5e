"""Problems for the search and evaluation: from the built-in task, a local JSONL/Parquet file, or a HF dataset.

A source is one spec of the source grammar (:mod:`openrlhf_psr.data.sources`), parsed there:
- ``builtin:arith`` (options ``n``, ``seed`` and difficulty knobs such as ``ops=2-3&max_value=50``, see
  :class:`openrlhf_psr.data.arith.Difficulty`): the package's own arithmetic task, any size;
- ``jsonl:PATH`` / ``parquet:PATH`` (option ``limit``): a local file;
- ``hf:NAME[:CONFIG]`` (options ``split``, ``limit``): a Hugging Face dataset, loaded with ``datasets``.

Gold answers go through a rule: ``gsm8k`` (the number after ``####``), ``boxed`` (last ``\\boxed{}``), ``first``
(first item of a list, OlympiadBench), or ``raw``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

from openrlhf_psr.data.sources import PROBLEMS, Source, parse_source
from openrlhf_psr.errors import DataError, MissingField
from openrlhf_psr.records import Problem  # the problem record: id, question, gold answer, reference steps
from openrlhf_psr.steps import extract_boxed


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


DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_FILE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}$")


def local_path(source: str) -> Path | None:
    """The local path a name looks like (a model folder), or None for a hub name. Data sources say their kind
    instead (``jsonl:PATH``, ``hf:NAME``: :mod:`openrlhf_psr.data.sources`).

    A name that looks like a path is one, so a typo is a file error rather than a download: it has a file-like
    suffix, starts with ``.``, ``/`` or ``~``, or holds a ``/`` under a folder that exists.

    >>> [local_path(s) for s in ("builtin:arith", "openai/gsm8k:main", "AI-MO/NuminaMath-1.5")]
    [None, None, None]
    >>> [str(local_path(s)) for s in ("d/train.jsonl", "foo.jsnol", "./data", "/tmp/x")]
    ['d/train.jsonl', 'foo.jsnol', 'data', '/tmp/x']
    """
    if source.startswith("builtin:"):
        return None
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or _FILE_SUFFIX.search(path.name):
        return path
    if "/" in source and path.parent.is_dir() and str(path.parent) != ".":
        return path
    return None


def check_local_file(source: str, path: Path) -> None:
    """A :class:`DataError` unless ``path`` is an existing file with a suffix we can read."""
    if path.suffix not in DATA_SUFFIXES:
        import difflib

        close = difflib.get_close_matches(path.suffix, DATA_SUFFIXES, n=1, cutoff=0.5)
        hint = f" (did you mean {path.with_suffix(close[0]).name!r}?)" if close else ""
        found = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise DataError(f"{source}: expected a .jsonl, .json or .parquet file, found {found}{hint}")
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise DataError(f"{source}: expected a problem file, found {found}")


def _rows(source: Source, split: str) -> Iterable[tuple[str, int, dict]]:
    """(where, row number, row) for every row of a file or dataset."""
    path = source.path
    if path is not None:
        check_local_file(str(source), path)
        if path.suffix == ".parquet":
            from openrlhf_psr.io import read_parquet_rows

            for number, row in enumerate(read_parquet_rows(path), 1):
                yield str(path), number, row
            return
        from openrlhf_psr.io import read_jsonl

        for number, row in enumerate(read_jsonl(path), 1):
            yield str(path), number, row
        return
    import datasets

    name, _, config = source.target.partition(":")
    split = source.get("split", split)
    for number, row in enumerate(datasets.load_dataset(name, config or None, split=split), 1):
        yield f"{source}[{split}]", number, row


def load_problems(
    source: str | Source,
    *,
    question_key: str = "question",
    answer_key: str | None = "answer",
    answer_rule: str = "raw",
    id_key: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    split: str = "train",
    subset: tuple[int, int | None] | None = None,
    subset_seed: int = 0,
) -> list[Problem]:
    """Load problems from a source spec (or a parsed :class:`Source`); ``limit`` (the argument or the source's
    ``limit`` option, the smaller) takes a seeded random subset when ``seed`` is given, else the first rows; an
    ``hf:`` source's ``split`` option wins over the argument.

    ``subset=(start, end)`` takes rows ``start:end`` of a fixed order, so disjoint ranges give disjoint problems
    (the search's iterations): the rows (the first ``limit`` of the source, when it says) shuffled with
    ``subset_seed`` for a file or dataset; for the built-in task, whose problems are already random and unbounded,
    indices ``start..end-1`` (up to its ``n``, when it says). Without a limit, ``n`` or a subset the built-in task
    gives 24 problems.

    Nothing is dropped silently: a ``null`` question (or id) is an error naming the row; a gold answer that is
    null or that the rule cannot read is counted and reported on stderr, and an error when no row has one.
    """
    if not isinstance(source, Source):
        source = parse_source(source, PROBLEMS)
    if subset is not None:
        return _subset(source, subset, subset_seed, question_key=question_key, answer_key=answer_key,
                       answer_rule=answer_rule, id_key=id_key, split=split)  # fmt: skip
    if source.is_builtin:
        count = [x for x in (limit, source.get("n")) if x is not None]
        return _builtin(source, min(count) if count else 24)
    problems = _file_problems(source, question_key, answer_key, answer_rule, id_key, split)
    limits = [x for x in (limit, source.get("limit")) if x is not None]
    limit = min(limits) if limits else None
    if limit is not None and len(problems) > limit:
        if seed is not None:
            problems = random.Random(seed).sample(problems, limit)
        else:
            problems = problems[:limit]
    return problems


def _file_problems(source, question_key, answer_key, answer_rule, id_key, split) -> list[Problem]:
    problems, missing = [], []
    for where, number, row in _rows(source, split):
        if question_key not in row:
            raise MissingField(f"{where}: row {number} has no field {question_key!r} (fields: {sorted(row)})")
        for key in (question_key, id_key):
            if key and key in row and row[key] is None:
                raise DataError(f"{where}: row {number}: field {key!r} is null; expected text")
        answer = None
        if answer_key is not None:
            if answer_key not in row:
                raise MissingField(f"{where}: row {number} has no field {answer_key!r} (fields: {sorted(row)})")
            answer = gold_answer(row[answer_key], answer_rule)
            if answer is None:
                missing.append(number)
        pid = str(row[id_key]) if id_key and id_key in row else f"{Path(source.target).stem}-{number - 1}"
        problems.append(Problem(pid, str(row[question_key]), answer))
    if missing and len(missing) == len(problems):
        raise DataError(
            f"{source}: no row has a gold answer in field {answer_key!r} under rule {answer_rule!r} "
            f"({_RULE_EXPECTS.get(answer_rule, answer_rule)}); check answer_key/answer_rule"
        )
    if missing:
        import sys

        print(f"{source}: {len(missing)} of {len(problems)} rows have no gold answer in field {answer_key!r} "
              f"under rule {answer_rule!r} (rows {missing[:5]}{'...' if len(missing) > 5 else ''})",
              file=sys.stderr)  # fmt: skip
    return problems


_RULE_EXPECTS = {
    "gsm8k": "expected text ending '#### <number>'",
    "boxed": "expected a solution holding \\boxed{...}",
    "first": "expected a non-empty list",
    "raw": "expected a non-null value",
}


def _subset(source: Source, subset: tuple[int, int | None], seed: int, **keys) -> list[Problem]:
    start, end = subset
    if start < 0 or (end is not None and end < start):
        raise DataError(f"subset {start}:{end}: expected 0 <= start <= end")
    if source.is_builtin:
        if end is None:
            raise DataError(f"subset {start}: of {str(source)!r}: the built-in task is unbounded; give an end")
        if source.get("n") is not None and end > source.get("n"):
            raise DataError(f"subset {start}:{end} of {str(source)!r}: expected an end <= n={source.get('n')}")
        return _builtin(source, end, start)
    problems = _file_problems(source, **keys)
    if source.get("limit") is not None:
        problems = problems[: source.get("limit")]
    random.Random(seed).shuffle(problems)
    return problems[start:end]


def _builtin(source: Source, n: int, start: int = 0) -> list[Problem]:
    from openrlhf_psr.data import arith

    seed, difficulty = source.get("seed", 0), source.difficulty()  # knobs checked when the spec was parsed
    made = (arith.make_problem(seed, index, difficulty=difficulty) for index in range(start, n))
    return [Problem(p.id, p.question, str(p.answer), p.steps) for p in made]
