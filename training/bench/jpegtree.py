"""ImageNet-like JPEG trees for the loader benchmarks, generated on every core.

Solid colours decode unrealistically fast, so images are octaves of smooth colour noise plus grain:
q90, sides 300-500 px, ~100 KB, about ImageNet's JPEG entropy. ``make_tree`` also writes imagenet18's
pre-resized copies (``DATA-sz/160`` ...) through ``training.resize``, as a user would.
"""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

OCTAVES = ((4, 60), (16, 40), (64, 25), (256, 30))  # (noise cells per 512 px, amplitude, grey levels)
GRAIN = 8.0  # per-pixel noise, std in grey levels


def textured(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A w x h RGB image of fractal colour noise with grain and a random mean colour."""
    acc = np.zeros((h, w, 3), np.float32)
    for cells, amp in OCTAVES:
        small = rng.normal(0, 40, (max(2, h * cells // 512), max(2, w * cells // 512), 3)) + 128
        up = Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        acc += (np.asarray(up, np.float32) - 128) * (amp / 40)
    acc += rng.normal(0, GRAIN, acc.shape) + rng.uniform(60, 190, 3)
    return Image.fromarray(acc.clip(0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write(job: tuple[str, int, int, int, int]) -> int:
    path, seed, w, h, quality = job
    data = jpeg_bytes(textured(np.random.default_rng(seed), w, h), quality)
    Path(path).write_bytes(data)
    return len(data)


MARKER = ".jpegtree.json"  # what make_tree made: its settings, whether it finished, the copies made since


def generated(root: Path) -> dict | None:
    """The marker of a tree make_tree generated at ``root``; None for any other tree."""
    try:
        made = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return made if isinstance(made, dict) else None


def mark(root: Path, made: dict) -> None:
    tmp = root / (MARKER + ".part")
    tmp.write_text(json.dumps(made))
    os.replace(tmp, root / MARKER)


def make_tree(root: Path, images: int, classes: int = 100, val_fraction: float = 0.1, quality: int = 90,
              seed: int = 0, side: tuple[int, int] = (300, 500), workers: int | None = None) -> dict:
    """root/{train,validation}/<class>/*.JPEG of sides in ``side`` px; returns counts and mean size.
    The marker (``generated``) says "complete" only once the last image is written, so an
    interrupted generation is not taken for a tree."""
    if not 1 <= classes <= images:
        raise ValueError(f"{classes} classes for {images} images: every class folder needs an image")
    root.mkdir(parents=True, exist_ok=True)
    made = {"images": images, "classes": classes, "seed": seed, "quality": quality, "side": list(side),
            "complete": False, "copies": []}
    mark(root, made)
    rng = np.random.default_rng(seed)
    jobs = []
    for split, n in (("train", images), ("validation", max(classes, int(images * val_fraction)))):
        for c in range(classes):
            (root / split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = (int(v) for v in rng.integers(side[0], side[1] + 1, size=2))
            jobs.append((str(root / split / f"n{i % classes:08d}" / f"{split}_{i:07d}.JPEG"),
                         seed * 10_000_019 + len(jobs), w, h, quality))
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        sizes = list(pool.map(_write, jobs, chunksize=32))
    mark(root, made | {"complete": True})
    return {"train": images, "validation": len(jobs) - images, "mean_kib": sum(sizes) / len(sizes) / 1024}


def resized_copy(root: Path, suffix: str, size: int, workers: int | None = None) -> None:
    """imagenet18's pre-resized copy DATA<suffix> (e.g. DATA-sz/160), shorter side ``size`` px."""
    from training import resize
    argv = [str(root), f"{root}{suffix}", "--size", str(size)]
    if workers:
        argv += ["--workers", str(workers)]
    if resize.main(argv) != 0:
        raise RuntimeError(f"resize {root} -> {root}{suffix} failed")
