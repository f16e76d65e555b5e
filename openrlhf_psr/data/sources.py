"""The one source grammar: where problems, judge pairs, IFT and EFT examples and benchmarks come from.

Every data source is one string ``KIND[:TARGET][?KEY=VALUE&...]``, parsed here and nowhere else into a frozen
:class:`Source` with typed options. The kinds (``TARGET``; options):

=================  =====================================  ================================================
kind               target                                 options
=================  =====================================  ================================================
``builtin``        the built-in task: ``arith``           ``n``, ``seed``, difficulty knobs (``ops``, ...);
                                                          EFT only: ``ties`` (tie pairs, verdict ``[[C]]``)
``jsonl``          a ``.jsonl`` / ``.json`` file           ``limit``
``parquet``        a ``.parquet`` file                     ``limit``
``hf``             a Hugging Face dataset ``NAME[:CONFIG]`` ``split``, ``limit``
``gsm8k``          GSM8K-format rows, ``.jsonl``           ``limit``
``prm800k``        PRM800K step-wise ``.parquet``          ``limit``
``srlm-builtin``   as ``builtin``, for SRLM scoring EFT    as ``builtin``
``srlm-gsm8k``     as ``gsm8k``, for SRLM scoring EFT      as ``gsm8k``
``search``         a search stage's output folder: the    ``limit`` (right/wrong pairs); EFT only:
                   model's own candidates, labelled by    ``ties`` (tie pairs, verdict ``[[C]]``)
                   the exact checker (EFT, judge sets)
=================  =====================================  ================================================

``n`` is how many items the built-in task makes (it is unbounded), ``limit`` caps the items a file or dataset
gives (a seeded random subset where the consumer has a seed), ``seed`` picks the built-in problems. Which kinds
a field accepts: :data:`PROBLEMS` (search prompts, benchmark sources), :data:`IFT`, :data:`EFT`,
:data:`JUDGE_PAIRS`. An evaluation benchmark is ``NAME`` (``<data_root>/NAME/test.jsonl``; ``arith``: the
built-in task, seed 7, 24 problems), ``NAME?OPTIONS`` (the same with options) or ``NAME=SOURCE``
(:func:`parse_benchmark`).

Unknown options and bad values are one-line errors naming the spec and what was expected; the spellings this
grammar replaced (``builtin:64``, ``builtin@12``, ``prm800k:PATH:N``, ``prm800k=PATH@N``, ``gsm8k@50``, a bare
path or dataset name) are errors that name the new spelling. Pure module: no heavy imports.

>>> s = parse_source("builtin:arith?n=400&seed=11&ops=2-3")
>>> s.kind, s.target, dict(s.options), str(s)
('builtin', 'arith', {'n': 400, 'seed': 11, 'ops': (2, 3)}, 'builtin:arith?n=400&seed=11&ops=2-3')
>>> parse_source("builtin:64")
Traceback (most recent call last):
...
openrlhf_psr.data.sources.SourceError: 'builtin:64' is the old spelling; write 'builtin:arith?n=64'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from openrlhf_psr.data import arith
from openrlhf_psr.errors import UserError


class SourceError(UserError, ValueError):
    """A source spec that does not parse; one line naming the spec and what was expected."""


# -- option types: text -> typed value, and back (str(Source) must parse to the same Source) ----------------------
def _positive(text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) <= 0:
        raise ValueError("expected a positive integer")
    return int(text)


def _count(text: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ValueError("expected a count (0 or more)")
    return int(text)


def _integer(text: str) -> int:
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError("expected an integer")
    return int(text)


def _span(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise ValueError("expected a number or a range LOW-HIGH, e.g. 2-5")
    return int(m[1]), int(m[2] or m[1])


def _names(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise ValueError("expected a comma-separated list")
    return names


def _text(text: str) -> str:
    return text


_TYPES: dict[str, Callable[[str], Any]] = {
    "n": _positive,
    "limit": _positive,
    "seed": _integer,
    "ties": _count,
    "split": _text,
    "ops": _span,
    "start": _span,
    "add": _span,
    "groups": _span,
    "each": _span,
    "max_value": _positive,
    "kinds": _names,
}


def _spell(value: Any) -> str:
    """An option value as it is written (the inverse of its type).

    >>> _spell((2, 3)), _spell((4, 4)), _spell(("find", "give")), _spell(7)
    ('2-3', '4', 'find,give', '7')
    """
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}-{value[1]}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


# -- kinds ------------------------------------------------------------------------------------------------------
BUILTIN_OPTIONS = ("n", "seed", *arith.OPTION_NAMES)  # shared by every built-in source: prompts, pairs, IFT, EFT
# Options only a field taking EFT sources accepts: ``ties`` = tie pairs (two wrong steps, verdict [[C]]) added to
# the built-in EFT, every row of that source then in the tie prompt (data.sft.builtin_sft).
EFT_ONLY_OPTIONS = ("ties",)
FILE_OPTIONS = ("limit",)
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class _Kind:
    target: str  # "task", "path" or "dataset"
    options: tuple[str, ...]
    suffixes: tuple[str, ...] = ()
    example: str = ""


KINDS: dict[str, _Kind] = {
    "builtin": _Kind("task", BUILTIN_OPTIONS + EFT_ONLY_OPTIONS, example="builtin:arith?n=64"),
    "jsonl": _Kind("path", FILE_OPTIONS, JSONL_SUFFIXES, "jsonl:PATH?limit=200"),
    "parquet": _Kind("path", FILE_OPTIONS, PARQUET_SUFFIXES, "parquet:PATH?limit=200"),
    "hf": _Kind("dataset", ("split", "limit"), example="hf:openai/gsm8k:main?split=test"),
    "gsm8k": _Kind("path", FILE_OPTIONS, JSONL_SUFFIXES, "gsm8k:PATH?limit=2000"),
    "prm800k": _Kind("path", FILE_OPTIONS, PARQUET_SUFFIXES, "prm800k:PATH?limit=2000"),
    "srlm-builtin": _Kind("task", BUILTIN_OPTIONS, example="srlm-builtin:arith?n=64"),
    "srlm-gsm8k": _Kind("path", FILE_OPTIONS, JSONL_SUFFIXES, "srlm-gsm8k:PATH?limit=700"),
    # the model's own candidate steps from a search folder, labelled exactly (data.own_steps): on-policy EFT
    "search": _Kind("dir", FILE_OPTIONS + EFT_ONLY_OPTIONS, example="search:runs/NAME-oracle/iter_1/search?limit=400"),
}
TASKS = ("arith",)
FILE_KINDS = ("jsonl", "parquet")  # plain problem files

# Which kinds each field takes.
PROBLEMS = ("builtin", "jsonl", "parquet", "hf")
IFT = ("builtin", "gsm8k")
EFT = ("builtin", "prm800k", "srlm-builtin", "srlm-gsm8k", "search")
JUDGE_PAIRS = ("builtin", "prm800k", "search")
ALL = tuple(KINDS)


@dataclass(frozen=True)
class Source:
    """One parsed source: ``kind``, ``target`` (the built-in task, a file path, or a dataset ``NAME[:CONFIG]``)
    and typed ``options`` (read-only). ``str(source)`` is its spelling, and parses back to an equal Source.

    >>> Source("jsonl", "d/t.jsonl", {"limit": 20}) == parse_source("jsonl:d/t.jsonl?limit=20")
    True
    """

    kind: str
    target: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __hash__(self) -> int:
        return hash((self.kind, self.target, tuple(sorted((k, repr(v)) for k, v in self.options.items()))))

    def __str__(self) -> str:
        order = {name: k for k, name in enumerate(KINDS[self.kind].options)} if self.kind in KINDS else {}
        keys = sorted(self.options, key=lambda k: order.get(k, len(order)))
        query = "&".join(f"{k}={_spell(self.options[k])}" for k in keys)
        return f"{self.kind}{':' + self.target if self.target else ''}{'?' + query if query else ''}"

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    @property
    def path(self) -> Path | None:
        """The local file (or folder, for ``search``), for file kinds."""
        local = self.kind in KINDS and KINDS[self.kind].target in ("path", "dir")
        return Path(self.target).expanduser() if local else None

    @property
    def is_builtin(self) -> bool:
        return self.kind in KINDS and KINDS[self.kind].target == "task"

    def with_target(self, target: str) -> Source:
        return Source(self.kind, target, self.options)

    def with_options(self, **options: Any) -> Source:
        return Source(self.kind, self.target, {**self.options, **options})

    def difficulty(self) -> arith.Difficulty:
        """The built-in task's difficulty from this source's knobs (the defaults without any)."""
        knobs = {k: _spell(v) for k, v in self.options.items() if k in arith.OPTION_NAMES}
        return arith.Difficulty.from_options(knobs)


def _hint(word: str, choices) -> str:
    synonym = {"limit": "n", "n": "limit"}.get(word)  # a count is n for the built-in task, limit for files
    close = [synonym] if synonym in choices else difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(choices)}"


def _hf_like(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?", text))


def _old_spelling(spec: str) -> str | None:
    """The new spelling of a spec written in a replaced grammar, or None.

    >>> [_old_spelling(s) for s in ("builtin:64", "builtin@12", "srlm-builtin:8", "prm800k:d/p.parquet:2000")]
    ['builtin:arith?n=64', 'builtin:arith?n=12', 'srlm-builtin:arith?n=8', 'prm800k:d/p.parquet?limit=2000']
    >>> [_old_spelling(s) for s in ("prm800k=d/p.parquet@4", "d/t.jsonl", "openai/gsm8k:main", "builtin:arith")]
    ['prm800k:d/p.parquet?limit=4', 'jsonl:d/t.jsonl', 'hf:openai/gsm8k:main', None]
    """
    if m := re.fullmatch(r"((?:srlm-)?builtin)(?::(\d+)|@(\d+))?(?:\?(.*))?", spec):
        count = m[2] or m[3]
        options = "&".join(x for x in (f"n={count}" if count else "", m[4] or "") if x)
        return f"{m[1]}:arith{'?' + options if options else ''}"
    if m := re.fullmatch(r"(gsm8k|prm800k|srlm-gsm8k):(.+):(\d+)", spec):
        return f"{m[1]}:{m[2]}?limit={m[3]}"
    if m := re.fullmatch(r"prm800k=(.+?)(?:@(\d+))?", spec):
        return f"prm800k:{m[1]}" + (f"?limit={m[2]}" if m[2] else "")
    body, _, limit = spec.rpartition("@") if re.search(r"@\d+$", spec) else (spec, "", "")
    query = f"?limit={limit}" if limit else ""
    suffix = Path(body).suffix
    if ":" not in body.split("/")[0] or body.startswith((".", "/", "~")):
        if suffix in JSONL_SUFFIXES:
            return f"jsonl:{body}{query}"
        if suffix in PARQUET_SUFFIXES:
            return f"parquet:{body}{query}"
    if _hf_like(body):
        return f"hf:{body}{query}"
    return None


def parse_source(spec: str, kinds: tuple[str, ...] = ALL) -> Source:
    """Parse ``KIND[:TARGET][?OPTIONS]`` for a field that takes ``kinds``; :class:`SourceError` otherwise.

    >>> parse_source("hf:openai/gsm8k:main?split=test&limit=50")
    Source(kind='hf', target='openai/gsm8k:main', options=mappingproxy({'split': 'test', 'limit': 50}))
    >>> parse_source("gsm8k:d/t.jsonl", kinds=EFT)
    Traceback (most recent call last):
    ...
    openrlhf_psr.data.sources.SourceError: 'gsm8k:d/t.jsonl': expected a source of kind builtin, prm800k, \
