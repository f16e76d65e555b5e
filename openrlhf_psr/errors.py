"""Errors the user can fix, as opposed to bugs: the command line prints them as one line each, with no traceback.

A message names where the problem is (``file:line``, a row, a recipe key or a flag), what was expected and what was
found, e.g. ``data/train.jsonl:7: expected a JSON object, found a list``. A check that finds several problems at once
(the ``--dry-run`` preflight, a recipe with several bad keys) raises one error carrying all of them, one per line.
Pure module: no heavy imports.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input or set-up; every line of ``str()`` is one self-contained message.

    >>> str(UserError("a.yaml: name: expected a folder name, found '../x'"))
    "a.yaml: name: expected a folder name, found '../x'"
    >>> UserError.of(["x: expected 1, found 2", "y: expected 3, found 4"]).problems
    ['x: expected 1, found 2', 'y: expected 3, found 4']
    """

    @classmethod
    def of(cls, problems: list[str]) -> UserError:
        return cls("\n".join(problems))

    @property
    def problems(self) -> list[str]:
        return [line for line in str(self).splitlines() if line.strip()] or [type(self).__name__]

    def __str__(self) -> str:  # the message as given, also for the KeyError subclass (no repr quotes)
        return BaseException.__str__(self)


class DataError(UserError, ValueError):
    """A data file (or dataset row, or run folder) that cannot be read as what it should be."""


class MissingField(DataError, KeyError):
    """A row without a field it needs (a ``KeyError`` too, for callers that catch that).

    >>> str(MissingField("p.jsonl:2: missing field 'chosen'"))
    "p.jsonl:2: missing field 'chosen'"
    """


class StageFailed(RuntimeError):
    """A launcher stage (its own process) exited non-zero or left no output. Not a bug of the command that ran it:
    the CLI prints the stage, its exit status, its log's path and last lines, without a traceback, and exits 1."""

    def __init__(self, stage: str, code: int | None, log: str, tail: str):
        super().__init__(f"stage {stage} failed (exit {code}); last lines of {log}:\n{tail}")
        self.stage, self.code, self.log, self.tail = stage, code, log, tail


def one_line(text: str, limit: int = 300) -> str:
    """A fragment of untrusted text fit for a one-line message: newlines escaped, long text cut.

    >>> one_line("a\\nb" + "x" * 400)[:6], len(one_line("y" * 400))
    ('a\\\\nbxx', 301)
    """
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "…"
