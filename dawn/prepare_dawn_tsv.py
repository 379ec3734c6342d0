#!/usr/bin/env python
"""DAWNBench export of a training run's TensorBoard events: the per-evaluation TSV, or a JSON entry.

    python dawn/prepare_dawn_tsv.py --events_path RUN_DIR_OR_FILE [--out FILE] [--ignore-eval]
        [--start-tag first] [--target-top5 93] [--stop-at-target] [--format tsv|json]

One TSV row per evaluation (steps holding both ``losses/test_1`` and ``losses/test_5``, in percent),
in step order: epoch (the ``epoch`` scalar at that step, else the row's index, from 0), hours from
the run's start to the evaluation's wall time, top-1, top-5. DAWNBench reads time to accuracy off the
first row whose top-5 reaches the target, so the target is checked against the values as written
(3 d.p.).

The start is the earliest value of the start tag (``first``) in any of the run's event files,
whatever its step: imagenet18's trainer logs ``first`` again at every launch, and time to accuracy
counts from the very first start, a restart's downtime included. (A purge at step 0, a run started
over, drops the earlier start with the rest of that attempt.) For the evaluation tags the later file
wins a duplicated step. An evaluation whose wall time precedes the start is an error naming its file.
A value or wall time the export uses that is NaN or infinite (or a negative ``times/eval_sec``) is
an error naming its tag, step and file.

``--ignore-eval`` subtracts, from each row's time, the ``times/eval_sec`` of every row up to AND
including that one, as imagenet18's exporter did: an evaluation's events are written after it
finishes, so its own evaluation time is already inside its wall time. Only the rows kept count: an
evaluation a later file repeated is subtracted once, with the later file's time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # run as `python dawn/prepare_dawn_tsv.py`: sys.path[0] is dawn/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dawn.events import (LAUNCH_TAG, METADATA_TAG, EventsError, Run, Scalar, load_run,  # noqa: E402
                         run_launches, run_metadata)
from training.cli import output_clash  # noqa: E402

TOP1, TOP5, EVAL_SEC, EPOCH = "losses/test_1", "losses/test_5", "times/eval_sec", "epoch"
SIZE, BATCH, WORLD = "sizes/image", "sizes/batch", "sizes/world"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class EvalRow:
    epoch: int
    step: int
    hours: float
    top1: float
    top5: float


def run_start(run: Run, start_tag: str = "first") -> Scalar:
    """The start-tag value with the earliest wall time in any of the run's files, whatever its step."""
    start = run.earliest.get(start_tag)
    if start is None:
        raise EventsError(f"{run.path}: no start tag {start_tag!r} (choose another with --start-tag)")
    return _checked(start_tag, start)