srlm-builtin, srlm-gsm8k or search here, found 'gsm8k'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError(f"{spec!r}: expected a source such as builtin:arith or jsonl:PATH, found nothing")
    old = _old_spelling(spec)
    if old is not None:
        raise SourceError(f"{spec!r} is the old spelling; write {old!r}")
    head, _, query = spec.partition("?")
    kind, colon, target = head.partition(":")
    if kind not in KINDS:
        if colon and re.fullmatch(r"[a-z][a-z0-9-]*", kind):
            raise SourceError(f"{spec!r}: unknown source kind {kind!r}{_hint(kind, kinds)}")
        if re.search(r"\.[A-Za-z][A-Za-z0-9]{0,9}$", head):  # a bare file name, e.g. a mistyped suffix
            raise SourceError(f"{spec!r}: expected KIND:PATH, e.g. 'jsonl:{head}' for a .jsonl file or "
                              f"'parquet:{head}' for a .parquet file")  # fmt: skip
        raise SourceError(f"{spec!r}: expected KIND:TARGET[?OPTIONS] with KIND one of {', '.join(kinds)}, "
                          "e.g. builtin:arith?n=64 or jsonl:PATH?limit=200")  # fmt: skip
    if kind not in kinds:
        expected = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
        raise SourceError(f"{spec!r}: expected a source of kind {expected} here, found {kind!r}")
    options = _options(spec, kind, query)
    misplaced = [k for k in EFT_ONLY_OPTIONS if k in options and not set(EFT) <= set(kinds)]
    if misplaced:
        raise SourceError(f"{spec!r}: option {misplaced[0]} is for EFT sources only (data.eft, --eft)")
    return Source(kind, _target(spec, kind, target), options)


