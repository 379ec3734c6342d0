"""Projected wall time of a phase schedule from measured per-size training throughput.

Pure Python (no torch import), so a user sees "64 GPUs of this kind: ~X min" before renting them.
For each epoch e of the schedule on G GPUs at scaling efficiency E (0 < E <= 1):

  train_s(e) = images_per_epoch(e) / (img_s(size(e)) * G * E),  images_per_epoch = iters(e) * bs(e) * G
  eval_s(e)  = busiest_rank_val_images / eval_img_s(size(e)),     on the epochs the loop evaluates

(the busiest rank: ranks get whole validation batches, so it may hold more than val_images / G), plus
the measured warm-up overhead at its size (compile, cuDNN autotuning) once per (batch, size) shape first
trained in a phase (static compiled graphs; an epoch's partial last batch is a shape too),
plus, with ``--checkpoint-s S``, S seconds per epoch: the step's measured wait on checkpointing (the
``checkpoint wait`` row of ``train.py --profile``; the write itself runs in the background).
img_s is one GPU's training img/s from ``bench throughput --json`` (its ``ours`` path unless told
otherwise); a size between two measured sizes is interpolated linearly in seconds per image against
pixels (size^2); a size outside the measured range is an error. E applies to training steps only
(gradient all-reduce); evaluation adds one all-reduce per epoch. Not included: process start-up,
data loading that cannot keep up, checkpoints unless --checkpoint-s is given (the table says which).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

from training.cli import nonnegative_int, positive_int
from training.phases import Schedule

IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k train
IMAGENET_VAL = 50_000  # images in ImageNet-1k validation
EVAL_SPEEDUP = 3.0  # eval img/s / train img/s when not measured: a forward is ~1/3 of a training step
DEFAULT_EFFICIENCY = 0.9  # assumed multi-GPU scaling efficiency when none is given


class ProjectionError(ValueError):
    """Unusable input (a size that cannot be had, a malformed throughput file); one line."""


@dataclass(frozen=True)
class Rate:
    train_img_s: float  # one GPU, images per second
    eval_img_s: float  # one GPU, forward-only images per second
    warmup_s: float  # one-off warm-up overhead at this size, seconds
    source: str  # 'measured' or 'interp 128-224'
    eval_measured: bool


@dataclass(frozen=True)
class Throughput:
    rates: dict[int, Rate]  # measured sizes (px) only
    path: str  # which path of the file: ours | reference
    file: str
    device: str
    arch: str
    batch_size: int | None = None  # per GPU, as measured (meta.batch_size); None when not recorded


@dataclass(frozen=True)
class PhaseRow:
    phase: int  # index into schedule.data_phases
    first_epoch: int
    last_epoch: int  # inclusive
    size: int
    batch_size: int  # per GPU
    images: int  # training images, all GPUs, all epochs of the phase
    rate: Rate
    train_s: float
    eval_s: float
    evals: int  # evaluations in the phase
    warmup_s: float
    checkpoint_s: float  # the step's wait on checkpointing, all epochs of the phase

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.warmup_s + self.checkpoint_s


@dataclass(frozen=True)
class Projection:
    rows: list[PhaseRow]
    gpus: int
    efficiency: float
    num_train: int
    num_val: int
    eval_every: int
    throughput: Throughput
    checkpoint_s: float  # per epoch, measured; 0: not included

    @property
    def total_s(self) -> float:
        return sum(r.total_s for r in self.rows)


def load_throughput(path: str, which: str = "ours") -> Throughput:
    """Per-size rates from a ``bench throughput --json`` file. Only ``results[].size`` and
    ``results[].<which>.img_s`` are required; eval_img_s and warmup_overhead_s are used when present."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ProjectionError(f"throughput file {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ProjectionError(f"throughput file {path}: not JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ProjectionError(f"throughput file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ProjectionError(f"throughput file {path}: nested too deeply to be a throughput file") from None
    rates: dict[int, Rate] = {}
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or not results:
        raise ProjectionError(f"throughput file {path}: no 'results' list (write one with bench throughput --json)")
    for i, row in enumerate(results):
        entry = row.get(which) if isinstance(row, dict) else None
        size = row.get("size") if isinstance(row, dict) else None
        img_s = entry.get("img_s") if isinstance(entry, dict) else None
        if not _positive(size) or not isinstance(size, int) or not _positive(img_s):
            raise ProjectionError(f"throughput file {path}: results[{i}] needs a positive integer 'size' and "
                                  f"a positive '{which}.img_s'")
        eval_img_s = entry.get("eval_img_s")
        measured = _positive(eval_img_s)
        warmup = entry.get("warmup_overhead_s") or 0.0
        if not (_positive(warmup) or warmup == 0.0):
            raise ProjectionError(f"throughput file {path}: results[{i}].{which}.warmup_overhead_s must be "
                                  f"seconds >= 0, got {warmup!r}")
        rates[size] = Rate(float(img_s), float(eval_img_s) if measured else EVAL_SPEEDUP * img_s,
                           float(warmup), "measured", measured)
    meta = doc.get("meta", {}) if isinstance(doc.get("meta"), dict) else {}
    batch = meta.get("batch_size")
    return Throughput(rates, which, path, str(meta.get("device", "?")), str(meta.get("arch", "?")),
                      batch if isinstance(batch, int) and not isinstance(batch, bool) else None)


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def rate_at(tp: Throughput, size: int) -> Rate:
    """The measured rate, or one interpolated linearly in seconds per image against pixels."""
    if size in tp.rates:
        return tp.rates[size]
    below = [s for s in tp.rates if s < size]
    above = [s for s in tp.rates if s > size]
    if not below or not above:
        have = ", ".join(str(s) for s in sorted(tp.rates))
        raise ProjectionError(
            f"size {size} px is not in {tp.file} (measured: {have} px) and outside that range, so it "
            f"cannot be interpolated; measure it: python -m training.bench throughput --sizes {size} ...")
    lo, hi = tp.rates[max(below)], tp.rates[min(above)]
    f = (size**2 - max(below) ** 2) / (min(above) ** 2 - max(below) ** 2)

    def lerp(a: float, b: float) -> float:
        return a + f * (b - a)
    return Rate(train_img_s=1 / lerp(1 / lo.train_img_s, 1 / hi.train_img_s),
                eval_img_s=1 / lerp(1 / lo.eval_img_s, 1 / hi.eval_img_s),
                warmup_s=lerp(lo.warmup_s, hi.warmup_s), source=f"interp {max(below)}-{min(above)}",
                eval_measured=lo.eval_measured and hi.eval_measured)


def project(schedule: Schedule, tp: Throughput, gpus: int, efficiency: float,
            num_train: int = IMAGENET_TRAIN, num_val: int = IMAGENET_VAL, eval_every: int = 1,
            checkpoint_s: float = 0.0, val_batch: int = 0) -> Projection:
    """One row per data phase. eval_every as the loop's Hooks: 0 evaluates only after the last epoch.
    checkpoint_s: the step's wait on checkpointing per epoch (a host copy every epoch). val_batch: the
    validation batch (data.val_batch_size; 0: imagenet18's rule). An evaluation takes as long as its
    busiest rank: ranks get whole validation batches (rectval.val_batches), so with big batches and
    many GPUs some get more than num_val / gpus images, and others none."""
    if gpus < 1:
        raise ProjectionError(f"--gpus must be at least 1, got {gpus}")
    if not 0 < efficiency <= 1:
        raise ProjectionError(f"--efficiency must be in (0, 1], got {efficiency}")
    if not (math.isfinite(checkpoint_s) and checkpoint_s >= 0):
        raise ProjectionError(f"--checkpoint-s must be >= 0 (seconds per epoch), got {checkpoint_s}")
    plan = schedule.plan(num_train, gpus, val_batch=val_batch)
    rows = []
    compiled: set[tuple[int, int]] = set()  # static graphs: one compile (a warm-up) per new batch shape
    for index, phase in enumerate(schedule.data_phases):
        epochs = [p for p in plan if schedule.data_phase_index(p.epoch) == index]
        if not epochs:
            continue
        new_shapes = {s for p in epochs for s in schedule.epoch_shapes(p, num_train, gpus)} - compiled
        compiled |= new_shapes
        rate = rate_at(tp, phase.size)
        evals = sum(1 for p in epochs if p.epoch + 1 == schedule.num_epochs
                    or (eval_every and (p.epoch + 1) % eval_every == 0))
        per_rank = sum(p.iters * p.batch_size for p in epochs)  # every rank runs the same steps
        # rank 0 holds the first (and a full) block of whole batches (rectval.val_batches): the busiest
        val_batch = epochs[0].val_batch_size
        batches = -(-num_val // val_batch)  # counted, not listed: --num-val-images may be huge
        busiest = min(-(-batches // gpus) * val_batch, num_val)
        rows.append(PhaseRow(
            phase=index, first_epoch=epochs[0].epoch, last_epoch=epochs[-1].epoch, size=phase.size,
            batch_size=phase.batch_size, images=per_rank * gpus, rate=rate,
            train_s=per_rank / (rate.train_img_s * efficiency),
            eval_s=evals * busiest / rate.eval_img_s, evals=evals, warmup_s=len(new_shapes) * rate.warmup_s,
            checkpoint_s=len(epochs) * checkpoint_s))
    out = Projection(rows, gpus, efficiency, num_train, num_val, eval_every, tp, checkpoint_s)
    if not math.isfinite(out.total_s):  # a rate so small (5e-324 img/s) that its time overflows
        raise ProjectionError(f"throughput file {tp.file}: its rates give no finite time (img/s too small)")
    return out


def format_table(p: Projection, config: str, arch: str) -> str:
    tp = p.throughput
    evals = "every epoch" if p.eval_every == 1 else "after the last epoch" if not p.eval_every \
        else f"every {p.eval_every} epochs"
    out = [f"projection: {config} on {p.gpus} GPU(s) like {tp.device}, {tp.path} path of {tp.file}",
           f"scaling efficiency {100 * p.efficiency:.0f}% on training steps; {p.num_train:,} train / "
           f"{p.num_val:,} val images; evaluation {evals}"]
    if arch != tp.arch:
        out.append(f"note: throughput measured for {tp.arch}, the config trains {arch}")
    other = sorted({r.batch_size for r in p.rows} - {tp.batch_size}) if tp.batch_size else []
    if other:  # img/s depends on the batch: a smaller one runs the GPU less full
        out.append(f"note: throughput measured at batch {tp.batch_size} per GPU, the config trains batch "
                   f"{', '.join(map(str, other))} per GPU in some phases")
    if any(not r.rate.eval_measured for r in p.rows):
        out.append(f"note: eval img/s not in the file for some sizes: taken as {EVAL_SPEEDUP:g}x training img/s")
    out.append(f"checkpoints: the step's measured wait, {p.checkpoint_s:g} s per epoch" if p.checkpoint_s else
               "checkpoints: not included (--checkpoint-s: the 'checkpoint wait' row of train.py --profile)")
    out.append(f"{'phase':>5}  {'epochs':<7}{'size':>5}{'bs/GPU':>7}{'img/s/GPU':>11}  {'source':<15}"
               f"{'train min':>10}{'eval min':>9}{'warm-up min':>12}{'ckpt min':>9}{'total min':>10}")
    for r in p.rows:
        out.append(f"{r.phase:>5}  {f'{r.first_epoch}-{r.last_epoch}':<7}{r.size:>5}{r.batch_size:>7}"
                   f"{r.rate.train_img_s:>11,.0f}  {r.rate.source:<15}{r.train_s / 60:>10.2f}{r.eval_s / 60:>9.2f}"
                   f"{r.warmup_s / 60:>12.2f}{r.checkpoint_s / 60:>9.2f}{r.total_s / 60:>10.2f}")
    train, ev, warm, ckpt = (sum(getattr(r, k) for r in p.rows) / 60
                             for k in ("train_s", "eval_s", "warmup_s", "checkpoint_s"))
    epochs = p.rows[-1].last_epoch + 1
    out.append(f"{'total':>5}  {f'0-{epochs - 1}':<7}{'':>5}{'':>7}{'':>11}  {'':<15}{train:>10.2f}{ev:>9.2f}"
               f"{warm:>12.2f}{ckpt:>9.2f}{p.total_s / 60:>10.2f}")
    out.append(f"{p.gpus} GPU(s) of this kind: ~{p.total_s / 60:.1f} min to the end of the schedule ({epochs} epochs)")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from training import config as C
    from training.phases import PhaseError, parse_schedule
    try:
        cfg = C.build([args.config], [])
        if cfg.recipe != "imagenet":  # its data set, evaluation and batches are another model's
            raise C.ConfigError(f"--config {args.config}: the {cfg.recipe} recipe; project projects the imagenet "
                                "recipe's schedules (time cifar runs with bench cifar)")
        schedule = parse_schedule(cfg.phases)
        tp = load_throughput(args.throughput, args.path)
        efficiency = args.efficiency if args.efficiency is not None else \
            1.0 if args.gpus == 1 else DEFAULT_EFFICIENCY
        proj = project(schedule, tp, args.gpus, efficiency, args.num_train_images, args.num_val_images,
                       args.eval_every, args.checkpoint_s, cfg.data.val_batch_size)
    except (C.ConfigError, PhaseError, ProjectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(proj, args.config, cfg.model.arch))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a YAML config with phases")
    p.add_argument("--gpus", type=positive_int, required=True, help="GPUs (processes) in the run")
    p.add_argument("--throughput", required=True, metavar="FILE", help="written by `throughput --json`")
    p.add_argument("--efficiency", type=float, help="multi-GPU scaling efficiency in (0, 1] "
                   "(default 1 on one GPU, 0.9 on more)")
    p.add_argument("--path", choices=("ours", "reference"), default="ours", help="which measured path")
    p.add_argument("--num-train-images", type=positive_int, default=1_281_167, help="images per epoch (ImageNet's)")
    p.add_argument("--num-val-images", type=positive_int, default=50_000, help="images per evaluation (ImageNet's)")
    p.add_argument("--eval-every", type=nonnegative_int, default=1, help="epochs between evaluations; 0: last only")
    p.add_argument("--checkpoint-s", type=float, default=0.0, metavar="S", help="the step's measured wait on "
                   "checkpointing per epoch, seconds ('checkpoint wait' of train.py --profile); default: left out")
    p.set_defaults(func=run)