def eval_rows(run: Run, start_tag: str = "first", ignore_eval: bool = False) -> list[EvalRow]:
    """One row per evaluation, in step order, hours >= 0 from ``run_start``; raises EventsError
    naming the run if tags are missing, or the event file of an evaluation before the start or of
    a value that is not a finite number."""
    scalars = run.scalars
    missing = [t for t in (TOP1, TOP5) if t not in scalars]
    if missing:
        # a cifar logdir holds the runs' summary; each run's own events are in run_NNN/ beneath it
        runs = sorted(p.name for p in Path(run.path).glob("run_[0-9][0-9][0-9]") if p.is_dir())
        hint = f"; its runs' events are in {run.path}/{runs[0]}" + (" ..." if len(runs) > 1 else "") if runs else ""
        raise EventsError(f"{run.path}: no accuracy tags {' and '.join(missing)} "
                          f"(tags found: {', '.join(sorted(scalars)) or 'none'}){hint}")
    start = run_start(run, start_tag)
    top1 = {s.step: s for s in scalars[TOP1]}
    epochs = {s.step: s for s in scalars.get(EPOCH, [])}
    eval_sec = {s.step: s for s in scalars.get(EVAL_SEC, [])}
    rows = []
    excluded = 0.0
    for t5 in scalars[TOP5]:
        t1 = top1.get(t5.step)
        if t1 is None:
            continue
        done = max(_checked(TOP1, t1), _checked(TOP5, t5), key=lambda s: s.wall_time)
        seconds = done.wall_time - start.wall_time
        if seconds < 0:
            raise EventsError(f"{done.file}: the evaluation at step {t5.step} is {-seconds:.1f} s "
                              f"before the start ({start_tag!r} at step {start.step} in {start.file})")
        if ignore_eval:
            if t5.step not in eval_sec:
                raise EventsError(f"{run.path}: --ignore-eval needs {EVAL_SEC} at every evaluation; "
                                  f"missing at step {t5.step}")
            excluded += _checked(EVAL_SEC, eval_sec[t5.step], minimum=0).value
            if excluded > seconds:
                raise EventsError(f"{done.file}: --ignore-eval: {EVAL_SEC} up to step {t5.step} "
                                  f"adds up to {excluded:.1f} s, more than the {seconds:.1f} s "
                                  f"since the start")
            seconds -= excluded
        epoch = int(_checked(EPOCH, epochs[t5.step]).value) if t5.step in epochs else len(rows)
        rows.append(EvalRow(epoch=epoch, step=t5.step,
                            hours=seconds / 3600, top1=t1.value, top5=t5.value))
    if not rows:
        raise EventsError(f"{run.path}: {TOP1} and {TOP5} share no step: no complete evaluation")
    return rows


def _checked(tag: str, s: Scalar, minimum: float = -math.inf) -> Scalar:
    """``s``, the value of ``tag`` read at its step; EventsError naming the tag, step and file if its
    wall time or value is NaN or infinite, or its value is below ``minimum`` (int() of NaN is a
    traceback; sums of it, hours of nan)."""
    if not math.isfinite(s.wall_time):
        raise EventsError(f"{s.file}: {tag} at step {s.step} has wall time {s.wall_time}")
    if not (math.isfinite(s.value) and s.value >= minimum):
        bound = f" >= {minimum:g}" if minimum > -math.inf else ""
        raise EventsError(f"{s.file}: {tag} at step {s.step} is {s.value}, not a finite number{bound}")
    return s


def first_reaching(rows: list[EvalRow], target_top5: float) -> EvalRow | None:
    """The first row whose top-5, as written in the TSV (3 decimals), is at least the target."""
    return next((r for r in rows if round(r.top5, 3) >= target_top5), None)


def format_tsv(rows: list[EvalRow]) -> str:
    lines = ["epoch\thours\ttop1Accuracy\ttop5Accuracy"]
    lines += [f"{r.epoch}\t{r.hours:.5f}\t{r.top1:.3f}\t{r.top5:.3f}" for r in rows]
    return "\n".join(lines) + "\n"


def summary_line(rows: list[EvalRow], target_top5: float) -> str:
    hit = first_reaching(rows, target_top5)
    if hit is not None:
        return (f"top-5 first reached {target_top5:g}% at epoch {hit.epoch} after {hit.hours:.5f} h "
                f"(top-5 {hit.top5:.3f}%, top-1 {hit.top1:.3f}%)")
    best = max(rows, key=lambda r: r.top5)
    return (f"top-5 never reached {target_top5:g}% in {len(rows)} evaluations "
            f"(best {best.top5:.3f}% at epoch {best.epoch}, {best.hours:.5f} h)")


