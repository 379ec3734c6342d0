"""What every command line of the project shares: one-line argparse errors, numbers checked where
they are parsed, output paths checked before any work."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Iterable


class ArgParser(argparse.ArgumentParser):
    """argparse with the project's bad-input rule: one line on stderr, exit status 2 (no usage
    block). Subcommand parsers made from it (``add_subparsers``) inherit the rule."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in low..high (no upper bound when ``high`` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            want = f"in {low}..{high}" if high is not None else "positive" if low == 1 else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


positive_int = int_range(1)
nonnegative_int = int_range(0)


def output_problem(path: str, make_parents: bool = True) -> str | None:
    """Why a file a command will write cannot be written, checked before any work (its folder
    exists, or with ``make_parents`` can be created, and is writable; the path is not a folder);
    None when it can. Creates nothing."""
    if not path:  # an unset shell variable: Path("") is the current directory
        return "an empty path names no file"
    target = Path(path)
    if target.is_dir():
        return "is a directory"
    if not make_parents and not target.parent.is_dir():
        return f"no such directory {target.parent}"
    nearest = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        return f"cannot be written ({nearest} is not a writable directory)"
    return None


def output_clash(flag: str, path: str, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> str | None:
    """The refusal of an output ``path`` that would destroy an input: an input file (links followed),
    or a file that exists inside an input folder (a data or event file); None when it is neither. A
    new file inside one (a run's dawn.tsv beside its events) harms nothing and is let through.
    ``inputs``: (what it is, its path or None) pairs, e.g. ("the --config file", "cfg.yaml")."""
    out = os.path.realpath(path)
    for what, given in inputs:
        if not given or not os.path.exists(given):
            continue
        src = os.path.realpath(given)
        if out == src or (os.path.exists(path) and os.path.samefile(path, given)):
            return f"{flag} {path} is an input ({what}): choose another path"
        if os.path.isdir(src) and os.path.commonpath([src, out]) == src and os.path.lexists(path):
            return f"{flag} {path} lies inside an input ({what} {given}): choose another path"
    return None
