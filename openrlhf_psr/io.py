"""Sharded JSONL written atomically, so a long run never loses what it already wrote and resumes from it.

A *commit* writes one shard per record kind (e.g. ``pairs`` then ``trajectories``), each to a temporary file that
is fsynced and renamed into place. The last kind named is the commit record: a shard of the other kinds without it
(a run killed between the two renames) is an orphan and is removed on the next start, so nothing is duplicated.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

_SHARD = re.compile(r"^shard-(\d{5,})\.jsonl$")


@functools.cache
def _umask() -> int:
    """This process's umask (read once: reading it means setting it, process-wide)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` give a new file / folder under the umask. ``tempfile.mkstemp`` and
    ``mkdtemp`` make theirs private (0600 / 0700); what is written through them and renamed into a runs dir must be
    readable as anything else the user writes (by Ray workers and teammates reading a runs dir on shared storage)."""
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())  # not mkstemp's 0600 (see umask_mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSONL file; a line that is not UTF-8, not JSON or not an object is a
    :class:`~openrlhf_psr.errors.DataError` naming the file and line (a :class:`ValueError`)."""
    from openrlhf_psr.errors import DataError

    if Path(path).is_dir():
        raise DataError(f"{path}: expected a JSONL file, found a folder")
    with open(path, "rb") as handle:  # bytes, so that an undecodable line is reported with its number
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                found = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
                raise DataError(f"{path}:{number}: expected UTF-8 text, found {found}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); expected one JSON object "
                    "per line"
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, found {_json_kind(record)}")
            yield record


def read_json(path: Path, what: str = "JSON") -> dict:
    """A JSON object from a file; a file that is not UTF-8 JSON holding an object is a
    :class:`~openrlhf_psr.errors.DataError` naming the file and line (``what`` says what it should hold)."""
    from openrlhf_psr.errors import DataError

    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: expected UTF-8 {what}, found byte 0x{exc.object[exc.start]:02x}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: expected {what}, found invalid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected {what} (a JSON object), found {_json_kind(value)}")
    return value


def read_parquet_rows(path: Path) -> list[dict]:
    """Rows of a Parquet file; a file Arrow cannot read is a :class:`~openrlhf_psr.errors.DataError` naming it."""
    import pyarrow
    import pyarrow.parquet as pq

    from openrlhf_psr.errors import DataError, one_line

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as exc:
        reason = one_line(str(exc))
        raise DataError(f"{path}: expected a Parquet file, found one Arrow cannot read ({reason})") from None


def _json_kind(value) -> str:
    """``a list``, ``a string``, ... for messages about JSON values."""
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


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

    def read_located(self, kind: str) -> Iterator[tuple[str, dict]]:
        """``(where, record)``: each record with ``"<shard>: record N"``, for messages about a malformed row."""
        for _, path in sorted(self._shards(kind).items()):
            for number, record in enumerate(read_jsonl(path), 1):
                yield f"{path}: record {number}", record
