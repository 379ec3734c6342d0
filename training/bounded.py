"""Text from a command line or a file, parsed with bounds: its length and nesting are checked
before any recursive parser (``ast``, PyYAML's composer) sees it, so a generated or hostile string
is a one-line error, not a RecursionError traceback or a parser busy for minutes.

A phase schedule nests 3 deep (a list of dicts of ``[start, end]`` pairs) and a config 4 (a
section holding ``phases``); MAX_DEPTH leaves room for both, and for nothing a run can mean.
YAML aliases (``*name``) are refused: no config needs them, and they can make a small text expand
into an exponentially large one. Pure Python (no torch): phases.py and config.py use it.

Numbers are read as YAML 1.2 and Python read them, not as PyYAML's YAML 1.1: ``5e-5`` is a float
(1.1: the string '5e-5', so ``weight_decay: 5e-5`` was refused as "expected float"), and ``010``
and ``1:30`` are not numbers (1.1: octal 8 and base-60 90, so ``--seed 010`` trained seed 8); they
stay text, which a numeric setting then refuses by name.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 16  # nested lists / dicts / tuples

_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_EXPONENT = r"[eE][-+]?[0-9]+"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's int and float forms (decimal without a leading 0, 0x and 0o; a
    float has a point or an exponent, or is .inf / .nan); booleans and the rest as SafeLoader."""

    def construct_mapping(self, node, deep=False):
        """A key given twice in one mapping is an error (PyYAML keeps the last one silently: a
        section repeated in a config file dropped every key of the first)."""
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes a string _Loader reads as a number ('1e3', '0o17', '1.5e5': plain
    strings to YAML 1.1), so what ``dump_yaml`` writes loads back as the same value."""


# digits after the first: an underscore only between two digits, as Python's 1_000; YAML 1.1 took
# any (1__0 was 10, 1_ was 1), so a doubled or stray one typed by mistake stays text and is refused
_MORE = r"(?:_?[0-9])*"
_INT_RX = re.compile(rf"^(?:[-+]?(?:0|[1-9]{_MORE})|0x(?:_?[0-9a-fA-F])+|0o(?:_?[0-7])+)$")
_FLOAT_RX = re.compile(rf"^(?:[-+]?(?:[0-9]{_MORE}\.(?:[0-9]{_MORE})?(?:{_EXPONENT})?|\.[0-9]{_MORE}(?:{_EXPONENT})?"
                       rf"|[0-9]{_MORE}{_EXPONENT})|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _cls in (_Loader, _Dumper):  # the Dumper keeps YAML 1.1's too: its output reads the same to 1.1 readers
    _cls.add_implicit_resolver(_INT, _INT_RX, list("-+0123456789"))  # before the float's: "5" is an int
    _cls.add_implicit_resolver(_FLOAT, _FLOAT_RX, list("-+0123456789."))


def dump_yaml(data: Any, **options: Any) -> str:
    """``yaml.safe_dump`` whose strings load back as strings with ``load_yaml``."""
    return yaml.dump(data, Dumper=_Dumper, **options)


class TextError(ValueError):
    """Text that cannot be parsed; the message is one line and says where."""


class LimitError(TextError):
    """Text longer or deeper than the bounds allow (refused before it is parsed)."""


class DuplicateKeyError(TextError):
    """Valid YAML whose mapping gives a key twice (PyYAML would keep the last silently)."""


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
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader: plain data only)
    except TextError:  # our own limits (a ValueError too)
        raise
    except _DuplicateKey as e:
        raise DuplicateKeyError(yaml_error(e)) from None
    except yaml.YAMLError as e:
        raise TextError(yaml_error(e)) from None
    except ValueError as e:  # an integer past Python's digit limit for int(str)
        raise TextError(str(e).split(";")[0]) from None


def comment_at(text: str) -> int | None:
    """Where in YAML ``text`` a comment starts (a '#' at the start or after a blank, outside any
    scalar: ``5 #3`` is 5), or None. For text that ``load_yaml`` has read."""
    hashes = iter(i for i, ch in enumerate(text) if ch == "#")
    at = next(hashes, None)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):  # in order; a scalar's token holds its '#'s
        if at is not None and at < token.start_mark.index:
            return at
        while at is not None and at < token.end_mark.index:
            at = next(hashes, None)
    return at


def yaml_error(e: yaml.YAMLError) -> str:
    """'line L, column C: problem' from a PyYAML error (its own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{_where(mark)}: {problem}" if mark is not None else problem


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
