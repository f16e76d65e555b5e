"""What every command of ``openrlhf-psr`` shares: one error handler, one-line usage errors, one boolean style.

A command is a module with ``add_arguments(parser)`` and ``run(args) -> int``. :func:`execute` runs it: a
:class:`~openrlhf_psr.errors.UserError` (bad recipe, data file, manifest, flag, ...), an unknown plugin, or a missing
file is printed as ``openrlhf-psr: error: <message>`` lines (one per problem) and the exit status is 2; a launcher
stage that failed (:class:`~openrlhf_psr.errors.StageFailed`) as its name, exit status, log path and last lines,
exit status 1 (its traceback is in its log); anything else is a bug and keeps its traceback. ``--debug`` shows
the traceback of user errors too. The same handler serves ``openrlhf-psr <command>`` and
``python -m openrlhf_psr.cli.<command>`` (:func:`module_main`).

Booleans are explicit: ``--chat-template on`` / ``--chat-template off``; any other value is an error. This module
imports nothing heavy, so bad input is answered before torch, vLLM or Ray load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from openrlhf_psr.errors import StageFailed, UserError, one_line

PROG = "openrlhf-psr"
EXIT_USER_ERROR = 2
EXIT_STAGE_FAILED = 1


class UsageError(UserError):
    """A command line that does not parse (unknown flag, bad value, missing argument)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and go through :func:`execute`."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def on_off(text: str) -> bool:
    """The value of a boolean flag: exactly ``on`` or ``off``.

    >>> on_off("on"), on_off("off")
    (True, False)
    >>> on_off("true")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected on or off, found 'true'
    """
    if text == "on":
        return True
    if text == "off":
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, found {text!r}")


def on_off_text(value: bool) -> str:
    """How a command line spells a boolean (the inverse of :func:`on_off`)."""
    return "on" if value else "off"


def add_switch(parser, flag: str, default: bool, help: str | None = None) -> None:
    """A boolean flag in the one style of this package: ``FLAG on`` / ``FLAG off``."""
    text = f"on or off (default: {on_off_text(default)})"
    help = f"{help}: {text}" if help else text
    parser.add_argument(flag, type=on_off, default=default, metavar="{on,off}", help=help)


def json_object(text: str) -> dict:
    """A flag value holding a JSON object (plugin settings).

    >>> json_object('{"batch_size": 4}')
    {'batch_size': 4}
    >>> json_object("[1]")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a JSON object, found '[1]'
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {one_line(text)!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {one_line(text)!r}")
    return value


def positive_int(text: str) -> int:
    """A count that must be positive.

    >>> positive_int("3")
    3
    >>> positive_int("-5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive integer, found '-5'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def add_debug(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--debug``: tracebacks for user errors too. On a subcommand it only overrides when given."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of user errors as well",
    )


def _user_error_lines(exc: BaseException) -> list[str] | None:
    """The one-line messages of an error the user can fix, or None for a bug."""
    from openrlhf_psr.registry import RegistryError

    if isinstance(exc, UserError):
        return exc.problems
    if isinstance(exc, RegistryError):
        return [str(exc)]
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, ConnectionError):
        return [f"{exc.filename}: {exc.strerror or exc}"]
    if isinstance(exc, FileNotFoundError):  # raised with a message naming the file
        return [str(exc)]
    return None


def report(lines: list[str]) -> None:
    for line in lines:
        print(f"{PROG}: error: {one_line(line, 2000)}", file=sys.stderr)


def execute(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command; user errors become ``openrlhf-psr: error:`` lines and exit status 2 (see module doc).
    The command sees only its own arguments (not ``debug`` or the table's ``command``/``func``)."""
    debug = getattr(args, "debug", False)
    own = args
    if isinstance(args, argparse.Namespace):
        own = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("debug", "command", "func")})
    try:
        code = func(own)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except StageFailed as exc:  # the stage's own log holds its traceback; ours would only show the launcher
        if debug:
            raise
        print(f"{PROG}: error: stage {exc.stage} failed (exit {exc.code}); its log: {exc.log}", file=sys.stderr)
        print("\n".join(f"    {line}" for line in exc.tail.rstrip().splitlines()[-25:]), file=sys.stderr)
        return EXIT_STAGE_FAILED
    except Exception as exc:
        lines = _user_error_lines(exc)
        if lines is None or debug:
            raise
        report(lines)
        return EXIT_USER_ERROR
    return 0 if code is None else int(code)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status after a one-line usage error."""
    try:
        return parser.parse_args(argv)
    except UsageError as exc:
        report(exc.problems)
        return EXIT_USER_ERROR


def module_main(add_arguments: Callable, run: Callable, argv: list[str] | None, prog: str, doc: str | None) -> int:
    """``python -m openrlhf_psr.cli.<command>``: the same parser and the same error handler as the subcommand."""
    parser = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug(parser, top=True)
    add_arguments(parser)
    args = parse(parser, argv)
    return args if isinstance(args, int) else execute(run, args)


def exit_without_teardown(code: int) -> None:
    """End a stage process that ran vLLM with ``code``, skipping the interpreter's teardown.

    Every output is written (atomically) and closed before this. Measured here: the search stage with the likelihood
    judge finished and wrote its summary, then aborted while the interpreter tore down vLLM's threads ("terminate
    called without an active exception", SIGABRT, exit -6), and the launcher rightly marked the stage failed. The
    exit code is the stage's result, so it must say what the stage did, not how native threads died afterwards.
    The ``atexit`` handlers still run (the grading pool stops its workers, vLLM shuts its engine core down).
    """
    import atexit
    import os
    import sys

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
