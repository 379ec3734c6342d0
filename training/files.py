"""Files: walking an image tree (each folder's non-hidden files, sorted, and its subfolders depth
first), and replacing a small file whole.

Torch-free, so ``training.resize`` (and its pool workers) start without importing torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never a part: a temp file beside it, then a
    rename. For files rewritten as a job goes (results after each run, a trimmed log), which a reader
    or a job cut off midway must find whole."""
    tmp = Path(f"{os.fspath(path)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def walk(top: str, seen: dict[tuple[int, int], str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """(folder, its non-hidden file names, sorted) for ``top`` and every folder under it, depth first
    with siblings sorted (ImageFolder's order is this sorted by folder path), symlinks followed. A
    folder reached twice raises ValueError naming both paths: a link back into the tree (which
    os.walk would follow ~40 levels deep, listing every file as often), or two links to one folder
    (two class folders sharing their images; ``seen``, shared by the walks of one split's class
    folders, finds those across walks)."""
    seen = {} if seen is None else seen
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (key := (st.st_dev, st.st_ino)) in seen:
            first = seen[key]
            what = "symlink loop" if dirpath.startswith(os.path.join(first, "")) else "one folder linked twice"
            raise ValueError(f"{what}: {dirpath} is the folder {first} again (each folder is read once)")
        seen[key] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, sorted(f for f in filenames if not f.startswith("."))
