"""JPEG decode throughput of torchvision.io.decode_jpeg: the CPU (libjpeg-turbo, one core, as one
loader worker decodes) against CUDA (nvJPEG, a batch per call), on generated photo-like JPEGs.

The images are jpegtree's: octaves of smooth colour noise plus grain, so they compress about as
ImageNet photos do (solid colours would decode unrealistically fast). Warm-up calls (nvJPEG handle creation, CUDA
context) are timed and reported separately; img/s is the median of ``repeats`` passes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torchvision
from torchvision.io import decode_jpeg

from training.bench import write_json
from training.bench.jpegtree import jpeg_bytes, textured
from training.cli import int_range, positive_int

JPEG_MAX_SIDE = 65_535  # a JPEG header holds each side in 16 bits


def generate_jpegs(count: int, width: int, height: int, quality: int = 90, seed: int = 0) -> list[torch.Tensor]:
    """``count`` encoded JPEGs (1-D uint8 tensors) of width x height px, ImageNet-like (jpegtree)."""
    rng = np.random.default_rng(seed)
    return [torch.frombuffer(bytearray(jpeg_bytes(textured(rng, width, height), quality)), dtype=torch.uint8)
            for _ in range(count)]


def measure(jpegs: list[torch.Tensor], device: torch.device, batch_size: int, repeats: int) -> dict:
    """Decode every image ``repeats`` times after one warm-up pass over the first batch."""
    def one_pass(items: list[torch.Tensor]) -> None:
        if device.type == "cuda":
            for i in range(0, len(items), batch_size):
                decode_jpeg(items[i:i + batch_size], device=device)  # nvJPEG's batched decode
            torch.cuda.synchronize(device)
        else:
            for item in items:  # one at a time, as a loader worker does (torchvision < 0.20 takes no list here)
                decode_jpeg(item)

    t0 = time.perf_counter()
    one_pass(jpegs[:batch_size])
    warmup_s = time.perf_counter() - t0
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_pass(jpegs)
        passes.append(time.perf_counter() - t0)
    return {"img_s": len(jpegs) / statistics.median(passes), "img_s_passes": [len(jpegs) / s for s in passes],
            "warmup_s": warmup_s}


def run_decode(count: int, width: int, height: int, quality: int, batch_size: int, repeats: int,
               devices: list[torch.device]) -> dict:
    """The JSON document: generated-image facts, then one entry per device."""
    jpegs = generate_jpegs(count, width, height, quality)
    torch.set_num_threads(1)  # the CPU figure is one core's (one loader worker), whatever the machine has
    results = {}
    for device in devices:
        r = measure(jpegs, device, batch_size, repeats)
        results[str(device)] = r | {"mpix_s": r["img_s"] * width * height / 1e6}
    return {"kind": "decode", "meta": {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "images": count,
        "width": width, "height": height, "quality": quality,
        "mean_kib": sum(j.numel() for j in jpegs) / count / 1024, "batch_size": batch_size, "repeats": repeats,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu only",
        "date": time.strftime("%Y-%m-%d")}, "results": results}


def format_table(doc: dict) -> str:
    m = doc["meta"]
    rows = [f"decode_jpeg: {m['images']} generated JPEGs {m['width']}x{m['height']} q{m['quality']} "
            f"(mean {m['mean_kib']:.0f} KiB), batch {m['batch_size']}, median of {m['repeats']}, "
            f"torchvision {m['torchvision']}, {m['device']}",
            f"{'device':<8}{'img/s':>10}{'Mpix/s':>10}{'warm-up s':>11}"]
    for name, r in doc["results"].items():
        rows.append(f"{name:<8}{r['img_s']:>10,.0f}{r['mpix_s']:>10,.0f}{r['warmup_s']:>11.2f}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    else:
        print("decode: no CUDA device, CPU only", file=sys.stderr)
    doc = run_decode(args.images, args.width, args.height, args.quality, args.batch_size,
                                 args.repeats, devices)
    print(format_table(doc))
    write_json(args.json, doc)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=positive_int, default=512, help="generated JPEGs")
    p.add_argument("--width", type=int_range(1, JPEG_MAX_SIDE), default=500, help="px (ImageNet's typical 500x375)")
    p.add_argument("--height", type=int_range(1, JPEG_MAX_SIDE), default=375, help="px")
    p.add_argument("--quality", type=int_range(1, 100), default=90, help="JPEG quality, 1-100")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per decode_jpeg call")
    p.add_argument("--repeats", type=positive_int, default=5, help="passes; the median is reported")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=run)
