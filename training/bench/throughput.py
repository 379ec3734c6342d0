"""Synthetic-data training throughput: torchvision's reference step beside our trainer's own step.

Both paths run in one process on device-resident random batches (several, rotated, never zeros),
so the figure is the model step alone: no decoding, augmentation or host-to-device copy.

- reference: torchvision's references/classification/train.py as written: NCHW, fp16 autocast with a
  GradScaler (its --amp), plain SGD, cudnn.benchmark on, and per step ``loss.item()`` and top-1/top-5
  ``.item()`` for its MetricLogger (three host syncs a step, four with the GradScaler's inf check).
- ours: the trainer itself: ``resnet.build`` (init_bn0), ``optim.sgd`` (fused on CUDA, foreach on
  CPU, no BN weight decay), batches in the dtype and memory format our loaders yield, and
  ``loop.train_epoch`` (no host sync but at logging steps), optionally under torch.compile.

Timing: warm-up steps (torch.compile, cuDNN autotuning, allocator growth) run first and are reported
separately as ``warmup_s``; then ``repeats`` windows of ``steps`` steps each are timed with CUDA
events (host clock on CPU) and the median window gives img/s. Peak memory is
torch.cuda.max_memory_allocated on CUDA, the process's peak resident set (VmHWM, reset per path) on CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from training import loop
from training.bench import write_json
from training.cli import nonnegative_int, positive_int
from training.config import CHOICES, ConfigError, OptimConfig, TrainConfig
from training.dist import DistInfo
from training.logs import RunLogger
from training.models import resnet
from training.optim import sgd
from training.phases import parse_schedule

NUM_BATCHES = 4  # distinct random batches rotated through, so no step reuses the previous inputs
LR = 0.01  # constant learning rate of both paths; any finite value times the same work


@dataclass(frozen=True)
class PathConfig:
    precision: str  # fp32 | fp16 | bf16 autocast (fp16 adds a GradScaler)
    channels_last: bool  # model and batches in NHWC
    compile_mode: str  # '' eager, else a torch.compile mode (default, max-autotune, ...)
    cudnn_benchmark: bool  # let cuDNN time its algorithms per input shape


@dataclass
class PathResult:
    img_s: float  # median over windows, images per second on this device
    img_s_windows: list[float]
    step_ms: float  # median milliseconds per training step
    warmup_s: float  # the warm-up steps' wall time, seconds (not in img_s)
    warmup_overhead_s: float  # warmup_s minus what those steps take once warm, seconds
    peak_mem_mib: float
    memory_kind: str  # cuda_max_allocated | rss_peak | rss_process_peak
    eval_img_s: float | None  # forward-only img/s of the trainer's evaluate (ours only)
    config: dict


def reference_config(device: torch.device) -> PathConfig:
    """torchvision's trainer with --amp; its autocast is CUDA-only, so fp32 on the CPU."""
    return PathConfig(precision="fp16" if device.type == "cuda" else "fp32", channels_last=False,
                      compile_mode="", cudnn_benchmark=True)


def ours_config(device: torch.device, precision: str | None = None, channels_last: bool | None = None,
                compile_mode: str = "", cudnn_benchmark: bool = True) -> PathConfig:
    """Our GPU defaults: bf16 (no grad scaler needed), channels_last, cudnn.benchmark. On the CPU:
    fp32 (the trainer's default precision) and NCHW (the trainer applies channels_last on CUDA only)."""
    on_gpu = device.type == "cuda"
    return PathConfig(precision=precision or ("bf16" if on_gpu else "fp32"),
                      channels_last=on_gpu if channels_last is None else channels_last,
                      compile_mode=compile_mode, cudnn_benchmark=cudnn_benchmark)


