"""Fingerprints of what a stage reads, so that a rerun notices a change instead of reusing stale results.

A stage's fingerprint is the digest of its resolved command (with the run folder, the runs dir holding it and the
interpreter spelled neutrally, so moving or copying a runs dir, or rebuilding the environment, changes nothing, also
for a run that reads a sibling run's model as the evidence driver's arms do) and of every input path the command
names: data files, search outputs, model folders. Two kinds of digest:

- :class:`ContentHasher` (the launcher): SHA-256 of file contents, remembered per ``(path, size, mtime)`` in a
  cache file, so each file is read once per modification and a copy that only changed mtimes (``cp`` without
  ``-p``) does not look changed. Rerunning a stage throws away hours of work: only a real change may cause it.
- :func:`stat_fingerprint` (the step-DPO reference cache): size and mtime of every file of a model folder,
  without reading the weights; a false "changed" only costs one reference pass.

Pure standard library: status checks import no heavy stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

# Flags whose value a stage writes, never reads (they are cleared when the stage reruns from scratch).
OUTPUT_FLAGS = ("--out", "--ckpt.output_dir", "--ckpt.path", "--logger.tensorboard_dir", "--save_path")
# The stage's own config file: the launcher writes it at the stage's start, and its settings are already part of the
# fingerprinted command (``Stage.settings_args``); counted as an input, it would change the fingerprint by existing.
GENERATED_FLAGS = ("--config",)
MODEL_FLAGS = ("--model", "--model.model_name_or_path", "--ref.model_name_or_path", "--pretrain")
_CHUNK = 1 << 20


def _files(path: Path) -> list[Path]:
    """A file, or every file under a folder in a fixed order (symlinked folders are not followed)."""
    if path.is_file():
        return [path]
    out = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        out += [Path(folder) / name for name in sorted(files)]
    return out


def _relative(file: Path, root: Path) -> str:
    return "." if file == root else file.relative_to(root).as_posix()


def stat_fingerprint(path: str | Path) -> str:
    """Digest of the relative path, size and mtime of every file of ``path`` (a file or a folder).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "model.safetensors").write_bytes(b"weights")
    >>> before = stat_fingerprint(folder)
    >>> os.utime(folder / "model.safetensors", ns=(1, 1))
    >>> stat_fingerprint(folder) != before
    True
    """
    root, digest = Path(path), hashlib.sha256()
    for file in _files(root):
        st = file.stat()
        digest.update(f"{_relative(file, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def model_fingerprint(name_or_path: str) -> str:
    """What identifies a model's weights: the stat fingerprint of a local file or folder; an embedded model's
    package version and file; otherwise (a hub name) the name itself.

    >>> model_fingerprint("Qwen/Qwen2.5-Math-7B")
    'name:Qwen/Qwen2.5-Math-7B'
    """
    path = Path(name_or_path)
    if path.exists():
        return "stat:" + stat_fingerprint(path)
    from openrlhf_psr.model_cache import EMBEDDED

    if name_or_path in EMBEDDED:
        return f"embedded:{EMBEDDED[name_or_path]!r}"
    return f"name:{name_or_path}"


class ContentHasher:
    """SHA-256 of files and folders, remembered per ``(resolved path, size, mtime_ns)`` in ``cache_path``."""

    def __init__(self, cache_path: str | Path | None = None):
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, list] = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except ValueError:
                self.cache = {}  # a damaged cache only costs rehashing

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        self.cache[key] = [st.st_size, st.st_mtime_ns, digest.hexdigest()]
        return digest.hexdigest()

    def path(self, path: str | Path) -> str:
        """Digest of a file's content, or of a folder's relative paths and file contents."""
        root, digest = Path(path), hashlib.sha256()
        for file in _files(root):
            digest.update(f"{_relative(file, root)}\0{self.file(file)}\n".encode())
        return digest.hexdigest()[:16]

    def save(self) -> None:
        if self.cache_path is None:
            return
        from openrlhf_psr.io import atomic_write_text

        atomic_write_text(self.cache_path, json.dumps(self.cache))


def command_paths(command: Sequence[str], *, skip: Iterable[str | Path] = ()) -> tuple[list[str], list[str]]:
    """(inputs, outputs): the existing paths a command names as inputs, and the values of its output flags.

    An argument counts as an input when it exists on this machine and is neither an output flag's value, nor
    one of ``skip`` or a folder holding one of them (the run folder itself: the report reads the whole run).
    """
    skipped = [Path(p).resolve() for p in skip]
    inputs, outputs = [], []
    for k, arg in enumerate(command):
        if k > 0 and command[k - 1] in OUTPUT_FLAGS:
            outputs.append(arg)
            continue
        if k > 0 and command[k - 1] in GENERATED_FLAGS:
            continue
        if arg.startswith("-") or not arg or "\n" in arg or len(arg) > 4096:
            continue
        arg = _spec_path(arg) or arg  # a data file named inside a source spec is the input, not the spec
        path = Path(arg)
        try:
            if not path.exists():
                continue
            resolved = path.resolve()
        except OSError:
            continue
        if any(resolved == s or resolved in s.parents for s in skipped):
            continue
        inputs.append(arg)
    return inputs, outputs


def _spec_path(arg: str) -> str | None:
    """The local file a data-source spec names (``jsonl:PATH?limit=2``, ``math500=jsonl:PATH``), else None.

    >>> _spec_path("prm800k:/d/pairs.parquet?limit=4"), _spec_path("gsm8k=jsonl:/d/t.jsonl"), _spec_path("x")
    ('/d/pairs.parquet', '/d/t.jsonl', None)
    """
    from openrlhf_psr.data.sources import parse_benchmark, parse_source

    for parse in (parse_source, parse_benchmark):
        try:
            parsed = parse(arg)
        except (ValueError, TypeError):
            continue
        source = getattr(parsed, "source", parsed)
        path = getattr(source, "path", None)
        if path is not None:
            return str(path)
    return None


def neutral_paths(text: str, run_root: str | Path, runs_dir: str | Path | None = None) -> str:
    """``text`` with the run folder spelled ``<run>`` and the runs dir holding it ``<runs>``, whole names only (a
    sibling run ``demo-oracle`` is not the run ``demo`` with a suffix).

    >>> neutral_paths("/r/demo/sft/model,/r/demo-oracle/iter_1,/r/demo", "/r/demo", "/r")
    '<run>/sft/model,<runs>/demo-oracle/iter_1,<run>'
    """
    for path, name in ((run_root, "<run>"), (runs_dir, "<runs>")):
        if path is not None:
            text = re.sub(re.escape(str(path)) + r"(?![\w.-])", name, text)
    return text


def stage_fingerprint(
    command: Sequence[str],
    hasher: ContentHasher,
    *,
    run_root: str | Path,
    runs_dir: str | Path | None = None,
    python: str | None = None,
) -> dict:
    """``{"command": digest, "inputs": {path: digest}}`` of one stage (see the module docstring).

    Paths inside the run folder are recorded relative to it (``<run>/sft/model``), other paths inside ``runs_dir``
    relative to that (``<runs>/evidence_cpu/sft/model``); embedded model names (``default``) are fingerprinted by
    their package version.
    """
    root = str(run_root)
    neutral = []
    for arg in command:
        if python is not None and arg == python:
            arg = "<python>"
        neutral.append(neutral_paths(arg, root, runs_dir))
    inputs, _ = command_paths(command, skip=[run_root, *([python] if python else [])])
    record: dict[str, str] = {}
    for path in inputs:
        record[neutral_paths(path, root, runs_dir)] = hasher.path(path)
    for k, arg in enumerate(command):
        # a model given by name (embedded or hub); a run's own model folder not written yet is only a path
        if k > 0 and command[k - 1] in MODEL_FLAGS and not Path(arg).exists() and not arg.startswith(root):
            record[f"model:{arg}"] = model_fingerprint(arg)
    digest = hashlib.sha256(shlex.join(neutral).encode()).hexdigest()[:16]
    return {"command": digest, "inputs": dict(sorted(record.items()))}


def changes(old: dict | None, new: dict) -> list[str]:
    """What differs between two stage fingerprints, in words (empty when equal or when nothing was recorded).

    >>> changes({"command": "a", "inputs": {"d.jsonl": "1", "m": "2"}}, {"command": "b", "inputs": {"d.jsonl": "3"}})
    ['its command or settings', 'input d.jsonl', 'input m (no longer read)']
    """
    if not old:
        return []
    out = ["its command or settings"] if old.get("command") != new.get("command") else []
    before, after = old.get("inputs", {}), new.get("inputs", {})
    for key in sorted(set(before) | set(after)):
        if key not in before:
            out.append(f"input {key} (new)")
        elif key not in after:
            out.append(f"input {key} (no longer read)")
        elif before[key] != after[key]:
            out.append(f"input {key}")
    return out
