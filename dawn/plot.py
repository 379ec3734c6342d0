#!/usr/bin/env python
"""Plots: accuracy-vs-time curves of runs (from their TensorBoard events), and a phase schedule.

    python dawn/plot.py RUN [RUN ...] --out curves.png [--target-top5 93] [--ignore-eval]

RUN is an event file or a run directory, read as ``dawn/prepare_dawn_tsv.py`` reads it. The format is
the one --out's suffix names (png, pdf, svg, ... : any that matplotlib writes), checked before any
work, and the figure is written atomically. matplotlib is imported inside the functions (Figure +
Agg, never pyplot), so importing this module costs nothing and no display or global backend is
involved.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if __package__ in (None, ""):  # run as `python dawn/plot.py`: sys.path[0] is dawn/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dawn.events import EventsError, load_run  # noqa: E402
from dawn.prepare_dawn_tsv import (OneLineParser, eval_rows, first_reaching, path_arg,  # noqa: E402
                                   percent_arg, write_atomic)
from training.cli import output_problem  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from training.phases import Schedule

IMAGENET_TRAIN_IMAGES = 1_281_167
LR_POINTS_PER_EPOCH = 200  # enough to draw warm-up ramps smoothly without one point per step


def plot_runs(runs: Sequence[str | Path], out: str | Path, target_top5: float = 93.0,
              start_tag: str = "first", ignore_eval: bool = False) -> Path:
    """Top-1 (dashed) and top-5 (solid) accuracy against hours for each run, with the target line
    and a marker where each run first reaches it. Raises EventsError for an unusable run."""
    from matplotlib.figure import Figure

    curves = []
    for run in runs:
        loaded = load_run(run)
        rows = eval_rows(loaded, start_tag, ignore_eval)
        path = Path(run)
        curves.append((path.name if path.is_dir() else f"{path.parent.name}/{path.name}", rows))

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, rows) in enumerate(curves):
        colour = f"C{i % 10}"
        hours = [r.hours for r in rows]
        ax.plot(hours, [r.top5 for r in rows], "-", color=colour, label=f"{label} top-5")
        ax.plot(hours, [r.top1 for r in rows], "--", color=colour, label=f"{label} top-1")
        hit = first_reaching(rows, target_top5)
        if hit is not None:
            ax.plot([hit.hours], [hit.top5], "o", color=colour)
            ax.annotate(f"{hit.hours:.3f} h (ep {hit.epoch})", (hit.hours, hit.top5),
                        textcoords="offset points", xytext=(4, -12), fontsize=8, color=colour)
    ax.axhline(target_top5, color="grey", linewidth=1, linestyle=":",
               label=f"target top-5 {target_top5:g}%")
    ax.set_xlabel("hours" + (" (evaluation time excluded)" if ignore_eval else ""))
    ax.set_ylabel("accuracy, %")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out = Path(out)
    save_figure(fig, out)
    return out


def lr_points(schedule: Schedule, plan: list, num_images: int, world_size: int,
              drop_last: bool) -> tuple[list[float], list[float]]:
    """(epoch position, lr) of up to LR_POINTS_PER_EPOCH steps per epoch of ``plan`` and each epoch's
    last step, as the training loop sets them."""
    xs, ys = [], []
    for row in plan:
        # lr arithmetic is relative to a full epoch even when the last one is cut short (as plan())
        full_iters = schedule.batches_per_epoch(row.epoch, num_images, world_size, drop_last)
        stride = max(1, row.iters // LR_POINTS_PER_EPOCH)
        for it in [*range(0, row.iters, stride), row.iters - 1]:
            xs.append(row.epoch + it / full_iters)
            ys.append(schedule.lr(row.epoch, it, full_iters))
    return xs, ys


def plot_schedule(schedule: Schedule, path: str | Path, num_images: int = IMAGENET_TRAIN_IMAGES,
                  world_size: int = 1, drop_last: bool = False) -> Path:
    """Three stacked panels against epochs for a ``training.phases.Schedule``: the lr (sampled up
    to LR_POINTS_PER_EPOCH times per epoch, ending on each epoch's last step), the training image
    size and the per-process batch size. Iterations per epoch follow from num_images/world_size
    (``drop_last``: the loader drops a partial batch, as the cifar recipe's)."""
    from matplotlib.figure import Figure

    plan = schedule.plan(num_images, world_size, drop_last)
    lr_x, lr_y = lr_points(schedule, plan, num_images, world_size, drop_last)
    epochs = [row.epoch for row in plan] + [schedule.total_epochs]

    fig = Figure(figsize=(9, 8), layout="constrained")
    ax_lr, ax_sz, ax_bs = fig.subplots(3, 1, sharex=True)
    ax_lr.plot(lr_x, lr_y, color="C0")
    ax_lr.set_ylabel("learning rate")
    ax_sz.step(epochs, [row.size for row in plan] + [plan[-1].size], where="post", color="C1")
    ax_sz.set_ylabel("image size, px")
    ax_bs.step(epochs, [row.batch_size for row in plan] + [plan[-1].batch_size], where="post",
               color="C2")
    ax_bs.set_ylabel("batch size per process")
    ax_bs.set_xlabel("epoch")
    for ax in (ax_lr, ax_sz, ax_bs):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"schedule: {schedule.total_epochs:g} epochs, {num_images:,} images, "
                 f"world size {world_size}")
    path = Path(path)
    save_figure(fig, path)
    return path


def figure_format(path: Path) -> str:
    """The format ``path``'s suffix names; ValueError, naming the supported ones, when matplotlib
    cannot write it or there is none (matplotlib would quietly write PNG, under another name)."""
    from matplotlib.figure import Figure

    supported = sorted(Figure().canvas.get_supported_filetypes())
    fmt = path.suffix[1:].lower()
    if fmt not in supported:
        problem = f"Format {fmt!r} is not supported" if fmt else "no suffix naming the format"
        raise ValueError(f"{problem} (supported formats: {', '.join(supported)})")
    return fmt


def save_figure(fig: Figure, path: Path) -> None:
    """Render in memory, then write atomically: a failure leaves no partial file (an existing one
    is kept as it was)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=figure_format(path), dpi=120)
    write_atomic(buf.getvalue(), path)


def figure_path(text: str) -> Path:
    """argparse type for --out: a path whose folder exists and is writable and whose suffix names a
    format, so a bad --out fails before the runs are read."""
    path = path_arg(text)
    problem = output_problem(text, make_parents=False)
    if problem is None:
        try:
            figure_format(path)
        except ValueError as e:
            problem = str(e)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description="Plot top-1/top-5 accuracy against hours for runs.")
    p.add_argument("runs", nargs="+", metavar="RUN", type=path_arg, help="event file or run directory")
    p.add_argument("--out", required=True, type=figure_path,
                   help="figure to write, in the format its suffix names (.png, .pdf, .svg, ...)")
    p.add_argument("--target-top5", type=percent_arg, default=93.0, help="percent (0, 100]")
    p.add_argument("--start-tag", default="first")
    p.add_argument("--ignore-eval", action="store_true")
    args = p.parse_args(argv)
    try:
        plot_runs(args.runs, args.out, args.target_top5, args.start_tag, args.ignore_eval)
    except (EventsError, OSError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