def dawn_entry(run: Run, rows: list[EvalRow], target_top5: float, ignore_eval: bool,
               start_tag: str = "first") -> dict:
    """A DAWNBench ImageNet-training JSON skeleton; what the run did not log is "unknown". worldSize
    is the logged ``sizes/world`` (a list, in step order, where it changed), else the metadata's;
    the command and torch are each launch's (``run/launch``) where they changed, else the metadata's
    (the first launch's: it is logged once per run)."""
    meta = run_metadata(run) or {}
    launches = run_launches(run)
    torches = _in_turn([x["torch"] for x in launches if "torch" in x])
    if torches:
        framework, source = f"PyTorch {', then '.join(torches)}", f"each launch's {LAUNCH_TAG}"
    elif "torch" in meta:
        framework, source = f"PyTorch {meta['torch']}", f"run metadata ({METADATA_TAG})"
    else:  # the torch this exporter runs with may not be the run's: claim nothing
        framework, source = f"PyTorch {UNKNOWN}", "the run logged no torch version"
    commands = _in_turn([x["command"] for x in launches if "command" in x]) or [meta.get("command", UNKNOWN)]
    start = run_start(run, start_tag).wall_time  # the start the rows' hours count from
    hit = first_reaching(rows, target_top5)
    world = meta.get("world_size")
    if WORLD in run.scalars:
        # logged at every launch: a run resumed under another world size trained at each, so all of
        # them, in the order they ran
        sizes = _in_turn([int(_checked(WORLD, s).value) for s in run.scalars[WORLD]])
        world = sizes[0] if len(sizes) == 1 else sizes
    return {
        "version": "v1.0",
        "author": UNKNOWN,
        "authorEmail": UNKNOWN,
        "framework": framework,
        "codeURL": UNKNOWN,
        "model": meta.get("arch", UNKNOWN),
        "hardware": _hardware(meta, world),
        "timestamp": dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime("%Y-%m-%d"),
        "misc": {
            "frameworkSource": source,
            "timeToTarget": {
                "top5Accuracy": target_top5,
                "reached": hit is not None,
                "epoch": hit.epoch if hit else None,
                "hours": round(hit.hours, 5) if hit else None,
                "evalTimeExcluded": ignore_eval,
            },
            "schedule": _schedule_summary(run, meta, rows),
            "worldSize": world if world is not None else UNKNOWN,
            "command": commands[0] if len(commands) == 1 else commands,
            "eventFiles": [f.name for f in run.files],
        },
    }


def _in_turn(values: list) -> list:
    """``values`` without those equal to the one before: what a run used, in the order it did."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def _hardware(meta: dict, world: int | list[int] | None) -> str:
    """The hardware line, N x GPU; for a run resumed under other world sizes (our trainer: one GPU
    per process, so the metadata's gpu_count is its first launch's world size) each launch's count,
    in order."""
    gpu = meta.get("gpu")
    if not gpu:
        return UNKNOWN
    if str(gpu).lower() == "cpu":
        return "CPU"
    count = meta.get("gpu_count", UNKNOWN)
    if isinstance(world, list) and count == meta.get("world_size"):
        return ", then ".join(f"{n} x {gpu}" for n in world)
    return f"{count} x {gpu}"


def _schedule_summary(run: Run, meta: dict, rows: list[EvalRow]) -> dict | str:
    if "phases" in meta:
        from training.phases import PhaseError, parse_schedule

        try:
            sched = parse_schedule(meta["phases"], trained=True)  # as the run trained it
        except PhaseError as e:
            raise EventsError(f"{run.path}: run metadata phases: {e}") from None
        return {
            "source": "run metadata phases",
            "epochs": sched.total_epochs,
            "data": [{"fromEpoch": p.start, "size": p.size, "batchSize": p.batch_size,
                      "minScale": p.min_scale, "rectVal": p.rect_val} for p in sched.data_phases],
            "lr": [{"epochs": [p.start, p.end], "lr": [p.lr_start, p.lr_end]}
                   for p in sched.lr_phases],
        }
    if SIZE not in run.scalars or BATCH not in run.scalars:
        return UNKNOWN
    # Rebuild the data phases from the logged sizes: a change logged at step S belongs to the epoch
    # after the last evaluation at or before S (evaluations end epochs).
    changes = sorted({s.step for s in run.scalars[SIZE]} | {s.step for s in run.scalars[BATCH]})
    data: list[dict] = []
    for step in changes:
        size = _value_at(run.scalars[SIZE], step)
        batch = _value_at(run.scalars[BATCH], step)
        done = [r.epoch for r in rows if r.step <= step]
        phase = {"fromEpoch": max(done) + 1 if done else 0,
                 "size": int(_checked(SIZE, size).value) if size is not None else UNKNOWN,
                 "batchSize": int(_checked(BATCH, batch).value) if batch is not None else UNKNOWN}
        if data and data[-1]["fromEpoch"] == phase["fromEpoch"]:
            data[-1] = phase  # both sizes changed at one epoch, logged at different steps
        elif not data or data[-1] | {"fromEpoch": phase["fromEpoch"]} != phase:
            data.append(phase)
    return {"source": f"logged scalars {SIZE}, {BATCH}", "epochs": rows[-1].epoch + 1,
            "data": data, "lr": UNKNOWN}


def _value_at(series: list[Scalar], step: int) -> Scalar | None:
    """The value last logged at or before ``step``."""
    before = [s for s in series if s.step <= step]
    return before[-1] if before else None


def write_atomic(data: str | bytes, out: Path) -> None:
    """Write via a temp file in the same directory and rename, so ``out`` is never half-written. A
    symlink's target is written, not the link replaced; what is no file to rename over (/dev/stdout,
    a pipe, a device) is written straight: a rename would put a file in its place (as root, /dev/stdout)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    try:
        regular = stat.S_ISREG(os.stat(out).st_mode)
    except OSError:  # not there yet (or a dangling link): made by the rename
        regular = True
    if not regular:
        with open(out, "wb") as f:
            f.write(data)
        return
    out = Path(os.path.realpath(out))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # same filesystem, so the rename is atomic
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def path_arg(text: str) -> Path:
    if not text:  # an unset shell variable; Path("") would silently mean the current directory
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