def _target(spec: str, kind: str, target: str) -> str:
    info = KINDS[kind]
    if not target:
        raise SourceError(f"{spec!r}: expected {info.example}: a {info.target} after '{kind}:', found none")
    if info.target == "task":
        if target not in TASKS:
            raise SourceError(f"{spec!r}: unknown built-in task {target!r}; available: {', '.join(TASKS)}")
    elif info.target == "path":
        suffix = Path(target).suffix
        if suffix not in info.suffixes:
            other = next((k for k in FILE_KINDS if suffix in KINDS[k].suffixes), None)
            if kind in FILE_KINDS and other:
                raise SourceError(f"{spec!r}: a {suffix} file; write '{other}:{target}'")
            close = difflib.get_close_matches(suffix, info.suffixes, n=1, cutoff=0.5)
            hint = f" (did you mean {Path(target).with_suffix(close[0]).name!r}?)" if close else ""
            found = f"suffix {suffix!r}" if suffix else "no suffix"
            raise SourceError(f"{spec!r}: expected a {' or '.join(info.suffixes)} file, found {found}{hint}")
    elif info.target == "dir":
        pass  # any folder name; whether it holds a search is for the reader to say (it names what it found)
    elif not re.fullmatch(r"[^\s:]+(:[^\s:]+)?", target):
        raise SourceError(f"{spec!r}: expected a dataset NAME[:CONFIG], e.g. {info.example}, found {target!r}")
    return target


