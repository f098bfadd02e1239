"""What every command-line entry point shares: arguments from dataclasses, and one error wrapper.

Each command is a module with a docstring holding a command to paste, dataclasses of arguments whose
fields carry ``metadata={"help": ...}`` (and ``"choices"``), a ``run(args)`` that Python callers use, and
``main = command(...)``. :func:`command` parses with transformers' ``HfArgumentParser`` (help shows every
default and choice) and runs under :func:`guarded`: a user error (bad value, missing file, unusable output
directory, missing optional package) prints one line on stderr and exits 2, never a traceback. Console
scripts point at the same ``main``. Modules keep heavy imports (torch, transformers' models) inside
``run``, so ``--help`` is quick.
"""

from __future__ import annotations

import errno
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from collections.abc import Callable, Sequence

USER_ERRORS = (ValueError, KeyError, LookupError, FileNotFoundError, NotADirectoryError, FileExistsError, ImportError)
_OS_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.ENAMETOOLONG: "file name too long",
}


class UsageError(ValueError):
    """A bad command line (exit 2)."""


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.errno in _OS_ERRORS:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{_OS_ERRORS[e.errno]}"
    return str(e)


def guarded(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a user error prints ``error: ...`` (one line) on stderr and returns 2."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _OS_ERRORS:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2


class _Formatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    pass


def _parser(types: Sequence[type], prog: str, doc: str | None):
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):  # one line through guarded (argparse's own prints the whole usage first)
            raise UsageError(f"{message} (see {self.prog} --help)")

    return Parser(list(types), prog=prog, description=doc, formatter_class=_Formatter)


def parse(types: Sequence[type], argv: list[str] | None, prog: str, doc: str | None = None) -> tuple:
    """Parse ``argv`` into one instance of each dataclass in ``types`` (their ``__post_init__`` checks run)."""
    parser = _parser(types, prog, doc)
    *parsed, rest = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False, return_remaining_strings=True
    )
    if rest:
        raise UsageError(f"unrecognized arguments: {' '.join(rest)} (see {prog} --help)")
    return tuple(parsed)


def command(
    types: Sequence[type], run: Callable, prog: str, doc: str | None, report: Callable | None = None
) -> Callable[[list[str] | None], int]:
    """``main(argv=None) -> int``: parse into ``types``, call ``run(*args)``, then ``report(result)``; guarded."""

    def body(argv: list[str] | None) -> int:
        result = run(*parse(types, argv, prog, doc))
        if report is not None:
            report(result)
        return 0

    def main(argv: list[str] | None = None) -> int:
        return guarded(body, argv)

    main.__doc__ = f"Entry point of ``{prog}``."
    return main


def subcommands(commands: dict[str, tuple[type, Callable, str]], prog: str, doc: str | None) -> Callable:
    """``main`` for ``prog <name> [options]``: ``commands`` maps a name to (args dataclass, run, one-line help).

    Each ``run`` prints its own output and returns an exit code.
    """

    def body(argv: list[str] | None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        listing = "\n".join(f"  {n:<10} {h}" for n, (_, _, h) in commands.items())
        if not argv or argv[0] in ("-h", "--help"):
            print(f"usage: {prog} {{{','.join(commands)}}} [options]\n\n{doc or ''}\ncommands:\n{listing}")
            return 0 if argv else 2
        name, rest = argv[0], argv[1:]
        if name not in commands:
            raise UsageError(f"unknown command {name!r}. Available: {', '.join(commands)}")
        types, run, help_ = commands[name]
        positional = getattr(types, "POSITIONAL", None)  # leading bare words fill this list field
        if positional and rest and not rest[0].startswith("-"):
            rest = [f"--{positional}", *rest]
        return run(*parse([types], rest, f"{prog} {name}", help_))

    def main(argv: list[str] | None = None) -> int:
        return guarded(body, argv)

    return main
