"""Text from a command line or a file, parsed with bounds: its length and nesting are checked
before any recursive parser (``ast``, PyYAML's composer) sees it, so a generated or hostile string
is a one-line error, not a RecursionError traceback or a parser busy for minutes.

A phase schedule nests 3 deep (a list of dicts of ``[start, end]`` pairs) and a config 4 (a
section holding ``phases``); MAX_DEPTH leaves room for both, and for nothing a run can mean.
YAML aliases (``*name``) are refused: no config needs them, and they can make a small text expand
into an exponentially large one. Pure Python (no torch): phases.py and config.py use it.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 16  # nested lists / dicts / tuples


class TextError(ValueError):
    """Text that cannot be parsed; the message is one line and says where."""


class LimitError(TextError):
    """Text longer or deeper than the bounds allow (refused before it is parsed)."""


def read_text(path: str, max_chars: int) -> str:
    """A file's text; LimitError when it holds more than ``max_chars`` characters (only that many
    are read). OSError and UnicodeDecodeError propagate for the caller to name."""
    with open(path, encoding="utf-8") as f:
        text = f.read(max_chars + 1)
    check_length(text, max_chars)
    return text


def check_length(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise LimitError(f"longer than {max_chars:,} characters (not parsed)")


def bracket_depth(text: str) -> int:
    """The deepest nesting of ([{ outside quoted strings and # comments: Python literal and JSON
    nesting, and YAML's flow style. Linear, no recursion."""
    depth = deepest = 0
    quote, escaped, comment = "", False, False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(depth - 1, 0)
    return deepest


def check_nesting(text: str, max_depth: int = MAX_DEPTH) -> None:
    if bracket_depth(text) > max_depth:
        raise LimitError(f"nested more than {max_depth} levels deep (not parsed)")


def load_yaml(text: str, max_chars: int, max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load`` after the bounds: PyYAML's event parser is iterative, so the block and
    flow nesting (and any alias) is measured on its events before the recursive composer runs."""
    check_length(text, max_chars)
    check_nesting(text, max_depth)
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise LimitError(f"{_where(event.start_mark)}: YAML aliases (*{event.anchor}) are not accepted")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise LimitError(f"{_where(event.start_mark)}: nested more than {max_depth} levels deep "
                                     "(not parsed)")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except TextError:  # our own limits (a ValueError too)
        raise
    except yaml.YAMLError as e:
        raise TextError(yaml_error(e)) from None
    except ValueError as e:  # an integer past Python's digit limit for int(str)
        raise TextError(str(e).split(";")[0]) from None


def yaml_error(e: yaml.YAMLError) -> str:
    """'line L, column C: problem' from a PyYAML error (its own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{_where(mark)}: {problem}" if mark is not None else problem


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
