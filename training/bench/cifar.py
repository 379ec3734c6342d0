"""CIFAR-10 side by side: PyPI airbench94 and variants of our recipe, in one process, interleaved.

    python -m training.bench cifar --data DIR [--config FILE] [--variants NAME=OVERRIDES ...]
        [--set KEY=VALUE ...] [--runs N] [--airbench] [--time-limit S] [--trace DIR]
        [--tta-fractions F ...] [--json FILE]

A variant is a name and a space-separated list of ``section.key=value`` overrides of the base config
(configs/cifar10.yaml unless ``--config`` names another); a token without ``=`` is a YAML file
layered on the base first (``muon=configs/cifar10_muon.yaml``). ``--set`` applies to every variant.

Every variant is built and warmed up first (its ``cifar.warmup_runs``: compile, cuDNN autotune; the
warm-up is reported once, apart), then the runs go round by round: each round runs every variant
(and airbench94) once, the order rotated each round, so drift of clocks or temperature hits all
alike; run r of every variant of ours uses seed ``train.seed + r``. A run's time is the recipe's
timed region (whitening init to the end of the final TTA evaluation; CUDA events on a GPU), as
airbench times its own. With ``--time-limit`` no round starts that the longest round so far says
would end past the limit. The JSON is rewritten (atomically) after every round.

airbench94: ``airbench.warmup94()`` then ``airbench.train94(run=r)`` in a scratch directory holding
``cifar10/train.pt`` and ``test.pt`` built from DIR's pickles (airbench reads them relative to the
working directory); accuracy and time are read from the ``eval`` row of the table it prints.

``--trace DIR``: before the rounds, one more (untimed) run of each variant of ours under
torch.profiler, written as ``DIR/NAME_profile.txt`` (ops by self device time on a GPU, by self CPU
time on the CPU) and ``DIR/NAME_trace.json.gz`` (chrome://tracing, Perfetto); the line it prints
gives the device's busy time against the run's: far less busy than long is a host-bound run.

``--tta-fractions F ...``: after each run of ours, its weights are scored again (untimed) with each
``cifar.tta_fraction`` F; as only the evaluation differs, the accuracy differences are paired, free
of the run-to-run spread. One table row per variant and share, and each run's figures in the JSON.

A row that raises is reported and left out of later rounds; the others go on (exit status 1).
``--count-ops`` times nothing: it counts the aten ops of a training step of each variant (host
work, a proxy for kernel launches), best with a CPU config.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from training import config as C
from training.bench import write_json
from training.cli import output_clash, output_problem
from training.data import DataError
from training.data import cifar as cdata
from training.dist import pick_device
from training.phases import PhaseError
from training.recipes import cifar as recipe

DEFAULT_CONFIG = "configs/cifar10.yaml"
AIRBENCH = "airbench94"  # the table's name for PyPI airbench's train94
NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
TRACE_BYTES = 15 * 2**20  # a lent GPU's call brings back files of 16 MiB at most (airbench94's whole run: 15.1 MB)


@dataclass
class Variant:
    name: str
    files: list[str]  # YAML files layered on the base config, in order
    overrides: list[str]  # section.key=value texts


def parse_variant(text: str) -> Variant:
    """'NAME=key=value key=value file.yaml' -> Variant; 'NAME=' is the base config as it is."""
    name, sep, rest = text.partition("=")
    if not sep or not NAME.match(name):
        raise C.ConfigError(f"--variants {text!r}: expected NAME=OVERRIDES (NAME of letters, digits, _.+-)")
    if name == AIRBENCH:
        raise C.ConfigError(f"--variants: {AIRBENCH} is the name of --airbench's row")
    tokens = rest.split()
    return Variant(name, [t for t in tokens if "=" not in t], [t for t in tokens if "=" in t])


def build_config(base: str, common: list[str], variant: Variant) -> C.Config:
    cfg = C.build([base, *variant.files], [C.parse_override(o) for o in common + variant.overrides])
    if cfg.recipe != "cifar":
        raise C.ConfigError(f"variant {variant.name}: recipe is {cfg.recipe!r}, not cifar")
    return cfg


# ------------------------------------------------------------------------------------- airbench

def write_airbench_data(data_dir: str, workdir: Path) -> None:
    """``workdir/cifar10/{train,test}.pt`` as airbench's CifarLoader saves them: images uint8
    (N, 32, 32, 3), labels int64, classes (list of names)."""
    out = workdir / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    for name, train in (("train.pt", True), ("test.pt", False)):
        split = cdata.load_split(data_dir, "cifar10", train=train)
        images = torch.from_numpy(split.images).permute(0, 2, 3, 1).contiguous()
        torch.save({"images": images, "labels": torch.from_numpy(split.labels).long(),
                    "classes": list(split.classes)}, out / name)


def parse_airbench_eval(text: str) -> tuple[float, float, float]:
    """(TTA accuracy %, plain accuracy %, seconds) from the ``eval`` row of train94's table."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1] == "eval":
            _, _, _, _, val_acc, tta_acc, seconds = cells
            return 100 * float(tta_acc), 100 * float(val_acc), float(seconds)
    raise RuntimeError("airbench94 printed no 'eval' row (its output: "
                       f"{text.strip().splitlines()[-1:] or 'nothing'})")


