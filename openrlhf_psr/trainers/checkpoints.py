"""DeepSpeed checkpoints that a kill cannot leave looking whole (the file-system side; no torch import).

Upstream's ``DeepspeedStrategy.save_ckpt`` first rotates old checkpoints out (with ``--ckpt.max_num 1`` it deletes
the only one), then DeepSpeed writes the tag's files and, on rank 0, the ``latest`` pointer (truncated, then
written; with several ranks, before the other ranks are known to have finished). A kill inside that sequence can
leave no checkpoint at all, a ``latest`` that is empty or names a deleted or half-written folder.

Here a tag counts only once its :data:`MARKER` exists: written atomically by rank 0 after DeepSpeed's save returned
on every rank (it ends with a barrier). Old tags are rotated out only after the new one is marked, so the last
complete checkpoint survives any kill. A resume loads the last complete tag and points ``latest`` at it; tags
without the marker are ignored (and replaced when the run saves the same tag again), never loaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

MARKER = "psr_complete.json"
_TAG = re.compile(r"^global_step(\d+)$")  # the tag upstream's DPOTrainer saves under


def checkpoint_tags(ckpt_dir: str | Path) -> tuple[list[str], list[str]]:
    """``(complete, incomplete)`` DeepSpeed tags (``global_step<N>`` folders) under ``ckpt_dir``, by step.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for tag in ("global_step10", "global_step2", "global_step12", "global_step2_hf"):
    ...     (root / tag).mkdir()
    >>> _ = [(root / t / MARKER).write_text("{}") for t in ("global_step2", "global_step10")]
    >>> checkpoint_tags(root)
    (['global_step2', 'global_step10'], ['global_step12'])
    """
    root = Path(ckpt_dir)
    if not root.is_dir():
        return [], []
    tags = sorted((p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name)), key=lambda p: _step(p.name))
    return [p.name for p in tags if (p / MARKER).is_file()], [p.name for p in tags if not (p / MARKER).is_file()]


def _step(tag: str) -> int:
    return int(_TAG.match(tag).group(1))


def mark_complete(ckpt_dir: str | Path, tag: str, client_state: dict | None = None) -> None:
    """Declare ``tag`` whole (call on rank 0 after DeepSpeed's save returned everywhere)."""
    from openrlhf_psr.io import atomic_write_text

    record = {"version": 1, "tag": tag, "client_state": client_state or {}}
    atomic_write_text(Path(ckpt_dir) / tag / MARKER, json.dumps(record, sort_keys=True))


def rotate(ckpt_dir: str | Path, max_num: int, max_mem_gib: float = float("inf")) -> list[str]:
    """Remove the oldest complete tags (with their ``<tag>_hf`` exports) beyond ``max_num`` or while they take
    more than ``max_mem_gib``; the newest complete tag is always kept. Returns the removed tags.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for n in (1, 2, 3):
    ...     (root / f"global_step{n}").mkdir(); mark_complete(root, f"global_step{n}")
    >>> (root / "global_step1_hf").mkdir(); (root / "global_step4").mkdir()  # an export; a half-written tag
    >>> rotate(root, max_num=1), sorted(p.name for p in root.iterdir())
    (['global_step1', 'global_step2'], ['global_step3', 'global_step4'])
    """
    root = Path(ckpt_dir)
    complete, _ = checkpoint_tags(root)
    limit = max_mem_gib * 1024**3
    removed = []
    while len(complete) > 1 and (len(complete) > max(1, max_num) or _size(root, complete) > limit):
        tag = complete.pop(0)
        shutil.rmtree(root / f"{tag}_hf", ignore_errors=True)
        shutil.rmtree(root / tag, ignore_errors=True)
        removed.append(tag)
    return removed


def _size(root: Path, tags: list[str]) -> int:
    return sum(f.stat().st_size for tag in tags for f in (root / tag).rglob("*") if f.is_file())


def prepare_resume(ckpt_dir: str | Path) -> tuple[str | None, list[str]]:
    """Point DeepSpeed's ``latest`` at the last complete tag (remove it when there is none, so no tool follows it
    into a half-written folder); returns ``(that tag or None, the incomplete tags ignored)``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "global_step1").mkdir(); mark_complete(root, "global_step1"); (root / "global_step2").mkdir()
    >>> _ = (root / "latest").write_text("global_step2")
    >>> prepare_resume(root), (root / "latest").read_text()
    (('global_step1', ['global_step2']), 'global_step1')
    """
    from openrlhf_psr.io import atomic_write_text

    root = Path(ckpt_dir)
    complete, incomplete = checkpoint_tags(root)
    latest = root / "latest"
    if complete:
        if not latest.is_file() or latest.read_text().strip() != complete[-1]:
            atomic_write_text(latest, complete[-1])
        return complete[-1], incomplete
    latest.unlink(missing_ok=True)
    return None, incomplete