class _Batches:
    """The Loader protocol over a few device-resident batches, cycled for ``steps`` batches."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int):
        self.batches = batches
        self.steps = steps
        self.batch_size = batches[0][1].shape[0]
        self.num_images = steps * self.batch_size
        self.classes = []

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.steps):
            yield self.batches[i % len(self.batches)]

    def __len__(self) -> int:
        return self.steps


def make_batches(size: int, batch_size: int, num_classes: int, device: torch.device,
                 dtype: torch.dtype, channels_last: bool, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    for _ in range(NUM_BATCHES):
        x = torch.randn(batch_size, 3, size, size, generator=gen)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        out.append((x.to(device, dtype).contiguous(memory_format=fmt), y.to(device)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of device time for fn: CUDA events on the GPU, the host clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _host_timed(fn: Callable[[], None], device: torch.device) -> float:
    """Wall seconds including host-side compilation (warm-up), synchronised at both ends."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _reset_peak_memory(device: torch.device) -> bool:
    """True when the peak read afterwards covers only what follows (always on CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 resets this process's peak resident set (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory_mib(device: torch.device, reset_ok: bool) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib / 1024, "rss_peak" if reset_ok else "rss_process_peak"
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_process_peak"


def _reference_steps(model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                     cfg: PathConfig, device: torch.device, batches: list) -> Callable[[int], None]:
    """train_one_epoch of torchvision's references/classification/train.py, step for step."""
    criterion = nn.CrossEntropyLoss()
    amp = cfg.precision != "fp32"

    def run(steps: int) -> None:
        for i in range(steps):
            image, target = batches[i % len(batches)]
            with torch.autocast(device.type, dtype=loop.AMP_DTYPES.get(cfg.precision), enabled=amp):
                output = model(image)
                loss = criterion(output, target)
            opt.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            # its utils.accuracy + MetricLogger.update: three host syncs every step
            pred = output.topk(5, 1, True, True).indices.t()
            correct = pred.eq(target[None])
            acc1 = correct[:1].flatten().sum(dtype=torch.float32) * (100.0 / target.shape[0])
            acc5 = correct[:5].flatten().sum(dtype=torch.float32) * (100.0 / target.shape[0])
            loss.item(), acc1.item(), acc5.item()
    return run


def _ours_steps(state: loop.TrainState, device: torch.device, cfg: PathConfig, batches: list) -> Callable[[int], None]:
    """``steps`` steps of the trainer's own train_epoch (its lr setting, NaN watch and logging cadence)."""
    hooks = loop.Hooks(loss_fn=nn.CrossEntropyLoss())
    logger = RunLogger("", enabled=False)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)

    def run(steps: int) -> None:
        loader = _Batches(batches, steps)
        ctx = loop.RunContext(dist=info, logger=logger, num_train=loader.num_images,
                              precision=cfg.precision, print_freq=TrainConfig.print_freq)
        loop.train_epoch(state, loader, hooks, ctx, epoch=0)
    return run


def _build_reference(cfg: PathConfig, arch: str, size: int, batch_size: int, num_classes: int,
                     device: torch.device) -> tuple[Callable[[int], None], None, torch.optim.Optimizer]:
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = resnet.build(arch, num_classes).to(device, memory_format=fmt)
    # its defaults: --momentum 0.9 --wd 1e-4, no per-group weight decay, no foreach/fused flag
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    batches = make_batches(size, batch_size, num_classes, device, torch.float32, cfg.channels_last)
    return _reference_steps(model, opt, scaler, cfg, device, batches), None, opt