class Airbench:
    """PyPI airbench's train94, run in ``workdir`` (it opens ./cifar10/*.pt)."""

    def __init__(self, module, workdir: Path):
        self.module, self.workdir = module, workdir

    def _call(self, fn, **kw) -> str:
        out = io.StringIO()
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            with contextlib.redirect_stdout(out):
                fn(**kw)
        finally:
            os.chdir(cwd)
        return out.getvalue()

    def warmup(self) -> float:
        t0 = time.perf_counter()
        self._call(self.module.warmup94)
        return time.perf_counter() - t0

    def run(self, r: int) -> recipe.RunResult:
        acc, plain, seconds = parse_airbench_eval(self._call(self.module.train94, run=r))
        return recipe.RunResult(r, acc, plain, seconds)


def import_airbench():
    """The airbench module, or None with the reason on stderr (the bench goes on without it)."""
    try:
        return importlib.import_module("airbench")
    except Exception as e:  # ImportError, or airbench's own import-time failure
        print(f"warning: --airbench: cannot import airbench ({e.__class__.__name__}: {e}); "
              "going on without it", file=sys.stderr)
        return None


# ------------------------------------------------------------------------------------- the bench

@dataclass
class Entry:
    """One row of the table: a variant of ours or airbench94."""

    name: str
    describe: str  # overrides / files, or airbench's version
    run: object  # callable(round) -> RunResult
    warmup_seconds: float = 0.0
    data_load_seconds: float = 0.0
    config: dict | None = None
    threads: int | None = None  # torch threads of its runs on the CPU
    runs: list[dict] = field(default_factory=list)
    failed: str = ""  # why it stopped (an exception in a warm-up or run): left out of later rounds
    rescore: object = None  # ours: callable(fraction) -> EvalResult of the last run's weights (--tta-fractions)


def attempt(entry: Entry, what: str, fn):
    """fn(), or None after recording ``entry``'s failure: one broken variant (a compile mode that
    crashes, say) must not cost the other rows their share of a one-shot GPU call."""
    try:
        return fn()
    except Exception as e:  # any failure of the row's own code; bad input was rejected before
        text = str(e).strip().splitlines()
        entry.failed = f"{what}: {e.__class__.__name__}: {text[0] if text else ''}"[:300]
        print(f"error: {entry.name} failed in {entry.failed}", file=sys.stderr, flush=True)
        return None


def ours_entry(variant: Variant, cfg: C.Config, device: torch.device, data_dir: str,
               say) -> tuple[Entry, recipe.Trainer]:
    trainer = recipe.Trainer(cfg, recipe.check_config(cfg), device, data_dir)
    entry = Entry(variant.name, " ".join(variant.files + variant.overrides) or "(base config)",
                  lambda r: trainer.run(cfg.train.seed + r, None), data_load_seconds=trainer.data_seconds,
                  config=C.to_dict(cfg), threads=trainer.threads, rescore=trainer.evaluate_at)
    t0 = time.perf_counter()
    for w in range(cfg.cifar.warmup_runs):
        if attempt(entry, "warm-up", lambda: trainer.run(cfg.train.seed - 1 - w, None, warmup=True)) is None:
            return entry, trainer
    entry.warmup_seconds = time.perf_counter() - t0
    threads = f", {trainer.threads} torch threads" if trainer.threads else ""
    say(f"{variant.name}: data {entry.data_load_seconds:.2f} s, warm-up ({cfg.cifar.warmup_runs} run(s), "
        f"compile {cfg.train.compile}{threads}) {entry.warmup_seconds:.2f} s")
    return entry, trainer


