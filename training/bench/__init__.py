"""The tools that measure the trainer, one module per subcommand of ``python -m training.bench``.

    python -m training.bench throughput --arch resnet50 --sizes 128 224 288 --batch-size 256 --json tp.json
    python -m training.bench project --config configs/imagenet18/8x8.yaml --gpus 64 --throughput tp.json
    python -m training.bench pipeline DATA --sizes 128 224 --loader torchvision dali --json pipe.json
    python -m training.bench decode [--images 512] [--batch-size 128]
    python -m training.bench cifar --data DIR [--variants NAME=OVERRIDES ...] [--runs N] [--airbench] --json c.json

Figures go to docs/BENCHMARKS.md with their command, machine, versions, date and N.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from training.cli import ArgParser, output_problem
from training.files import write_atomic

# subcommand -> its help; each is a module of this package, with add_arguments(parser) setting func.
# Only the module of the subcommand given is imported: some import torch and torchvision (seconds).
SUBCOMMANDS = {
    "throughput": "training img/s: torchvision's reference loop vs ours, synthetic data",
    "project": "projected wall time of a schedule from `throughput --json` figures",
    "pipeline": "img/s of what the training loop receives, per loader and size",
    "decode": "torchvision.io.decode_jpeg img/s, CUDA (nvJPEG) vs one CPU core",
    "cifar": "CIFAR-10: airbench94 vs variants of our recipe, interleaved N runs each",
}


def write_json(path: str | None, doc: dict) -> None:
    """Atomically (temp + rename): benchmarks rewrite their file as they go, and may be cut short."""
    if path:
        write_atomic(path, json.dumps(doc, indent=1) + "\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand with its help; the arguments of ``command`` only (of all when None)."""
    p = ArgParser(prog="python -m training.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, about in SUBCOMMANDS.items():
        parser = sub.add_parser(name, help=about)
        if command in (None, name):
            importlib.import_module(f"training.bench.{name}").add_arguments(parser)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else "").parse_args(argv)
    if getattr(args, "json", None) is not None and (problem := output_problem(args.json, make_parents=False)):
        shown = args.json or "''"
        print(f"error: --json {shown}: {problem}", file=sys.stderr)  # before minutes of measuring
        return 2
    return args.func(args)
