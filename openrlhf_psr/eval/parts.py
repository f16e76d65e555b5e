"""Finished parts of an evaluation, so a killed evaluation resumes instead of starting over.

Each benchmark's scored records and each judge-accuracy result is written, atomically and whole, to
``OUT/parts/<part>.json`` as soon as it is finished; ``eval.json`` is assembled from them at the end. A rerun reuses
a part only when its key matches: a digest of everything its result depends on (the evaluation's settings, the
model's files, the part's inputs), so a retrained model or changed settings recompute it. A part is one file
holding all its records, so a resumed evaluation can neither lose nor duplicate records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from openrlhf_psr.pause import pause_at


def digest(*inputs) -> str:
    """A stable hex digest of JSON-like values and dataclasses (problems, labelled pairs).

    >>> digest({"a": 1, "b": [2]}) == digest({"b": [2], "a": 1}), len(digest("x"))
    (True, 64)
    """

    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return str(value)

    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=plain).encode()).hexdigest()


class EvalParts:
    """``OUT/parts/<part>.json`` records ``{"version", "part", "key", "result"}``, read back only on a key match.

    >>> import tempfile
    >>> parts = EvalParts(tempfile.mkdtemp(), settings={"max_tokens": 64})
    >>> parts.get("benchmark-arith", [1, 2]) is None
    True
    >>> parts.put("benchmark-arith", [1, 2], {"metrics": {"accuracy": 0.5}})
    >>> parts.get("benchmark-arith", [1, 2]), parts.get("benchmark-arith", [1, 3])
    ({'metrics': {'accuracy': 0.5}}, None)
    """

    def __init__(self, out: str | Path, settings: dict):
        self.dir = Path(out) / "parts"
        self.settings = settings

    def _path(self, part: str) -> Path:  # judge names may be ``module:attr``
        return self.dir / (re.sub(r"[^A-Za-z0-9._-]", "_", part) + ".json")

    def _key(self, part: str, inputs) -> str:
        return digest(self.settings, part, inputs)

    def get(self, part: str, inputs) -> dict | None:
        try:
            record = json.loads(self._path(part).read_text())
        except (OSError, ValueError):  # absent, or unreadable: recomputed and replaced
            return None
        if not isinstance(record, dict) or record.get("key") != self._key(part, inputs):
            return None
        return record.get("result")

    def put(self, part: str, inputs, result: dict) -> None:
        from openrlhf_psr.io import atomic_write_text

        record = {"version": 1, "part": part, "key": self._key(part, inputs), "result": result}
        atomic_write_text(self._path(part), json.dumps(record))
        pause_at(f"eval-part:{part}")