OPS_STEPS = (2, 6)  # steps per epoch of the two short runs whose difference ``--count-ops`` reports
# ops that only make a view or read metadata: no kernel (GPU launch) of their own
VIEW_OPS = frozenset(f"aten::{n}" for n in (
    "view", "_unsafe_view", "unflatten", "flatten", "slice", "select", "narrow", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "expand", "as_strided", "alias", "detach", "split", "chunk", "unbind", "lift_fresh",
    "empty", "empty_like", "empty_strided"))


def aten_ops(trainer: recipe.Trainer, seed: int, steps: int) -> tuple[int, int, int]:
    """(top-level, top-level launching, all) aten ops the profiler records in one run of ``steps``
    steps per epoch. Top-level ops are the dispatcher calls the host makes, nested ones what they
    call in turn; launching ones are the top-level ops that are not views (VIEW_OPS), a proxy for
    the kernels an eager step launches."""
    from torch.profiler import ProfilerActivity, profile
    trainer.cfg.train.short_epoch, trainer.cfg.train.short_epoch_steps = True, steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.run(seed, None)
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(e) -> bool:
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        return p is not None
    top = [e for e in events if not nested(e)]
    return len(top), sum(e.name not in VIEW_OPS for e in top), len(events)


def count_ops(args: argparse.Namespace, say=lambda m: print(m, flush=True)) -> dict:
    """aten ops per training step of each variant: two short runs (OPS_STEPS steps per epoch, so
    set-up, evaluation and per-epoch work cancel out in their difference) under the profiler."""
    doc = {"kind": "cifar_ops", "meta": {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                                         "command": " ".join(sys.argv), "steps": OPS_STEPS}, "variants": {}}
    data_dir = cdata.ensure_data(args.data, "cifar10", download=False)
    for variant in map(parse_variant, args.variants):
        cfg = build_config(args.config, args.set, variant)
        schedule = recipe.check_config(cfg)
        trainer = recipe.Trainer(cfg, schedule, pick_device(cfg.train.device), data_dir)
        try:
            trainer.run(cfg.train.seed, None)  # allocations, autotune and compile happen here, once
            short, long = (aten_ops(trainer, cfg.train.seed, s) for s in OPS_STEPS)
        finally:
            trainer.close()
        steps = (OPS_STEPS[1] - OPS_STEPS[0]) * schedule.num_epochs
        per_step = [(b - a) / steps for a, b in zip(short, long)]
        row = dict(zip(("top_level_per_step", "launching_per_step", "all_per_step"), per_step),
                   describe=" ".join(variant.files + variant.overrides) or "(base config)")
        doc["variants"][variant.name] = row
        say(f"{variant.name}: aten ops per training step: {per_step[0]:.1f} top-level, {per_step[1]:.1f} of them "
            f"not views, {per_step[2]:.1f} in all ({row['describe']})")
    return doc


def trace_run(trainer: recipe.Trainer, seed: int, out: Path, name: str, say) -> None:
    """One run of ``trainer`` under torch.profiler: its op table and chrome trace in ``out``."""
    from torch.profiler import ProfilerActivity, profile
    cuda = trainer.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        result = trainer.run(seed, None)
    ops = prof.key_averages()
    device_attr = "self_device_time_total" if hasattr(ops[0], "self_device_time_total") else "self_cuda_time_total"
    (out / f"{name}_profile.txt").write_text(
        ops.table(sort_by=device_attr if cuda else "self_cpu_time_total", row_limit=40) + "\n")
    prof.export_chrome_trace(str(out / f"{name}_trace.json.gz"))  # gzipped by torch for a .gz path
    kept = fit_trace(out / f"{name}_trace.json.gz")
    line = f"{name}: traced run {result.train_seconds:.3f} s with the profiler on"
    if kept is not None:
        line += f" (chrome trace: its first {100 * kept:.0f}% in time, to fit {TRACE_BYTES >> 20} MiB)"
    if cuda:  # kernels are the device-side events; the ops that launched them carry the same time again
        busy = sum(getattr(e, device_attr) for e in ops if e.device_type != torch.autograd.DeviceType.CPU) / 1e6
        line += f", device busy {busy:.3f} s"
    say(f"{line} ({out / name}_profile.txt)")


