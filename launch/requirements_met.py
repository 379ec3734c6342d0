"""Exit 0 when every requirement in the given files is installed at a version it allows, else 1.

    python3 launch/requirements_met.py requirements.txt [more.txt ...] || python3 -m pip install -r ...
    python3 launch/requirements_met.py --without NAME requirements.txt   # all but the distribution NAME

The main job's launcher asks this first: a no-op `pip install -r` resolves every line against the
index metadata it has and takes seconds; reading the installed versions takes a tenth of one. Any
doubt (an unparsable line, an option such as `-e` or `--index-url`, `packaging` itself missing) answers
1, so pip decides. Only the named distributions are checked, not their own dependencies: pip
installed those with them.
"""
from __future__ import annotations

import sys
from importlib import metadata


def requirements_met(lines: list[str], without: frozenset[str] = frozenset()) -> bool:
    """``without``: distribution names (any spelling pip accepts) not asked for."""
    try:  # matplotlib depends on it, so it is there whenever the requirements are
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name
    except ImportError:
        return False
    skip = {canonicalize_name(name) for name in without}
    for raw in lines:
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return False  # an option line (-r, -e, --index-url) or a URL: pip's to read
        if req.url or req.extras:
            return False  # a direct reference or extras' dependencies: pip's to check
        if (req.marker is not None and not req.marker.evaluate()) or canonicalize_name(req.name) in skip:
            continue  # not for this platform, or not asked for
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(installed, prereleases=True):
            return False
    return True


def main(args: list[str]) -> int:
    without, paths = set(), []
    while args:
        if args[0] == "--without" and len(args) > 1:
            without.add(args[1])
            args = args[2:]
        else:
            paths.append(args.pop(0))
    try:
        lines = [line for p in paths for line in open(p, encoding="utf-8").read().splitlines()]
    except OSError:
        return 1
    return 0 if paths and requirements_met(lines, frozenset(without)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
