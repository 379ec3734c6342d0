"""Train an image classifier: ImageNet with the imagenet18 phase schedule, or CIFAR-10 fast.

  # ResNet-50, imagenet18 schedule, 8 GPUs on one machine (NCCL):
  torchrun --nproc_per_node=8 training/train.py DATA --config configs/imagenet18/1x8.yaml --fp16
  # the imagenet18 command line as written, phases given inline:
  torchrun --nproc_per_node=8 training/train.py DATA --fp16 --logdir runs/r1 --distributed \
      --init-bn0 --no-bn-wd --phases "[{'ep': 0, 'sz': 128, 'bs': 128}, {'ep': (0, 6), 'lr': (1.0, 2.0)}]"
  # see a schedule before spending GPU hours:
  python training/train.py --config configs/imagenet18/8x8.yaml --dry-run --world-size 64
  # CIFAR-10 to 94% on one GPU (CPU fallback: configs/cifar10_cpu.yaml):
  python training/train.py --config configs/cifar10.yaml --runs 5
  # every config key with its value and meaning, as this command line resolves it:
  python training/train.py --config configs/tiny_cpu.yaml --print-config

Positional arguments are DATA or ``section.key=value`` overrides (YAML values; a text setting's as
typed, '#' and all), applied after the config files and flags. The defaults --help shows are the
built-in ones; a --config file overrides them. A fresh run needs a logdir of its own: one holding a
run is refused (continue that run with --resume auto), and one a running job holds is refused to any
other. Bad input exits with status 2 and a one-line error.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import config as C  # noqa: E402
from training.cli import ArgParser, output_clash, output_problem, positive_int  # noqa: E402
from training.phases import PhaseError, Schedule, load_phases, parse_schedule  # noqa: E402
from training.refusal import refuse, restart_on_one_machine  # noqa: E402

OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")  # '-': train.print-freq=3 is a misspelt key, not DATA

# flag -> (config path, value) for flags that set a fixed value
SWITCHES = {
    "fp16": ("train.precision", "fp16"), "bf16": ("train.precision", "bf16"),
    "init_bn0": ("model.init_bn0", True), "no_bn_wd": ("optim.no_bn_wd", True),
    "evaluate": ("train.evaluate", True), "short_epoch": ("train.short_epoch", True),
    "profile": ("train.profile", True), "compile": ("train.compile", True),
}
# flag -> config path for flags that carry a value
VALUED = {
    "arch": "model.arch", "logdir": "train.logdir", "workers": "data.workers", "resume": "train.resume",
    "loader": "data.loader", "bad_images": "data.bad_images", "seed": "train.seed",
    "device": "train.device", "data": "data.dir", "label_smoothing": "optim.label_smoothing",
    "max_epochs": "train.max_epochs", "runs": "cifar.runs", "results": "cifar.results",
    "dataset": "cifar.dataset", "print_freq": "train.print_freq", "nonfinite": "train.nonfinite",
    "dist_timeout": "train.dist_timeout_s", "keep_checkpoints": "train.keep_checkpoints",
    "profile_trace": "train.profile_trace",
}


# images per epoch of each recipe's data set, for --dry-run and --plot-schedule
TRAIN_IMAGES = {"imagenet": 1_281_167, "cifar": 50_000}  # ImageNet-1k train; CIFAR-10/100 train


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                  epilog=__doc__.split("\n", 1)[1],
                  usage="%(prog)s [DATA] [--config FILE ...] [options] [section.key=value ...]")
    p.add_argument("args", nargs="*", help="DATA and/or section.key=value overrides")
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable; later wins)")
    p.add_argument("--phases", help="phase schedule: imagenet18 literal, JSON, YAML, or a file holding one")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every key, its value and meaning) as YAML and exit")
    p.add_argument("--dry-run", action="store_true", help="print the per-epoch plan as JSON lines and exit")
    p.add_argument("--check", action="store_true",
                   help="check the command line as a run would (schedule, the recipe's settings, --arch), and "
                        "what a start would find on disk: a writable logdir free for a new run, a --resume file, "
                        "and for the imagenet recipe DATA's folders for every phase when DATA is given (no "
                        "images read, no devices); cifar: a writable --results file; exit 0, or "
                        "one error line and 2. The launch scripts run it once before torchrun")
    p.add_argument("--rejoin", action="store_true",
                   help="with --check: leave the logdir and a --resume file to the ranks (launch/multinode.sh: a "
                        "machine started anew may rejoin a group whose run fills the logdir, and neither need be "
                        "on this machine)")
    p.add_argument("--num-train-images", type=positive_int,
                   help="images per epoch for --dry-run / --plot-schedule (default: the recipe's data set, "
                        f"{TRAIN_IMAGES['imagenet']:,} for imagenet, {TRAIN_IMAGES['cifar']:,} for cifar; "
                        "data.synthetic_images with --loader synthetic)")
    p.add_argument("--world-size", type=positive_int, default=1,
                   help="processes for --dry-run / --plot-schedule (default 1)")
    p.add_argument("--plot-schedule", metavar="PNG", help="draw lr / size / batch against epochs and exit")
    p.add_argument("--distributed", action="store_true", help="accepted for imagenet18 compatibility; "
                   "torchrun's environment decides")
    notes, defaults = C.comments(), C.to_dict(C.Config())

    def meaning(path: str) -> str:  # argparse formats help with %
        return notes.get(path, "").replace("%", "%%")

    for flag, (path, value) in SWITCHES.items():
        names = ["--" + flag.replace("_", "-")] + (["-e"] if flag == "evaluate" else [])
        p.add_argument(*names, action="store_true", dest=flag,
                       help=f"sets {path}={C.yaml_text(value)}: {meaning(path)}")
    for flag, path in VALUED.items():
        section, key = path.split(".")
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, metavar=key.upper(),
                       help=f"{meaning(path)} ({path}; default {C.yaml_text(defaults[section][key])})")
    return p


def resolve(argv: list[str]) -> tuple[argparse.Namespace, C.Config]:
    args = make_parser().parse_intermixed_args(argv)
    overrides: list[tuple[list[str], object]] = []
    defaults = C.Config()
    data_dirs = [a for a in args.args if not OVERRIDE.match(a)]
    if len(data_dirs) > 1:
        raise C.ConfigError(f"more than one DATA argument: {' '.join(data_dirs)}")
    if data_dirs and args.data is not None and args.data != data_dirs[0]:
        raise C.ConfigError(f"DATA given twice: {data_dirs[0]} and --data {args.data}; give one")
    if data_dirs:
        overrides.append((["data", "dir"], data_dirs[0]))
    for flag, (path, value) in SWITCHES.items():
        if getattr(args, flag):
            overrides.append((path.split("."), value))
    for flag, path in VALUED.items():
        raw = getattr(args, flag)
        if raw is not None:
            section, key = path.split(".")
            name = "--" + flag.replace("_", "-")
            keep_text = isinstance(getattr(getattr(defaults, section), key), str)
            value = raw if keep_text else C.parse_value(raw, name)
            try:  # checked alone first, so the message names the flag the user typed
                C.from_dict({section: {key: value}})
            except C.ConfigError as e:
                raise C.ConfigError(f"{name}: {e}") from None
            overrides.append(([section, key], value))
    if args.phases is not None:
        overrides.append((["phases"], load_phases(args.phases)))
    overrides += [C.parse_override(a) for a in args.args if OVERRIDE.match(a)]
    cfg = C.build(args.config, overrides)
    if args.fp16 and args.bf16:
        raise C.ConfigError("--fp16 and --bf16 both given: choose one (train.precision)")
    if cfg.train.evaluate and not cfg.train.resume:
        raise C.ConfigError("--evaluate (-e) evaluates a checkpoint: give --resume PATH, or --resume auto "
                            "for the logdir's newest")
    if not cfg.phases and not args.print_config:
        raise C.ConfigError("no phase schedule: give --phases or a config file with 'phases'")
    return args, cfg


def train_images(args: argparse.Namespace, cfg: C.Config) -> int:
    """--num-train-images, else what the run would train on."""
    if args.num_train_images:
        return args.num_train_images
    if cfg.recipe == "imagenet" and cfg.data.loader == "synthetic":
        return cfg.data.synthetic_images
    return TRAIN_IMAGES[cfg.recipe]


def main(argv: list[str] | None = None) -> int:
    if (status := restart_on_one_machine()) is not None:
        return status
    try:
        args, cfg = resolve(sys.argv[1:] if argv is None else argv)
        if args.print_config:
            print(C.annotated(cfg), end="")
            sys.stdout.flush()
            return 0
        if args.rejoin and not args.check:
            raise C.ConfigError("--rejoin qualifies --check only")
        if args.check:
            return check(cfg, read_files(args), own_disk=not args.rejoin)
        cifar = cfg.recipe == "cifar"
        # step_start: the cifar recipe's lr arithmetic; resuming, the checkpoint's phases train (check_config)
        schedule = parse_schedule(cfg.phases, step_start=cifar, trained=bool(cfg.train.resume))
        drop_last = cifar and cfg.cifar.drop_last
        if args.dry_run:
            val_batch = cfg.cifar.eval_batch_size if cifar else cfg.data.val_batch_size
            plan = schedule.plan(train_images(args, cfg), args.world_size, drop_last, val_batch)
            for row in plan:
                print(json.dumps(row.__dict__))
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below
            return 0
        if args.plot_schedule:
            return plot(schedule, path=args.plot_schedule, num_images=train_images(args, cfg),
                        world_size=args.world_size, drop_last=drop_last)
        check_results(cfg, read_files(args))
        return run(cfg)
    except BrokenPipeError:  # the reader stopped early (`--dry-run | head`): what it read was written
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside training (indexing, between cifar runs): no traceback
        if os.environ.get("RANK", "0") == "0":
            print("stopped by SIGINT", file=sys.stderr)
        return 130
    except (PhaseError, C.ConfigError) as e:
        # the same on every rank (a function of the command line): under torchrun, say it once
        return refuse(f"error: {e}", say=os.environ.get("RANK", "0") == "0")


def read_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The files the command line names to read, which no output may overwrite."""
    files = [("the --config file", path) for path in args.config]
    if args.phases is not None and os.path.isfile(args.phases):
        files.append(("the --phases file", args.phases))
    return files