def fit_trace(path: Path, limit: int = TRACE_BYTES) -> float | None:
    """Cut the gzipped chrome trace at ``path`` to its earliest events until it fits ``limit`` bytes
    (an eager run's can be: ~17 KB a step of host events alone, on the CPU, x 485 steps, plus kernels);
    the share of its time span kept, or None where it fit whole. NAME_profile.txt covers the whole run."""
    size = path.stat().st_size
    if size <= limit:
        return None
    doc = json.loads(gzip.decompress(path.read_bytes()))
    events = doc["traceEvents"]
    times = [e["ts"] for e in events if e.get("ph") != "M" and isinstance(e.get("ts"), (int, float))]
    t0, t1 = min(times), max(times)
    kept, data = 0.95 * limit / size, b""
    while not data or (len(data) > limit and kept > 1e-3):
        kept *= 0.8 if data else 1
        cut = t0 + (t1 - t0) * kept
        doc["traceEvents"] = [e for e in events if e.get("ph") == "M" or not isinstance(e.get("ts"), (int, float))
                              or e["ts"] <= cut]
        data = gzip.compress(json.dumps(doc).encode())
    path.write_bytes(data)
    return kept


def raise_recompile_limit(compiled_models: int) -> None:
    """Every CifarNet shares one forward code object, and dynamo keeps at most 8 graphs per code
    object by default (then runs eagerly, silently): each compiled variant needs its own few
    (train, train with the whitening bias frozen, eval)."""
    conf = torch._dynamo.config
    name = "recompile_limit" if hasattr(conf, "recompile_limit") else "cache_size_limit"
    setattr(conf, name, max(getattr(conf, name), 8 * compiled_models))


def summary(entry: Entry, baseline: float | None) -> dict:
    acc = recipe.summarize([r["accuracy"] for r in entry.runs])
    secs = [r["train_seconds"] for r in entry.runs]
    med = statistics.median(secs)
    return {"n": acc["n"], "mean_accuracy": acc["mean"], "std_accuracy": acc["std"],
            "ci95_mean_accuracy": acc["ci95"], "min_accuracy": acc["min"],
            "share_ge_94": acc["share_ge_threshold"],
            "mean_accuracy_no_tta": statistics.fmean(r["accuracy_no_tta"] for r in entry.runs),
            "median_train_seconds": med, "min_train_seconds": min(secs),
            "warmup_seconds": entry.warmup_seconds,
            "time_vs_airbench94": med / baseline if baseline else None}


def format_table(doc: dict) -> str:
    m = doc["meta"]
    rows = [f"cifar bench: {m['device']}, torch {m['torch']}, {m['rounds']} round(s) of {m['runs_asked']} "
            f"asked{' (stopped: ' + m['stopped'] + ')' if m['stopped'] else ''}, {m['date']}",
            f"{'variant':<16}{'n':>4}{'mean acc':>10}{'std':>6}{'95% CI':>17}{'>=94':>7}{'median s':>10}"
            f"{'min s':>8}{'warm-up s':>11}{'vs ' + AIRBENCH:>16}{'threads':>9}"]
    for name, v in doc["variants"].items():
        s = v["summary"]
        ci = s["ci95_mean_accuracy"]
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
        ratio = f"{s['time_vs_airbench94']:.3f}x" if s["time_vs_airbench94"] else "-"
        hits = f"{round(s['share_ge_94'] * s['n'])}/{s['n']}"
        rows.append(f"{name:<16}{s['n']:>4}{s['mean_accuracy']:>9.2f}%{s['std_accuracy']:>6.2f}{ci_text:>17}"
                    f"{hits:>7}{s['median_train_seconds']:>10.3f}{s['min_train_seconds']:>8.3f}"
                    f"{s['warmup_seconds']:>11.2f}{ratio:>16}{v.get('threads') or '-':>9}")
    rows += fraction_rows(doc)
    return "\n".join(rows)