def _build_ours(cfg: PathConfig, arch: str, size: int, batch_size: int, num_classes: int,
                device: torch.device) -> tuple[Callable[[int], None], Callable[[int], object], torch.optim.Optimizer]:
    """As recipes/imagenet.py builds it: init_bn0, no BN weight decay, fused SGD on CUDA, and batches
    in the dtype and memory format our loaders hand the loop (amp dtype on the GPU only)."""
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = resnet.build(arch, num_classes, init_bn0=True).to(device, memory_format=fmt)
    opt = sgd(model, OptimConfig(no_bn_wd=True), device)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    forward: nn.Module = model
    if cfg.compile_mode:
        # static shapes: one graph per (size, batch), never dynamic-shape kernels
        forward = torch.compile(model, mode=cfg.compile_mode, dynamic=False)
    schedule = parse_schedule([{"ep": 0, "sz": size, "bs": batch_size}, {"ep": [0, 1], "lr": LR}])
    state = loop.TrainState(forward, model, opt, scaler, schedule)
    dtype = loop.AMP_DTYPES.get(cfg.precision, torch.float32) if device.type == "cuda" else torch.float32
    batches = make_batches(size, batch_size, num_classes, device, dtype, cfg.channels_last)

    def evaluate(n: int) -> object:
        return loop.evaluate(model, _Batches(batches, n), device, cfg.precision)
    return _ours_steps(state, device, cfg, batches), evaluate, opt


def measure_path(name: str, cfg: PathConfig, arch: str, size: int, batch_size: int, steps: int,
                 warmup_steps: int, repeats: int, device: torch.device, num_classes: int = 1000) -> PathResult:
    """Build a fresh model for one path ('reference' or 'ours') and size, warm it up, time it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if cfg.compile_mode:
        torch._dynamo.reset()  # no graph or automatic-dynamic state carries over from an earlier size
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    reset_ok = _reset_peak_memory(device)
    torch.manual_seed(0)
    build = _build_reference if name == "reference" else _build_ours
    run, evaluate, opt = build(cfg, arch, size, batch_size, num_classes, device)

    warmup_s = _host_timed(lambda: run(warmup_steps), device) if warmup_steps else 0.0
    windows = [_timed(lambda: run(steps), device) for _ in range(repeats)]
    median_s = statistics.median(windows)
    eval_img_s = None
    if evaluate is not None:
        evaluate(1)  # warm-up: eval-mode kernels, cuDNN algorithms for the no-grad shapes
        eval_img_s = steps * batch_size / _timed(lambda: evaluate(steps), device)
    peak, kind = _peak_memory_mib(device, reset_ok)
    return PathResult(
        img_s=steps * batch_size / median_s,
        img_s_windows=[steps * batch_size / w for w in windows],
        step_ms=1000 * median_s / steps, warmup_s=warmup_s,
        warmup_overhead_s=max(warmup_s - warmup_steps * median_s / steps, 0.0),
        peak_mem_mib=peak, memory_kind=kind, eval_img_s=eval_img_s,
        config=dataclasses.asdict(cfg) | {"optimizer": _optimizer_kind(opt, device),
                                          "host_syncs_per_step": _host_syncs(name, cfg, opt)})


def _host_syncs(name: str, cfg: PathConfig, opt: torch.optim.Optimizer) -> int:
    """The reference reads loss, top-1 and top-5 every step; a GradScaler checks for inf/NaN on the
    host unless the optimizer is fused (then the check stays on the device)."""
    return (3 if name == "reference" else 0) + (cfg.precision == "fp16" and not opt.defaults.get("fused"))


def _optimizer_kind(opt: torch.optim.Optimizer, device: torch.device) -> str:
    d = opt.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach"):
        return "foreach"
    # flags unset: torch picks foreach for CUDA tensors, a per-tensor loop on the CPU
    return "default=foreach" if device.type == "cuda" else "default=for-loop"


def run_throughput(arch: str, sizes: list[int], batch_size: int, steps: int, warmup_steps: int,
                   repeats: int, device: torch.device, ours: PathConfig,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Both paths at every size; returns the JSON document ``bench project`` reads."""
    ref = reference_config(device)
    results = []
    for size in sizes:
        row: dict = {"size": size, "batch_size": batch_size}
        for name, cfg in (("reference", ref), ("ours", ours)):
            log(f"throughput: {arch} {size}px batch {batch_size}: {name} ...")
            row[name] = dataclasses.asdict(measure_path(name, cfg, arch, size, batch_size, steps,
                                                        warmup_steps, repeats, device))
        row["ratio"] = row["ours"]["img_s"] / row["reference"]["img_s"]
        results.append(row)
    return {"kind": "throughput", "meta": environment(device) | {
        "arch": arch, "batch_size": batch_size, "steps": steps, "warmup_steps": warmup_steps,
        "repeats": repeats, "command": " ".join(sys.argv)}, "results": results}


