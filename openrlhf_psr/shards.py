"""Sharded JSONL written atomically, so a long run never loses what it already wrote and resumes from it.

A *commit* writes one shard per record kind (e.g. ``pairs`` then ``trajectories``), each to a temporary file that
is fsynced and renamed into place. The last kind named is the commit record: a shard of the other kinds without it
(a run killed between the two renames) is an orphan and is removed on the next start, so nothing is duplicated.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

_SHARD = re.compile(r"^shard-(\d{5,})\.jsonl$")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSONL file; a malformed line is an error naming the file and line."""
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield record


class ShardStore:
    """Shards under ``root/<kind>/shard-NNNNN.jsonl``; ``kinds[-1]`` is the commit record."""

    def __init__(self, root: str | os.PathLike, kinds: Sequence[str] = ("pairs", "trajectories")):
        self.root = Path(root)
        self.kinds = tuple(kinds)
        self._recover()

    def _shards(self, kind: str) -> dict[int, Path]:
        folder = self.root / kind
        if not folder.is_dir():
            return {}
        return {int(m.group(1)): p for p in folder.iterdir() if (m := _SHARD.match(p.name))}

    def _recover(self) -> None:
        committed = set(self._shards(self.kinds[-1]))
        for kind in self.kinds[:-1]:
            for index, path in self._shards(kind).items():
                if index not in committed:
                    path.unlink()  # orphan of a commit that never completed
        for kind in self.kinds:  # temporary files of an interrupted write
            for tmp in (self.root / kind).glob(".shard-*") if (self.root / kind).is_dir() else ():
                tmp.unlink()

    @property
    def num_shards(self) -> int:
        return len(self._shards(self.kinds[-1]))

    def commit(self, records: dict[str, Sequence[dict]]) -> int:
        """Write one shard of each kind (possibly empty); returns the shard index."""
        missing = set(self.kinds) - set(records)
        if missing:
            raise ValueError(f"commit needs records for every kind; missing {sorted(missing)}")
        existing = [i for kind in self.kinds for i in self._shards(kind)]
        index = max(existing, default=-1) + 1
        for kind in self.kinds:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[kind])
            atomic_write_text(self.root / kind / f"shard-{index:05d}.jsonl", text)
        return index

    def read(self, kind: str) -> Iterator[dict]:
        for _, path in sorted(self._shards(kind).items()):
            yield from read_jsonl(path)