def fraction_rows(doc: dict) -> list[str]:
    """--tta-fractions: per variant and share, the mean accuracy of the same weights, its mean
    difference from the timed run's own evaluation (paired: only the evaluation differs), and the
    median evaluation time."""
    rows = []
    for name, v in doc["variants"].items():
        runs = [r for r in v["runs"] if "tta_fractions" in r]
        for f in runs[0]["tta_fractions"] if runs else ():
            acc = [r["tta_fractions"][f]["accuracy"] for r in runs]
            diff = [r["tta_fractions"][f]["accuracy"] - r["accuracy"] for r in runs]
            secs = statistics.median(r["tta_fractions"][f]["eval_seconds"] for r in runs)
            rows.append(f"{name:<16}tta_fraction {f:<6} n {len(runs)}  mean acc {statistics.fmean(acc):.2f}%  "
                        f"vs the run's {statistics.fmean(diff):+.3f} (min {min(diff):+.2f}, max {max(diff):+.2f})  "
                        f"eval median {secs:.2f} s")
    return rows


def document(entries: list[Entry], meta: dict) -> dict:
    rounds = len(meta["order"])
    base = next((e for e in entries if e.name == AIRBENCH), None)
    baseline = statistics.median(r["train_seconds"] for r in base.runs) if base and base.runs else None
    variants = {}
    for e in entries:
        if e.runs:
            variants[e.name] = {"describe": e.describe, "summary": summary(e, baseline), "threads": e.threads,
                                "data_load_seconds": e.data_load_seconds, "runs": e.runs, "config": e.config}
    failed = {e.name: e.failed for e in entries if e.failed}
    warmups = {e.name: e.warmup_seconds for e in entries}  # each row's, those without runs yet included
    return {"kind": "cifar", "meta": meta | {"rounds": rounds, "failed": failed, "warmup_seconds": warmups},
            "variants": variants}