def _options(spec: str, kind: str, query: str) -> dict[str, Any]:
    allowed, options = KINDS[kind].options, {}
    for item in query.split("&") if query else ():
        key, eq, text = item.partition("=")
        if key not in allowed:
            raise SourceError(f"{spec!r}: unknown option {key!r} for {kind}{_hint(key, allowed)}")
        if not eq or not text:
            raise SourceError(f"{spec!r}: option {key}: expected {key}=VALUE, found {item!r}")
        if key in options:
            raise SourceError(f"{spec!r}: option {key} is given twice")
        try:
            options[key] = _TYPES.get(key, _text)(text)
        except ValueError as exc:
            raise SourceError(f"{spec!r}: option {key}={text!r}: {exc}") from None
    if KINDS[kind].target == "task":
        try:
            Source(kind, "arith", options).difficulty()  # the knobs together (ranges, cap, kinds)
        except ValueError as exc:
            raise SourceError(f"{spec!r}: {exc}") from None
    return options


# -- evaluation benchmarks ----------------------------------------------------------------------------------------
ARITH_BENCHMARK = Source("builtin", "arith", {"seed": 7, "n": 24})  # held-out: a seed no training default uses


@dataclass(frozen=True)
class BenchmarkSpec:
    """``NAME``, ``NAME?OPTIONS`` or ``NAME=SOURCE``: a benchmark's name (its gold-answer rule) and where its
    problems come from; ``source`` None means the default (:meth:`resolve`), with ``options`` added to it."""

    name: str
    source: Source | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __hash__(self) -> int:
        return hash((self.name, self.source, tuple(sorted((k, repr(v)) for k, v in self.options.items()))))

    def __str__(self) -> str:
        if self.source is not None:
            return f"{self.name}={self.source}"
        query = "&".join(f"{k}={_spell(v)}" for k, v in self.options.items())
        return f"{self.name}{'?' + query if query else ''}"

    def resolve(self, data_root: str | Path | None) -> Source:
        """The source to load: the given one, or ``jsonl:<data_root>/NAME/test.jsonl`` (``arith``: the built-in
        task, seed 7, 24 problems) with this spec's options."""
        if self.source is not None:
            return self.source
        if self.name == "arith":
            return ARITH_BENCHMARK.with_options(**self.options)
        if data_root is None:
            raise SourceError(f"benchmark {str(self)!r}: expected a data root (data.eval.data_root, --data-root) "
                              f"or {self.name}=SOURCE")  # fmt: skip
        return Source("jsonl", str(Path(data_root) / self.name / "test.jsonl"), self.options)