def percent_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 100:  # false for nan too
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage in (0, 100]")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events_path", "--events-path", dest="events_path", required=True, type=path_arg,
                   help="an event file, or a run directory (its events.out.tfevents.* files, merged)")
    p.add_argument("--out", type=path_arg, help="output file (written atomically); default stdout")
    p.add_argument("--ignore-eval", action="store_true",
                   help="subtract cumulative times/eval_sec (evaluations up to and including each row)")
    p.add_argument("--start-tag", default="first",
                   help="scalar tag whose earliest wall time in the run is the start")
    p.add_argument("--target-top5", type=percent_arg, default=93.0,
                   help="top-5 accuracy target, percent (0, 100]")
    p.add_argument("--stop-at-target", action="store_true",
                   help="end the TSV at the first row reaching the target")
    p.add_argument("--format", choices=("tsv", "json"), default="tsv")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prog = Path(sys.argv[0]).name
    what = "the --events_path folder" if args.events_path.is_dir() else "the --events_path file"
    if args.out is not None and (clash := output_clash("--out", str(args.out), [(what, args.events_path)])):
        print(f"{prog}: error: {clash}", file=sys.stderr)  # a TSV in place of the events it is made from
        return 2
    try:
        run = load_run(args.events_path)
        for f in run.skipped:
            print(f"{prog}: note: skipped empty event file {f}", file=sys.stderr)
        rows = eval_rows(run, args.start_tag, args.ignore_eval)
        if args.format == "json":
            text = json.dumps(dawn_entry(run, rows, args.target_top5, args.ignore_eval,
                                         args.start_tag), indent=2) + "\n"
        else:
            hit = first_reaching(rows, args.target_top5)
            text = format_tsv(rows[:rows.index(hit) + 1] if args.stop_at_target and hit else rows)
    except (EventsError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.out is None:
            sys.stdout.write(text)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        else:
            try:
                write_atomic(text, args.out)
            except OSError as e:
                print(f"{prog}: error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
                return 2
        print(summary_line(rows, args.target_top5), file=sys.stderr)
    except BrokenPipeError:  # the reader stopped early (`| head`, `2>&1 | head`): what it read was written
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):  # nothing left unflushed for the interpreter's exit to fail on
            os.dup2(devnull, fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