def check_results(cfg: C.Config, inputs: list[tuple[str, str]]) -> None:
    """A cifar --results file must be writable before the runs, not after them, and no input (a
    config or phases file, the data folder)."""
    if cfg.recipe == "cifar" and cfg.cifar.results:
        check_output_file(cfg.cifar.results, "--results")
        from training.data.cifar import folder
        from training.recipes.cifar import DEFAULT_DATA_DIR
        data = ("the data folder", folder(cfg.data.dir or DEFAULT_DATA_DIR, cfg.cifar.dataset))
        if (clash := output_clash("--results", cfg.cifar.results, [*inputs, data])) is not None:
            raise C.ConfigError(clash)


def check_output_file(path: str, flag: str, make_parents: bool = True) -> None:
    if (problem := output_problem(path, make_parents)) is not None:
        raise C.ConfigError(f"{flag} {path}: {problem}")


def plot(schedule: Schedule, path: str, num_images: int, world_size: int, drop_last: bool = False) -> int:
    """--plot-schedule: the figure, or a one-line error and no file (a missing folder, an
    unknown format)."""
    from dawn.plot import plot_schedule
    check_output_file(path, "--plot-schedule", make_parents=False)
    try:
        plot_schedule(schedule, path, num_images=num_images, world_size=world_size,  # written atomically
                      drop_last=drop_last)
    except (OSError, ValueError) as e:
        raise C.ConfigError(f"--plot-schedule {path}: {getattr(e, 'strerror', None) or e}") from None
    return 0