def bench(args: argparse.Namespace, say=lambda m: print(m, flush=True)) -> dict:
    start = time.perf_counter()
    variants = [parse_variant(v) for v in args.variants]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise C.ConfigError(f"--variants: a name is used twice ({' '.join(names)})")
    configs = [build_config(args.config, args.set, v) for v in variants]
    for cfg in configs:
        recipe.check_config(cfg)
    if any(cfg.cifar.dataset != "cifar10" for cfg in configs):
        raise C.ConfigError("cifar bench: cifar.dataset must be cifar10 (the data airbench94 trains on)")
    devices = [pick_device(cfg.train.device) for cfg in configs]  # no CUDA for a cuda config: bad input
    data_dir = cdata.ensure_data(args.data, "cifar10", download=False)
    raise_recompile_limit(sum(cfg.train.compile for cfg in configs))
    if args.trace:  # only now: a bad variant or data dir leaves no folder behind
        try:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise C.ConfigError(f"--trace {args.trace}: {e.strerror}") from None
    entries: list[Entry] = []
    trainers: list[recipe.Trainer] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [t.close() for t in trainers])
        module = import_airbench() if args.airbench else None
        if module is not None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airbench-")))
            write_airbench_data(data_dir, workdir)
            ab = Airbench(module, workdir)
            entry = Entry(AIRBENCH, f"PyPI airbench {getattr(module, '__version__', '')}".strip(), ab.run)
            entries.append(entry)
            seconds = attempt(entry, "warm-up", ab.warmup)
            if seconds is not None:
                entry.warmup_seconds = seconds
                say(f"{AIRBENCH}: warm-up {seconds:.2f} s")
        for variant, cfg, device in zip(variants, configs, devices):
            entry, trainer = ours_entry(variant, cfg, device, data_dir, say)
            entries.append(entry)
            trainers.append(trainer)
        if args.trace:
            for entry, trainer, cfg in zip(entries[-len(trainers):], trainers, configs):
                if not entry.failed:
                    attempt(entry, "trace", lambda: trace_run(trainer, cfg.train.seed - 100, Path(args.trace),
                                                             entry.name, say))
        device = devices[0]
        meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"cpu ({os.cpu_count()} cores; torch threads per variant in the table)",
                "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
                "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "base_config": args.config,
                "set": args.set, "runs_asked": args.runs, "time_limit_s": args.time_limit, "stopped": "",
                "order": []}
        # a call cut off by its time limit in round 0 (the first compiles took longer than planned)
        # still leaves the warm-ups and the runs it finished
        write_json(args.json, document(entries, meta))  # and after every run
        longest = 0.0
        for r in range(args.runs):
            elapsed = time.perf_counter() - start
            if args.time_limit and r and elapsed + longest > args.time_limit:
                meta["stopped"] = f"time limit {args.time_limit:g} s after {r} round(s)"
                say(f"stopping: round {r} would end past --time-limit {args.time_limit:g} s")
                break
            active = [e for e in entries if not e.failed]
            if not active:
                break
            t_round = time.perf_counter()
            order = active[r % len(active):] + active[:r % len(active)]
            for pos, e in enumerate(order):
                res = attempt(e, f"round {r}", lambda: e.run(r))
                if res is None:
                    continue
                e.runs.append(asdict(res) | {"round": r, "position": pos})
                say(f"round {r} {e.name}: accuracy {res.accuracy:.2f}% (no TTA {res.accuracy_no_tta:.2f}%) "
                    f"time {res.train_seconds:.3f} s")
                if args.tta_fractions and e.rescore:  # untimed: the same weights at each share
                    scored = {f: e.rescore(f) for f in args.tta_fractions}
                    e.runs[-1]["tta_fractions"] = {str(f): {"accuracy": v.top1, "eval_seconds": v.seconds}
                                                   for f, v in scored.items()}
                    say("  tta_fraction " + ", ".join(f"{f:g}: {v.top1:.2f}% in {v.seconds:.2f} s"
                                                      for f, v in scored.items()))
                write_json(args.json, document(entries, meta))
            meta["order"].append([e.name for e in order])
            longest = max(longest, time.perf_counter() - t_round)
            write_json(args.json, document(entries, meta))  # the round counted
    meta["wall_seconds"] = time.perf_counter() - start
    doc = document(entries, meta)
    write_json(args.json, doc)
    return doc


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.time_limit < 0:
        print("error: --runs must be >= 1 and --time-limit >= 0", file=sys.stderr)
        return 2
    if any(not 0 <= f <= 1 for f in args.tta_fractions or ()):
        print("error: --tta-fractions must be in [0, 1]", file=sys.stderr)
        return 2
    if args.trace and (problem := output_problem(os.path.join(args.trace, "x"))) is not None:
        print(f"error: --trace {args.trace}: {problem}", file=sys.stderr)  # made once the input is checked
        return 2
    try:
        if args.json:  # the run reads these first; a --json over one would destroy it unnoticed
            inputs = [("the --config file", args.config), ("the data folder", cdata.folder(args.data, "cifar10"))]
            inputs += [("a --variants file", f) for v in args.variants for f in parse_variant(v).files]
            if (clash := output_clash("--json", args.json, inputs)) is not None:
                raise C.ConfigError(clash)
        if args.count_ops:
            write_json(args.json, count_ops(args))
            return 0
        doc = bench(args)
    except (C.ConfigError, DataError, PhaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # no CUDA for a cuda config
        print(f"error: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}", file=sys.stderr)
        return 2
    print(format_table(doc))
    for name, why in doc["meta"]["failed"].items():
        print(f"{name}: FAILED in {why}")
    if args.json:
        print(f"results: {args.json}")
    return 1 if doc["meta"]["failed"] else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", required=True, metavar="DIR", help="holds cifar-10-batches-py")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help="base config (default %(default)s)")
    p.add_argument("--variants", nargs="+", default=["default="], metavar="NAME=OVERRIDES",
                   help="e.g. default= eager=train.compile=false muon=configs/cifar10_muon.yaml")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every variant")
    p.add_argument("--runs", type=int, default=5, help="rounds: runs of each variant (default %(default)s)")
    p.add_argument("--airbench", action="store_true", help="add PyPI airbench's train94 (needs CUDA)")
    p.add_argument("--time-limit", type=float, default=0.0, metavar="S",
                   help="start no round that would end after S seconds from the start; 0: none")
    p.add_argument("--count-ops", action="store_true", help="instead of timing: aten ops per training step "
                   "of each variant, from the profiler (host work; use a CPU config)")
    p.add_argument("--trace", metavar="DIR", help="first, one untimed run of each variant of ours under "
                   "torch.profiler: DIR/NAME_profile.txt and DIR/NAME_trace.json.gz")
    p.add_argument("--tta-fractions", type=float, nargs="+", metavar="F",
                   help="after each run of ours, score its weights again with each cifar.tta_fraction F (untimed; "
                        "paired: only the evaluation differs): accuracy and evaluation time per share")
    p.add_argument("--json", metavar="FILE", help="every run, the summaries and each variant's config")
    p.set_defaults(func=run)
