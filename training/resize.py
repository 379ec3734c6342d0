"""Pre-resize an ImageNet tree, as imagenet18 did for its small-image phases (DATA-sz/160, -sz/352).

    python -m training.resize DATA OUT --size 160 [--workers N] [--quality 90]
    python -m training.resize DATA DATA-sz/352 --size 352   # the configs' trndir for the 224 px phases

Writes OUT/train/<class>/<file> and OUT/validation/<class>/<file> with the shorter side resized to
``size`` and the aspect ratio kept. Images whose shorter side is already <= size are copied byte for
byte: upscaling on disk would only add JPEG artefacts and bytes, since the loaders resize anyway.
Re-encoded files keep their name and format (JPEG at --quality).

OUT/.resize.json records the size and quality; a later run into OUT with others is refused (exit 2),
since its finished files would be skipped and stay at the first size.

Resumable: a finished output file is skipped, and every file is written to a hidden ``.name.part``
beside it and renamed into place, so a killed run leaves no half file under a real name (the
loaders ignore hidden files, and the next run overwrites the .part). Unreadable inputs, and images to
resize in a format Pillow cannot write (XPM), are named on one line each and skipped. A missing DATA,
or one with neither train/ nor validation/, exits 2.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from multiprocessing import Pool

from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import files  # noqa: E402
from training.cli import ArgParser, int_range, positive_int  # noqa: E402

SPLITS = ("train", "validation")
MARKER = ".resize.json"  # hidden: the loaders skip it
_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def plan(data: str, out: str) -> list[tuple[str, str]]:
    """(source, destination) for every non-hidden file of each split's class folders."""
    jobs = []
    for split in SPLITS:
        src_root = os.path.join(data, split)
        if not os.path.isdir(src_root):
            continue
        for dirpath, filenames in files.walk(src_root):
            rel = os.path.relpath(dirpath, data)
            jobs += [(os.path.join(dirpath, f), os.path.join(out, rel, f)) for f in filenames]
    return jobs


def resize_one(job: tuple[str, str], size: int, quality: int) -> str:
    """'done' | 'skipped' (already there) | an error line."""
    src, dst = job
    if os.path.exists(dst):
        return "skipped"
    part = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.part")
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with Image.open(src) as im:
            w, h = im.size
            fmt = "JPEG" if im.format == "MPO" else im.format  # MPO: PIL's name for camera JPEGs
            if min(w, h) <= size:
                shutil.copyfile(src, part)
            elif fmt not in Image.SAVE:  # read-only in Pillow (XPM, ...), and files keep their format
                return f"resize: skipping {src}: Pillow cannot write {fmt} files"
            else:
                scale = size / min(w, h)
                new = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
                im.draft("RGB", new)  # JPEG DCT scaling: decode at 1/2..1/8 when still >= the target
                img = im.convert("RGB") if fmt == "JPEG" and im.mode not in ("RGB", "L") else im
                img = img.resize(new, Image.LANCZOS)
                params = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
                img.save(part, format=fmt, **params)
        os.replace(part, dst)
    except _ERRORS as e:
        try:
            os.unlink(part)
        except OSError:
            pass
        return f"resize: skipping {src}: {type(e).__name__}: {e}"
    return "done"


def _run(args: tuple[tuple[str, str], int, int]) -> str:
    return resize_one(*args)


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m training.resize", description=__doc__.split("\n")[0])
    p.add_argument("data", help="ImageNet dir holding train/ and validation/")
    p.add_argument("out", help="output dir (created)")
    p.add_argument("--size", type=positive_int, default=160, help="shorter side in px (default 160)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--quality", type=int_range(1, 100), default=90, help="JPEG quality, 1..100 (default 90)")
    a = p.parse_args(argv)
    if not os.path.isdir(a.data):
        print(f"resize: data dir not found: {a.data}", file=sys.stderr)
        return 2
    if not any(os.path.isdir(os.path.join(a.data, s)) for s in SPLITS):
        print(f"resize: {a.data} holds neither train/ nor validation/", file=sys.stderr)
        return 2
    data_real, out_real = os.path.realpath(a.data), os.path.realpath(a.out)
    if os.path.commonpath([data_real, out_real]) == data_real:
        # OUT = DATA: every file "already done" and nothing resized; OUT inside DATA: a new class
        # folder in its train/ (the labels shift) and the copies read again as input
        print(f"resize: output dir {a.out} is data dir {a.data} or inside it; give an output dir outside it",
              file=sys.stderr)
        return 2
    try:  # before OUT is made: a tree that cannot be planned leaves nothing behind
        jobs = [(j, a.size, a.quality) for j in plan(a.data, a.out)]
    except (OSError, ValueError) as e:
        print(f"resize: {e}", file=sys.stderr)
        return 2
    settings = {"size": a.size, "quality": a.quality}
    marker = os.path.join(a.out, MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            made = json.load(f)
    except (OSError, ValueError, RecursionError):  # unreadable or corrupt (nested past the parser's depth)
        made = None  # a new OUT (or one from before the marker: its files are taken as they are)
    if isinstance(made, dict) and made != settings:
        print(f"resize: {a.out} holds images made with --size {made.get('size')} --quality {made.get('quality')} "
              f"({marker}); give another output dir, or remove it", file=sys.stderr)
        return 2
    try:
        os.makedirs(a.out, exist_ok=True)
        tmp = marker + ".part"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(settings, f)
        os.replace(tmp, marker)
    except OSError as e:
        print(f"resize: cannot create the output dir {a.out}: {e.strerror}", file=sys.stderr)
        return 2
    counts = {"done": 0, "skipped": 0, "failed": 0}
    with Pool(max(1, a.workers)) as pool:
        for r in pool.imap_unordered(_run, jobs, chunksize=16):
            if r in counts:
                counts[r] += 1
            else:
                counts["failed"] += 1
                print(r, file=sys.stderr)
    print(f"resize: {counts['done']} written, {counts['skipped']} already done, "
          f"{counts['failed']} unreadable -> {a.out} (shorter side {a.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