def parse_benchmark(spec: str, names: tuple[str, ...] | None = None) -> BenchmarkSpec:
    """Parse an evaluation benchmark spec; ``names`` (when given) are the known benchmark names.

    >>> str(parse_benchmark("gsm8k?limit=50")), parse_benchmark("arith?n=30").resolve(None)
    ('gsm8k?limit=50', Source(kind='builtin', target='arith', options=mappingproxy({'seed': 7, 'n': 30})))
    >>> parse_benchmark("math500=jsonl:/d/t.jsonl?limit=10").source.path
    PosixPath('/d/t.jsonl')
    >>> parse_benchmark("gsm8k@50")
    Traceback (most recent call last):
    ...
    openrlhf_psr.data.sources.SourceError: 'gsm8k@50' is the old spelling; write 'gsm8k?limit=50'
    """
    if m := re.fullmatch(r"([\w.-]+)@(\d+)", spec or ""):
        new = f"{m[1]}?{'n' if m[1] == 'arith' else 'limit'}={m[2]}"
        raise SourceError(f"{spec!r} is the old spelling; write {new!r}")
    m = re.fullmatch(r"([A-Za-z0-9][\w.-]*)(?:([=?])(.*))?", spec or "")
    if not m:
        raise SourceError(f"{spec!r}: expected a benchmark NAME, NAME?OPTIONS or NAME=SOURCE")
    name, sep, rest = m[1], m[2], m[3] or ""
    if sep == "=" and (old := _old_benchmark_source(rest)):
        raise SourceError(f"{spec!r} is the old spelling; write {name + '=' + old!r}")
    if names is not None and name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SourceError(f"benchmark {spec!r}: expected one of {', '.join(names)}, found {name!r}{hint}")
    if sep == "=":
        try:
            return BenchmarkSpec(name, parse_source(rest, PROBLEMS))
        except SourceError as exc:
            raise SourceError(f"benchmark {name!r}: {exc}") from None
    default = ARITH_BENCHMARK if name == "arith" else Source("jsonl", f"{name}/test.jsonl")
    options = _options(spec, default.kind, rest) if sep == "?" else {}
    return BenchmarkSpec(name, None, options)


def _old_benchmark_source(rest: str) -> str | None:
    """The new spelling of an old ``NAME=`` part: ``PATH[@N]`` or ``SOURCE@N``.

    >>> _old_benchmark_source("/d/t.jsonl@10"), _old_benchmark_source("builtin:arith?seed=3@5")
    ('jsonl:/d/t.jsonl?limit=10', 'builtin:arith?seed=3&n=5')
    """
    m = re.fullmatch(r"(.+?)@(\d+)", rest)
    body, limit = (m[1], m[2]) if m else (rest, None)
    new = _old_spelling(body) if body.partition(":")[0] not in KINDS else None
    if new is None and limit is None:
        return None
    new = new or body
    key = "n" if new.startswith("builtin:") else "limit"
    return new + (f"{'&' if '?' in new else '?'}{key}={limit}" if limit else "")
