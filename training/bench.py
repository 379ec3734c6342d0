"""Benchmarks, one subcommand each; figures go to docs/BENCHMARKS.md with their command.

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


def loader(args: argparse.Namespace) -> int:
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


def _add_loader(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loader", help="DALI vs torchvision train-loader img/s")
    p.add_argument("data", nargs="?", default=DEFAULT_TREE,
                   help=f"ImageNet-style tree (default {DEFAULT_TREE}; generated when it has no train/)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    p.add_argument("--batches", type=int, default=20, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per loader and size; the median is reported")
    p.add_argument("--generate", type=int, default=500, help="train images to generate when DATA is empty")
    p.set_defaults(func=loader)


# ------------------------------------------------------------------- throughput, project, decode
# The measuring lives in training/perf.py, training/projection.py and training/decode_perf.py.

def _write_json(path: str | None, doc: dict) -> None:
    if path:
        import json
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def throughput(args: argparse.Namespace) -> int:
    import torch

    from training import perf
    from training.config import ConfigError
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ours = perf.ours_config(device, args.precision, args.channels_last, args.compile or "", args.cudnn_benchmark)
    try:
        doc = perf.run_throughput(args.arch, args.sizes, args.batch_size, args.steps, args.warmup,
                                  args.repeats, device, ours)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(perf.format_table(doc))
    _write_json(args.json, doc)
    return 0


def _add_throughput(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("throughput", help="training img/s: torchvision's reference loop vs ours, synthetic data")
    p.add_argument("--arch", default="resnet50", help="torchvision model name")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 288], help="image sides, px")
    p.add_argument("--batch-size", type=int, default=256, help="images per step")
    p.add_argument("--steps", type=int, default=50, help="timed steps per window")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (reported as warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="ours (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="ours (default: on CUDA only, as the trainer)")
    p.add_argument("--compile", metavar="MODE", help="ours: torch.compile mode (default, reduce-overhead, "
                   "max-autotune, max-autotune-no-cudagraphs); default eager")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True, help="ours")
    p.add_argument("--json", metavar="FILE", help="write the results (input of `project`)")
    p.set_defaults(func=throughput)


def project(args: argparse.Namespace) -> int:
    from training import config as C
    from training import projection as P
    from training.phases import PhaseError, parse_schedule
    try:
        cfg = C.build([args.config], [])
        schedule = parse_schedule(cfg.phases)
        tp = P.load_throughput(args.throughput, args.path)
        efficiency = args.efficiency if args.efficiency is not None else \
            1.0 if args.gpus == 1 else P.DEFAULT_EFFICIENCY
        proj = P.project(schedule, tp, args.gpus, efficiency, args.num_train_images, args.num_val_images,
                         args.eval_every)
    except (C.ConfigError, PhaseError, P.ProjectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(P.format_table(proj, args.config, cfg.model.arch))
    return 0


def _add_project(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("project", help="projected wall time of a schedule from `throughput --json` figures")
    p.add_argument("--config", required=True, help="a YAML config with phases")
    p.add_argument("--gpus", type=int, required=True, help="GPUs (processes) in the run")
    p.add_argument("--throughput", required=True, metavar="FILE", help="written by `throughput --json`")
    p.add_argument("--efficiency", type=float, help="multi-GPU scaling efficiency in (0, 1] "
                   "(default 1 on one GPU, 0.9 on more)")
    p.add_argument("--path", choices=("ours", "reference"), default="ours", help="which measured path")
    p.add_argument("--num-train-images", type=int, default=1_281_167, help="images per epoch (ImageNet's)")
    p.add_argument("--num-val-images", type=int, default=50_000, help="images per evaluation (ImageNet's)")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations; 0: last only")
    p.set_defaults(func=project)


def decode(args: argparse.Namespace) -> int:
    import torch

    from training import decode_perf
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    else:
        print("decode: no CUDA device, CPU only", file=sys.stderr)
    doc = decode_perf.run_decode(args.images, args.width, args.height, args.quality, args.batch_size,
                                 args.repeats, devices)
    print(decode_perf.format_table(doc))
    _write_json(args.json, doc)
    return 0


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="torchvision.io.decode_jpeg img/s, CUDA (nvJPEG) vs one CPU core")
    p.add_argument("--images", type=int, default=512, help="generated JPEGs")
    p.add_argument("--width", type=int, default=500, help="px (ImageNet's typical 500x375)")
    p.add_argument("--height", type=int, default=375, help="px")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-100")
    p.add_argument("--batch-size", type=int, default=128, help="images per decode_jpeg call")
    p.add_argument("--repeats", type=int, default=5, help="passes; the median is reported")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=decode)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_loader(sub)
    _add_throughput(sub)
    _add_project(sub)
    _add_decode(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
