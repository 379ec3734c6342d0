"""bench loader: train-loader img/s of DALI against torchvision on a generated tree.

    python -m training.bench loader [DATA] [--sizes 128 224] [--batch-size 64] [--workers 2] [--batches N]
    python -m training.bench throughput --arch resnet50 --sizes 128 224 288 --batch-size 256 --json tp.json
    python -m training.bench project --config configs/imagenet18/8x8.yaml --gpus 64 --throughput tp.json
    python -m training.bench decode [--images 512] [--batch-size 128]

loader: train-loader img/s of DALI (CPU decode when there is no GPU) against the torchvision
DataLoader, on the same tree, the same cores and the same worker count, at each size. When DATA
holds no train/ split, a tree of ImageNet-like JPEGs (textured, 300-500 px, ~90 KB) is generated
there first; solid colours would decode unrealistically fast.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from training.cli import nonnegative_int, positive_int

DEFAULT_TREE = ".cache/bench-imagenet"


# --------------------------------------------------------------------------------------- loader

def _textured(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Fractal colour noise: octaves of upsampled noise plus grain, about ImageNet's JPEG entropy."""
    acc = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 60), (16, 40), (64, 25), (256, 30)):
        small = rng.normal(0, 40, (max(2, h * cells // 512), max(2, w * cells // 512), 3)) + 128
        up = Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        acc += (np.asarray(up, np.float32) - 128) * (amp / 40)
    acc += rng.normal(0, 8, acc.shape) + rng.uniform(60, 190, 3)
    return Image.fromarray(acc.clip(0, 255).astype(np.uint8))


def make_bench_tree(root: Path, images: int = 500, classes: int = 10, seed: int = 0) -> None:
    """root/{train,validation}/<class>/*.JPEG: ``images`` train images, a fifth as many to validate."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", images), ("validation", max(classes, images // 5))):
        for i in range(n):
            d = root / split / f"n{i % classes:08d}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in rng.integers(300, 501, size=2))
            _textured(rng, w, h).save(d / f"{split}_{i:06d}.JPEG", quality=90)


def measure_loader(backend: str, data: str, size: int, batch_size: int, workers: int, batches: int,
                   warmup: int = 2) -> float:
    """img/s of ``batches`` train batches after ``warmup`` ones, crossing epochs as training does."""
    import torch

    from training.data import LoaderSpec, get_backend
    from training.phases import DataPhase

    torch.set_num_threads(1)  # normalisation in the main process; the workers get the other cores
    phase = DataPhase(start=0, size=size, batch_size=batch_size, train_dir="", val_dir="",
                      min_scale=0.35, rect_val=False, keep_dl=False)
    spec = LoaderSpec(root=data, phase=phase, rank=0, world_size=1, device=torch.device("cpu"),
                      workers=workers, seed=0)
    loader = get_backend(backend).train(spec)
    step, epoch, start, counted = 0, 0, 0.0, 0
    try:
        while True:
            loader.set_epoch(epoch)
            for x, _ in loader:
                step += 1
                if step == warmup:
                    start = time.perf_counter()
                elif step > warmup:
                    counted += x.shape[0]
                if step == warmup + batches:
                    return counted / (time.perf_counter() - start)
            epoch += 1
    finally:
        loader.close()


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not (data / "train").is_dir():
        print(f"bench: generating {args.generate} textured JPEGs under {data}", file=sys.stderr)
        make_bench_tree(data, args.generate)
    backends = ["torchvision", "dali"]
    results: dict[tuple[str, int], list[float]] = {}
    # A fresh process per measurement: no fork after DALI's threads exist, no warm state shared.
    ctx = mp.get_context("spawn")
    for size in args.sizes:
        for rep in range(args.repeats):
            for backend in backends if rep % 2 == 0 else backends[::-1]:  # alternate against drift
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # not daemonic: may fork workers
                    ips = pool.submit(measure_loader, backend, str(data), size, args.batch_size,
                                      args.workers, args.batches).result()
                results.setdefault((backend, size), []).append(ips)
                print(f"  {backend:11s} {size:4d}px  run {rep + 1}: {ips:7.1f} img/s", file=sys.stderr)
    print(f"loader benchmark: {data} ({sum(1 for _ in (data / 'train').rglob('*.JPEG'))} train images), "
          f"batch {args.batch_size}, {args.workers} workers/threads, {args.batches} timed batches, "
          f"median of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'size':>5} {'torchvision img/s (range)':>26} {'dali img/s (range)':>26} {'dali/torchvision':>17}")
    for size in args.sizes:
        tv, dl = results[("torchvision", size)], results[("dali", size)]
        print(f"{size:>5} {_cell(tv):>26} {_cell(dl):>26} "
              f"{statistics.median(dl) / statistics.median(tv):>16.2f}x")
    return 0


def _cell(runs: list[float]) -> str:
    """median (min-max): the range shows how much the shared cores disturbed the runs."""
    return f"{statistics.median(runs):.0f} ({min(runs):.0f}-{max(runs):.0f})"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loader", help="DALI vs torchvision train-loader img/s")
    p.add_argument("data", nargs="?", default=DEFAULT_TREE,
                   help=f"ImageNet-style tree (default {DEFAULT_TREE}; generated when it has no train/)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[128, 224])
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=nonnegative_int, default=2, help="DataLoader workers = DALI threads")
    p.add_argument("--batches", type=positive_int, default=20, help="timed batches per run")
    p.add_argument("--repeats", type=positive_int, default=3, help="runs per loader and size; the median is reported")
    p.add_argument("--generate", type=positive_int, default=500, help="train images to generate when DATA is empty")
    p.set_defaults(func=run)