def check(cfg: C.Config, inputs: list[tuple[str, str]], own_disk: bool = True) -> int:
    """--check: the recipe's settings, a GPU for each of the LOCAL_WORLD_SIZE processes a launcher
    will start here, then what a start would find on disk (data dirs; with ``own_disk``, the logdir
    and a --resume file); 0, or one error line and 2. Nothing is written."""
    from training.checkpoint import CheckpointError
    from training.data import DataError
    recipe = recipe_module(cfg)
    schedule = recipe.check_config(cfg)  # ConfigError and PhaseError: main's handler
    check_results(cfg, inputs)
    # The launchers say how many processes this machine will start: each needs its GPU. A rank short
    # of one refuses before it can join the group, so across machines the group could not share that
    # refusal (training/refusal.py), and every restart would meet it again.
    if (procs := os.environ.get("LOCAL_WORLD_SIZE", "")).isdigit() and int(procs) > 0:
        from training.dist import machine_device_problem
        if (problem := machine_device_problem(cfg.train.device, int(procs))) is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        recipe.check_start(cfg, schedule, own_disk)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be listed
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    return 0


def recipe_module(cfg: C.Config):
    """The recipe's module, imported only when needed (it imports torch: seconds), so --dry-run and
    the config's own errors stay instant."""
    if cfg.recipe == "cifar":
        from training.recipes import cifar as recipe
    else:
        from training.recipes import imagenet as recipe
    return recipe


def run(cfg: C.Config) -> int:
    from training.checkpoint import CheckpointError
    from training.data import DataError, LoaderStalled
    try:
        return recipe_module(cfg).main(cfg)
    except C.ConfigError as e:  # a function of the command line, the same on every rank: said once
        if getattr(e, "per_rank", False):  # but a machine's devices (dist.DeviceError): by each rank that hits it
            return refuse(f"error: {_rank_prefix()}{e}")
        return refuse(f"error: {e}", say=os.environ.get("RANK", "0") == "0")
    except (DataError, CheckpointError, PhaseError) as e:
        return refuse(f"error: {_rank_prefix()}{e}")  # may differ per rank (its shard, its disk)
    except LoaderStalled as e:  # this rank's workers; not bad input: a restart may cure it
        print(f"error: {_rank_prefix()}{e}", file=sys.stderr, flush=True)
        return 1


def _rank_prefix() -> str:
    return f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
