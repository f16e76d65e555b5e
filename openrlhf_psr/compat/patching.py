"""Apply a unified diff to one module's source text, in memory.

The patches in ``patches/`` are ordinary unified diffs against a pinned upstream release (``patch -p1`` applies them
to a checkout too). The compatibility loader applies them to the source it is about to compile instead of editing
site-packages, so the installed wheel stays pristine and a GPU machine never sees them.

>>> diff = '''--- a/m.py
... +++ b/m.py
... @@ -1,2 +1,2 @@
...  import torch
... -x = torch.cuda.current_device()
... +x = "cpu"
... '''
>>> apply_patch("import torch\\nx = torch.cuda.current_device()\\n", parse_patch(diff)[0])
'import torch\\nx = "cpu"\\n'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


class PatchError(RuntimeError):
    """A patch does not apply to the source it targets (usually: another upstream version is installed)."""


@dataclass(frozen=True)
class Hunk:
    old_start: int  # 1-based line in the original file, a hint: the hunk is located by its exact text
    old_lines: tuple[str, ...]
    new_lines: tuple[str, ...]


@dataclass(frozen=True)
class FilePatch:
    path: str  # relative to site-packages, e.g. "openrlhf/models/ring_attn_utils.py"
    hunks: tuple[Hunk, ...]

    @property
    def module(self) -> str:
        """The dotted module name the patched file defines."""
        name = self.path[: -len(".py")].replace("/", ".")
        return name[: -len(".__init__")] if name.endswith(".__init__") else name


def parse_patch(text: str) -> list[FilePatch]:
    """Parse a unified diff (``diff -u`` / ``git diff`` output) into per-file hunks."""
    files: list[FilePatch] = []
    path: str | None = None
    hunks: list[Hunk] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ "):
            if path is not None:
                files.append(FilePatch(path, tuple(hunks)))
            target = line[4:].split("\t")[0].strip()
            path, hunks = (target[2:] if target.startswith("b/") else target), []
        elif line.startswith("@@"):
            match = _HUNK_HEADER.match(line)
            if match is None or path is None:
                raise PatchError(f"malformed hunk header {line!r}")
            old, new = [], []
            i += 1
            while i < len(lines) and not lines[i].startswith(("@@", "--- ", "diff ")):
                body = lines[i]
                tag, content = (body[:1], body[1:]) if body else (" ", "")
                if tag in (" ", "-"):
                    old.append(content)
                if tag in (" ", "+"):
                    new.append(content)
                i += 1
            hunks.append(Hunk(int(match.group(1)), tuple(old), tuple(new)))
            continue
        i += 1
    if path is not None:
        files.append(FilePatch(path, tuple(hunks)))
    return files


def apply_patch(source: str, patch: FilePatch) -> str:
    """Return ``source`` with every hunk of ``patch`` applied; each hunk's context must match exactly once."""
    lines = source.splitlines()
    offset = 0
    for number, hunk in enumerate(patch.hunks, 1):
        n = len(hunk.old_lines)
        starts = [k for k in range(len(lines) - n + 1) if tuple(lines[k : k + n]) == hunk.old_lines]
        if len(starts) != 1:
            found = "not found" if not starts else f"found {len(starts)} times"
            raise PatchError(f"{patch.path}: hunk {number} (line {hunk.old_start}) {found}")
        k = starts[0]
        lines[k : k + n] = hunk.new_lines
        offset += len(hunk.new_lines) - n
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")
