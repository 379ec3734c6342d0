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

# subcommand -> module in this package; each module has add_parser(subparsers) setting func
SUBCOMMANDS = ("throughput", "project", "pipeline", "decode", "cifar")


def write_json(path: str | None, doc: dict) -> None:
    """Atomically (temp + rename): benchmarks rewrite their file as they go, and may be cut short."""
    if path:
        write_atomic(path, json.dumps(doc, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m training.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"training.bench.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json", None) and (problem := output_problem(args.json, make_parents=False)) is not None:
        print(f"error: --json {args.json}: {problem}", file=sys.stderr)  # before minutes of measuring
        return 2
    return args.func(args)