def check_shapes(arch: str, sizes: list[int], batch_size: int, num_classes: int = 1000) -> None:
    """ConfigError when ``arch`` is unknown or cannot train at a size and batch (BatchNorm on one
    value per channel, a ViT's fixed input side): one forward on the meta device, no memory or
    compute, so the refusal comes before any model is built or any progress is printed."""
    with torch.device("meta"):
        model = resnet.build(arch, num_classes).train()
        for size in sizes:
            try:
                model(torch.empty(batch_size, 3, size, size))
            except NotImplementedError:  # an op without a meta kernel: the run itself will tell
                continue
            except (ValueError, AssertionError, RuntimeError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(f"--arch {arch} cannot train at --sizes {size} with --batch-size "
                                  f"{batch_size}: {reason}") from None


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "host": platform.node()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model} CPU ({os.cpu_count()} cores)"


def format_table(doc: dict) -> str:
    meta = doc["meta"]
    rows = [f"{meta['arch']} batch {meta['batch_size']} on {meta['device']} (torch {meta['torch']}), "
            f"{meta['repeats']} x {meta['steps']} steps after {meta['warmup_steps']} warm-up",
            f"{'size':>5} {'path':<10}{'img/s':>10}{'ms/step':>10}{'warm-up s':>11}"
            f"{'peak MiB':>10}{'eval img/s':>12}  config"]
    for r in doc["results"]:
        for name in ("reference", "ours"):
            p = r[name]
            c = p["config"]
            ev = f"{p['eval_img_s']:,.0f}" if p["eval_img_s"] else "-"
            desc = (f"{c['precision']} {'NHWC' if c['channels_last'] else 'NCHW'} "
                    f"{'compile:' + c['compile_mode'] if c['compile_mode'] else 'eager'} {c['optimizer']} SGD, "
                    f"{c['host_syncs_per_step']} syncs/step")
            rows.append(f"{r['size']:>5} {name:<10}{p['img_s']:>10,.1f}{p['step_ms']:>10.1f}{p['warmup_s']:>11.1f}"
                        f"{p['peak_mem_mib']:>10,.0f}{ev:>12}  {desc}")
        rows.append(f"{r['size']:>5} ratio ours/reference {r['ratio']:.2f}x")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.compile and not args.warmup:
        print("error: --warmup 0 with --compile: the compilation would be timed as steps; give --warmup 1 or more",
              file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ours = ours_config(device, args.precision, args.channels_last, args.compile or "", args.cudnn_benchmark)
    try:
        check_shapes(args.arch, args.sizes, args.batch_size)
        doc = run_throughput(args.arch, args.sizes, args.batch_size, args.steps, args.warmup,
                                  args.repeats, device, ours)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(doc))
    write_json(args.json, doc)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet50", help="torchvision model name")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[128, 224, 288], help="image sides, px")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per step")
    p.add_argument("--steps", type=positive_int, default=50, help="timed steps per window")
    p.add_argument("--warmup", type=nonnegative_int, default=10, help="untimed steps first (reported as warm-up)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed windows; the median is reported")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="ours (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="ours (default: on CUDA only, as the trainer)")
    p.add_argument("--compile", metavar="MODE", choices=CHOICES["cifar.compile_mode"],
                   help="ours: torch.compile mode (default, reduce-overhead, max-autotune, "
                   "max-autotune-no-cudagraphs); default eager")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True, help="ours")
    p.add_argument("--json", metavar="FILE", help="write the results (input of `project`)")
    p.set_defaults(func=run)
