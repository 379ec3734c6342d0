"""bench pipeline: the steady-state img/s of what the training loop receives, per loader and size.

    python -m training.bench pipeline [DATA] --sizes 128 224 --loader torchvision dali --workers 16 \
        --batch-size 256 --seconds 20 --json pipe.json [--end-to-end]

"Receives" means decoded, augmented, normalised, on the training device, in the training dtype and
memory format: the loader's own output, with nothing downstream. Each (loader, size) runs in a fresh
process (no fork beside DALI's threads, no warm state shared) for ``--seconds`` of whole epochs.

Timing: a window is one epoch's batches after its first ``--skip`` ones, closed by a device sync, so
no window crosses an epoch restart or a pipeline rebuild; those costs are reported apart (the first
pass's start, which builds the pipeline or forks the workers, and the later passes' starts). img/s
is the median window. The torchvision loaders' W worker processes each make a whole batch and all
start at the epoch's start, so its first W batches arrive together: a window opened inside that
round would count batches made before it opened (with W = 16, --skip 3 and 80 batches an epoch,
+19% img/s), so there the skip is rounded up to the end of a round, W k - 1 (the JSON's ``skip``).
``cores`` is the machine's busy CPU time over the windows (from /proc/stat) divided by their wall
time: what the loader costs in CPU, everything on the machine included.

Images come from ``DATA<dir>/train`` where ``--dir SIZE=DIR`` names a pre-resized copy (by default
128 px from ``-sz/160``, as imagenet18, and 224 px from ``-sz/320``, issue 11's plan: imagenet18's
multi-machine schedules read 224 px from ``-sz/352``, its 1x8 from DATA, so ``--dir 224=-sz/352`` measures
theirs; a copy that is missing is written first; ``--source full`` reads DATA itself at every size). When DATA holds no train/ split, a tree of ``--generate`` ImageNet-like JPEGs and the copies the
sizes need are generated first, on every core.

``--end-to-end [LOADER ...]``: the trainer itself (``train.py --profile train.profile_sync=false``, static
compiled step and bf16 on CUDA), one run per loader whose schedule has ``--e2e-epochs`` epochs at each
size in turn. The first epoch of a size is its warm-up (compilation, autotuning, the loader's start);
the others give img/s (images over the training stages' time; evaluation and checkpoints are left out)
and the share of that time the host spent waiting for batches. The stages are host times: the device
is synced only where training syncs it (the epoch's last step), so the host runs ahead and overlaps
its own loader work (DALI's source callback, torchvision's normalisation) with the device's, as in
training; a synced profile would serialise them and understate img/s. The host's data wait overlaps
device work too, so the img/s against ``synthetic`` (the step's own rate, same command) is the measure
of a data-bound step; the wait share says where the host's time went.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from training.bench import write_json
from training.cli import nonnegative_int, output_clash, positive_int

DEFAULT_TREE = ".cache/bench-imagenet"
IMAGENET18_DIRS = {128: "-sz/160", 224: "-sz/320"}  # pre-resized copies per phase size (issue 11's plan)
COPY_SIDE = {"-sz/160": 160, "-sz/320": 320, "-sz/352": 352}
E2E_BATCH = {128: 512, 224: 256, 288: 128}  # per-GPU batch of the end-to-end runs (imagenet18 1x8-like)
E2E_LOADERS = ("torchvision", "dali", "dali:whole", "auto", "synthetic")  # torchvision:float is a bench row only
TRAIN_STAGES = ("data wait", "forward", "backward", "optimizer", "logging")  # train.py --profile's; not eval/checkpoint


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine since boot; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v) - idle, sum(v)


def measure(loader: str, data: str, train_dir: str, size: int, batch_size: int, workers: int, seconds: float,
            skip: int, device: str, hw_load: float = 0.65, start_method: str | None = None) -> dict:
    """One (loader, size) in this process: whole epochs for ``seconds``, one timed window each.
    ``start_method``: how worker processes start here; the bench's spawned child would otherwise
    spawn them too (each importing torch: 2 s for 2 workers on a 2-core VM, 0.15 s forked), a first
    start the trainer, which starts them as its platform does, never pays."""
    import torch

    if start_method:
        mp.set_start_method(start_method, force=True)

    from training.data import LoaderSpec, get_backend
    from training.phases import DataPhase

    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if on_gpu else (lambda: None)
    torch.set_num_threads(1)  # the loader's workers/threads get the cores; normalisation is tiny
    phase = DataPhase(start=0, size=size, batch_size=batch_size, train_dir=train_dir, val_dir=train_dir,
                      min_scale=0.35, rect_val=False, keep_dl=False)
    backend, _, variant = loader.partition(":")  # dali:whole decodes whole images, then crops
    spec = LoaderSpec(root=data, phase=phase, rank=0, world_size=1, device=dev, workers=workers, seed=0,
                      dtype=torch.bfloat16 if on_gpu else torch.float32, channels_last=on_gpu,
                      dali_fused_crop=variant != "whole", dali_hw_load=hw_load)
    t0 = time.perf_counter()
    chosen = get_backend(backend, device=dev, workers=workers)
    build = chosen.train
    if loader == "torchvision:float":
        from training.bench import floatpath
        build = floatpath.train_loader
        chosen.notes[:] = [f"loader: torchvision, the float path: normalised float32 batches from {workers} workers"]
    train = build(spec)
    index_s = time.perf_counter() - t0
    if chosen.name == "torchvision" and workers > 1:
        # worker w makes batches w, w + W, ...: batches 0..W-1 arrive at once, W..2W-1 one batch's time
        # later, ... A window opened at batch `skip` of a round counts the round's later batches, made
        # before it opened; opened at a round's last batch, it counts only what it waited for
        skip = -(-(skip + 1) // workers) * workers - 1
    windows, starts, cores, out = [], [], [], {}
    t_begin = time.perf_counter()
    epoch = 0
    try:
        while epoch < 2 or time.perf_counter() - t_begin < seconds:
            train.set_epoch(epoch)
            t_pass, counted, t_w, j0 = time.perf_counter(), 0, 0.0, None
            for i, (x, y) in enumerate(train):
                if i == 0:
                    sync()
                    starts.append(time.perf_counter() - t_pass)
                    out = {"dtype": str(x.dtype).replace("torch.", ""), "device": str(x.device),
                           "shape": list(x.shape), "labels_device": str(y.device),
                           "channels_last": x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4}
                if i == skip:
                    sync()
                    t_w, j0 = time.perf_counter(), _busy_jiffies()
                elif i > skip:
                    counted += x.shape[0]
            sync()
            if counted:
                wall = time.perf_counter() - t_w
                windows.append(counted / wall)
                j1 = _busy_jiffies()
                if j0 and j1:
                    cores.append((j1[0] - j0[0]) / max(j1[1] - j0[1], 1) * (os.cpu_count() or 1))
            epoch += 1
    finally:
        train.close()
    if not windows:
        fix = (f"generate a bigger tree or use fewer --workers (torchvision: --skip {skip} is --skip rounded up to "
               f"the end of a round of its {workers} workers' batches)" if chosen.name == "torchvision" and workers > 1
               else "generate a bigger tree or lower --skip")
        raise RuntimeError(f"{data}{train_dir}: an epoch of {len(train)} batches of {batch_size} has none to time "
                           f"after the first {skip + 1}: {fix}")
    return {"loader": loader, "size": size, "train_dir": train_dir, "img_s": statistics.median(windows),
            "img_s_windows": windows, "cores": statistics.median(cores) if cores else None,
            "first_start_s": starts[0], "restart_s": statistics.median(starts[1:]) if len(starts) > 1 else None,
            "index_s": index_s, "worker_start": mp.get_start_method(), "skip": skip, "epochs": epoch, "batches_per_epoch": len(train), "backend": chosen.notes} | out


def _train_dir(size: int, args: argparse.Namespace) -> str:
    if args.source == "full":
        return ""
    return args.dirs.get(size, IMAGENET18_DIRS.get(size, ""))


def ensure_tree(data: Path, dirs: set[str], images: int, log=lambda m: print(m, file=sys.stderr)) -> None:
    """The tree and the copies ``dirs`` name, generated where missing. A generation or a copy that was
    interrupted (a tree of ours whose marker does not say it finished) is completed, not measured:
    the generation is deterministic, so it is run again over the same file names."""
    from training.bench import jpegtree
    for path in (data, data / "train", data / "validation"):  # before the marker or a folder is written
        if path.exists() and not path.is_dir():
            _refuse(f"{path} is not a directory")
    classes = min(100, images)
    made = jpegtree.generated(data)
    redo = made is not None and not made.get("complete")
    if redo and (made.get("images"), made.get("classes")) != (images, classes):
        _refuse(f"{data} holds a part-generated tree of {made.get('images')} images ({jpegtree.MARKER}), not "
                f"--generate {images}: give --generate {made.get('images')} to complete it, or remove {data}")
    if redo or not (data / "train").is_dir():
        stale = [f"{data}{d}" for d in sorted(COPY_SIDE) if os.path.exists(f"{data}{d}")]
        if stale and not redo:  # copies of another tree: they would be taken for this one's
            _refuse(f"{', '.join(stale)} exist beside {data}, which has no train/ to make them from: remove them")
        log(f"bench: {'completing the part-generated' if redo else 'generating'} {images} textured JPEGs under "
            f"{data} on {os.cpu_count()} cores")
        t0 = time.perf_counter()
        facts = jpegtree.make_tree(data, images, classes=classes)
        log(f"bench: {facts} in {time.perf_counter() - t0:.1f} s")
    made = jpegtree.generated(data)
    for d in sorted(dirs - {""}):
        present = Path(f"{data}{d}/train").is_dir()
        unfinished = made is not None and d in COPY_SIDE and d not in made["copies"]  # resize completes it
        if present and not unfinished:
            continue
        if d not in COPY_SIDE:
            _refuse(f"{data}{d}/train does not exist (and {d} is not a copy this tool makes)")
        log(f"bench: {'completing' if present else 'writing'} the {d} copy")
        jpegtree.resized_copy(data, d, COPY_SIDE[d])
        if made is not None:
            made["copies"].append(d)
            jpegtree.mark(data, made)


def check_images(data: str, train_dirs: set[str]) -> None:
    """Every DATA<dir>/train has class folders, each holding a file (listing only: the measure
    indexes them itself); else a one-line refusal, before anything is measured or written."""
    from training.data import DataError
    from training.data.tree import list_files, find_classes
    for d in sorted(train_dirs):
        split = f"{data}{d}/train"
        try:
            list_files(split, find_classes(split))
        except DataError as e:
            _refuse(str(e))


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def end_to_end(loader: str, data: str, dirs: dict[int, str], args: argparse.Namespace) -> list[dict]:
    """train.py --profile (unsynced) over every size, args.e2e_epochs epochs each, in one run (as a
    schedule's phases); the first epoch of each size is its warm-up. One row per size, from the stage
    tables."""
    import torch
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    e, sizes = args.e2e_epochs, list(dirs)
    images = {s: _count(data, dirs[s]) for s in sizes}  # one epoch at world size 1 (synthetic: the first's)
    batch = {s: args.e2e_batch.get(s, E2E_BATCH.get(s, args.batch_size)) for s in sizes}
    phases = [{"ep": k * e, "sz": s, "bs": batch[s], "trndir": dirs[s], "valdir": dirs[s]} for k, s in enumerate(sizes)]
    phases.append({"ep": [0, e * len(sizes)], "lr": 0.1})
    with tempfile.TemporaryDirectory() as logdir:
        cmd = [sys.executable, "training/train.py", data, "--phases", json.dumps(phases), "--profile",
               "train.profile_sync=false",
               "--loader", loader.partition(":")[0], "--workers", str(args.workers), "--logdir", logdir,
               f"data.dali_fused_crop={str(loader != 'dali:whole').lower()}", f"data.dali_hw_load={args.dali_hw_load}",
               f"data.synthetic_images={images[sizes[0]]}",
               f"train.device={'cuda' if on_gpu else 'cpu'}", f"train.compile={str(on_gpu).lower()}",
               f"train.precision={'bf16' if on_gpu else 'fp32'}", f"model.arch={args.arch}",
               "train.print_freq=1000000", "train.keep_checkpoints=1"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = " | ".join(ln.removeprefix("error: ") for ln in (r.stderr or r.stdout).strip().splitlines()[-3:])
        return [{"loader": loader, "size": s, "error": tail, "wall_s": wall} for s in sizes]
    tables = _stage_tables(r.stderr + r.stdout)
    rows = []
    for k, s in enumerate(sizes):
        mine = tables[k * e:(k + 1) * e]
        steady = mine[1:]  # the first epoch is the warm-up (compile, autotune, loader start): never img/s
        train_s = sum(t.get(st, 0.0) for t in steady for st in TRAIN_STAGES)
        wait_s = sum(t.get("data wait", 0.0) for t in steady)
        rows.append({"loader": loader, "size": s, "train_dir": dirs[s], "batch_size": batch[s], "epochs": len(mine),
                     "wall_s": wall, "warmup_epoch_s": sum(mine[0].values()) if mine else None,
                     "img_s": images[s if loader != "synthetic" else sizes[0]] * len(steady) / train_s
                     if train_s else None,
                     "data_wait_share": wait_s / train_s if train_s else None, "stages": mine,
                     "backend_line": next((ln for ln in r.stderr.splitlines() if ln.startswith("loader:")), "")})
    return rows


def _count(data: str, train_dir: str) -> int:
    """The images the trainer trains on in DATA<dir>/train: its own index (any suffix, bad ones dropped)."""
    from training.data.tree import find_classes, index_tree
    split = f"{data}{train_dir}/train"
    return len(index_tree(split, find_classes(split), verbose=False).paths)


def _stage_tables(text: str) -> list[dict[str, float]]:
    """The rows of each `profile epoch N:` table printed by train.py --profile."""
    tables: list[dict[str, float]] = []
    for line in text.splitlines():
        if line.startswith("profile epoch"):
            tables.append({})
        elif tables and (m := re.match(r"\s+(\S.*?)\s+([\d.]+)\s+[\d.]+%$", line)) and m.group(1) != "total":
            tables[-1][m.group(1)] = float(m.group(2))
    return tables


def run(args: argparse.Namespace) -> int:
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    data = Path(args.data)
    args.dirs = dict(args.dir or [])
    args.e2e_batch = dict(args.e2e_batch or [])
    if args.e2e_loader == []:  # --end-to-end alone: the measured loaders the trainer has
        args.e2e_loader = [name for name in args.loader if name in E2E_LOADERS]
    if args.e2e_loader:  # the trainer's own check, not a refusal after minutes of measuring
        from training.config import ConfigError
        from training.models.resnet import check_arch
        try:
            check_arch(args.arch)
        except ConfigError as e:
            _refuse(str(e))
    dirs = {s: _train_dir(s, args) for s in args.sizes}
    trees = [("the data folder", data), *(("a copy it reads", f"{data}{d}") for d in sorted(set(dirs.values()) - {""}))]
    if args.json and (clash := output_clash("--json", args.json, trees)) is not None:
        _refuse(clash)
    ensure_tree(data, set(dirs.values()), args.generate)
    check_images(str(data), set(dirs.values()))
    doc: dict = {"kind": "pipeline", "meta": _meta(args, device, data), "results": [], "end_to_end": []}
    results, e2e = doc["results"], doc["end_to_end"]
    ctx = mp.get_context("spawn")
    workers_start = mp.get_start_method()  # the platform's, as train.py's loader workers start
    for size in args.sizes:
        for loader in args.loader:
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # not daemonic: may fork workers
                try:
                    r = pool.submit(measure, loader, str(data), dirs[size], size, args.batch_size, args.workers,
                                    args.seconds, args.skip, device, args.dali_hw_load, workers_start).result()
                except Exception as e:  # one loader failing (e.g. DALI on this driver) must not hide the rest
                    r = {"loader": loader, "size": size, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            results.append(r)
            print(f"  {_row(r)}", file=sys.stderr, flush=True)
            write_json(args.json, doc)  # after every row: a command cut short keeps what it measured
    for loader in args.e2e_loader or []:
        e2e += end_to_end(loader, str(data), dirs, args)
        for r in e2e[-len(dirs):]:
            print(f"  end-to-end {_e2e_row(r)}", file=sys.stderr, flush=True)
        write_json(args.json, doc)
    print(format_table(doc))
    write_json(args.json, doc)
    return 0 if not any("error" in r for r in results + e2e) else 1


def _meta(args: argparse.Namespace, device: str, data: Path) -> dict:
    import torch
    try:
        import nvidia.dali as dali
        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "dali": dali_version, "cpus": os.cpu_count(), "workers": args.workers, "batch_size": args.batch_size,
            "seconds": args.seconds, "skip": args.skip, "data": str(data), "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv)}


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['loader']:<12}{r['size']:>5}  error: {r['error']}"
    cores = f"{r['cores']:.1f}" if r["cores"] is not None else "-"
    restart = f"{r['restart_s']:.2f}" if r["restart_s"] is not None else "-"
    return (f"{r['loader']:<12}{r['size']:>5} {r['train_dir'] or 'full':>8}{r['img_s']:>10,.0f}"
            f" {min(r['img_s_windows']):>8,.0f}-{max(r['img_s_windows']):<8,.0f}{cores:>6}"
            f"{r['first_start_s']:>8.2f}{restart:>8}  {r['dtype']} {r['device']}"
            f"{' NHWC' if r['channels_last'] else ''}, labels {r['labels_device']}, {r['epochs']} epochs")


def _e2e_row(r: dict) -> str:
    if "error" in r:
        return f"{r['loader']:<12}{r['size']:>5}  error: {r['error']}"
    img_s = f"{r['img_s']:,.0f}" if r["img_s"] else "-"
    share = f"{100 * r['data_wait_share']:.1f}%" if r["data_wait_share"] is not None else "-"
    warm = f"{r['warmup_epoch_s']:.1f}" if r["warmup_epoch_s"] is not None else "-"
    return f"{r['loader']:<12}{r['size']:>5} {r['train_dir'] or 'full':>8}{img_s:>10}{share:>10}{warm:>10}"


def format_table(doc: dict) -> str:
    m = doc["meta"]
    rows = [f"pipeline: {m['data']} on {m['device']} ({m['cpus']} CPUs), torch {m['torch']}, DALI {m['dali']}, "
            f"batch {m['batch_size']}, {m['workers']} workers/threads, ~{m['seconds']} s per loader and size",
            f"{'loader':<12}{'size':>5} {'from':>8}{'img/s':>10} {'windows (min-max)':<17}{'cores':>6}"
            f"{'start s':>8}{'restart':>8}  output"]
    rows += [_row(r) for r in doc["results"]]
    if doc["end_to_end"]:
        rows += ["end to end (train.py --profile; epochs after the first):",
                 f"{'loader':<12}{'size':>5} {'from':>8}{'img/s':>10}{'data wait':>10}{'warm-up s':>10}"]
        rows += [_e2e_row(r) for r in doc["end_to_end"]]
    return "\n".join(rows)


def _per_size(value: Callable[[str], object], example: str) -> Callable[[str], tuple[int, object]]:
    """An argparse ``type`` for SIZE=VALUE: a positive image side and ``value`` parsed."""
    def parse(text: str) -> tuple[int, object]:
        size, sep, rest = text.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected SIZE=VALUE (e.g. {example}), got {text!r}")
        return positive_int(size), value(rest)
    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:  # inf would measure for ever; nan fails both
        raise argparse.ArgumentTypeError(f"must be a positive finite number of seconds, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", default=DEFAULT_TREE,
                   help=f"ImageNet-style tree (default {DEFAULT_TREE}; generated when it has no train/)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[128, 224], help="image sides, px")
    p.add_argument("--loader", nargs="*", default=["torchvision", "dali"],
                   choices=("torchvision", "torchvision:float", "dali", "dali:whole", "auto", "synthetic"),
                   help="backends to measure; dali:whole decodes whole images then crops (the hardware "
                   "decoder's only mode), dali decodes the crop's region only; torchvision:float normalises "
                   "in the workers and sends float32 (the classic path, for comparison); none: only --end-to-end")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="DataLoader workers = DALI threads (default: every core)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--seconds", type=_positive_seconds, default=20.0, help="measuring time per loader and size")
    p.add_argument("--skip", type=nonnegative_int, default=3, help="batches at the start of each epoch left out of its "
                   "window (torchvision: rounded up to a multiple of --workers, less 1)")
    p.add_argument("--source", choices=("imagenet18", "full"), default="imagenet18",
                   help="imagenet18: 128 px from DATA-sz/160, 224 px from DATA-sz/320 (imagenet18's schedules: "
                        "-sz/352; --dir 224=-sz/352), written first where missing; full: DATA at every size")
    p.add_argument("--dir", type=_per_size(str, "128=-sz/160"), action="append", metavar="SIZE=DIR",
                   help="read SIZE px from DATA<DIR> (repeatable), e.g. 224=-sz/352")
    p.add_argument("--generate", type=positive_int, default=10_000, help="train images to generate when DATA is empty")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present")
    p.add_argument("--dali-hw-load", type=float, default=0.65, help="DALI on a GPU: hardware decoder share")
    p.add_argument("--end-to-end", dest="e2e_loader", nargs="*", metavar="LOADER",
                   choices=E2E_LOADERS,
                   help="also run the trainer itself on these loaders (default: those of --loader it has) at "
                   "size; synthetic gives the step's own rate to compare with")
    p.add_argument("--e2e-epochs", type=positive_int, default=2, help="epochs per size in the end-to-end runs "
                   "(the first is warm-up)")
    p.add_argument("--e2e-batch", type=_per_size(positive_int, "128=512"), action="append", metavar="SIZE=BS",
                   help=f"end-to-end batch per size (default {E2E_BATCH}, else --batch-size)")
    p.add_argument("--arch", default="resnet50", help="end to end: the model")
    p.add_argument("--json", metavar="FILE", help="write every window and setting")
    p.set_defaults(func=run)
