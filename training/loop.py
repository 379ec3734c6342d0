"""The training loop every recipe feeds: train_epoch, evaluate, run.

Recipes build a TrainState (model, optimizer, schedule), loaders and Hooks, and hand them here.
The hot path keeps the host out of the GPU's way: the loss is read back (a host sync) only on
logging steps, and the learning rate comes from the pure schedule, not from tensors.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from training import dist
from training.data import Loader
from training.logs import RunLogger
from training.optim import set_lr
from training.phases import DEFAULT_MIN_SCALE, DataPhase, Schedule, rank_train_images

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the message names the epoch and step."""


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    loss: float  # mean cross-entropy
    count: int  # images evaluated, all ranks together
    seconds: float


@dataclass
class TrainState:
    model: nn.Module  # what the training forward runs (maybe DDP-wrapped / compiled)
    raw_model: nn.Module  # unwrapped: what is evaluated and checkpointed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedule: Schedule
    epoch: int = 0  # next epoch to run
    step: int = 0  # global training images seen (the TensorBoard step)


@dataclass
class Hooks:
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    after_step: Callable[[TrainState, int], None] | None = None  # e.g. lookahead / EMA
    evaluate: Callable[[nn.Module, Loader], EvalResult] | None = None  # e.g. TTA
    after_epoch: Callable[[TrainState], None] | None = None  # e.g. checkpoint
    # seconds of work done off the step's path since the last call, by name (e.g. background
    # checkpoint writes): --profile lists them under the epoch's table, outside its total
    background: Callable[[], dict[str, float]] | None = None
    eval_every: int = 1  # epochs between evaluations; 0: only after the last epoch
    loss_is_sum: bool = False  # loss_fn sums over the batch (a fixed loss scale); logs divide by it


@dataclass
class RunContext:
    dist: dist.DistInfo
    logger: RunLogger
    num_train: int  # training images, all ranks together (for iterations per epoch)
    drop_last: bool = False  # the training loader drops a partial last batch (the cifar recipe's)
    precision: str = "fp32"  # fp32 | fp16 | bf16
    seed: int = 0
    short_epoch_steps: int = 0  # >0: cap steps per epoch (smoke tests)
    max_epochs: int = 0  # >0: stop after this many epochs of this invocation
    nonfinite: str = "stop"  # stop | skip
    print_freq: int = 50
    profile: bool = False
    profile_sync: bool = True  # StageTimer's sync
    # time the first step of each training shape (batch, size) and log it once: with torch.compile
    # that step is the graph's compile, which otherwise hides in the first progress line's img/s
    report_first_steps: bool = False


class PhaseSource(Protocol):
    def for_epoch(self, epoch: int) -> tuple[Loader, Loader]: ...


class StageTimer:
    """Per-stage wall time (data wait, forward, backward, optimizer, ...); a no-op unless profiling.
    With ``sync`` it synchronises the device at each boundary so GPU time lands in the right stage;
    without, the stages are host times and the host runs ahead of the device as in training (the
    device work lands where the host next waits for it: a progress line's loss)."""

    def __init__(self, enabled: bool, device: torch.device, sync: bool = True):
        self.enabled = enabled
        self.device = device
        self.sync = sync
        self.totals: dict[str, float] = defaultdict(float)
        self._t = time.perf_counter()

    def mark(self, stage: str) -> None:
        if not self.enabled:
            return
        if self.sync:
            _sync(self.device)
        now = time.perf_counter()
        self.totals[stage] += now - self._t
        self._t = now

    def table(self, epoch: int, background: dict[str, float] | None = None) -> str:
        """The stages, their total, then ``background`` work that overlapped them (not in the total)."""
        total = sum(self.totals.values())
        share = total or 1.0
        rows = [f"profile epoch {epoch}: stage        seconds   share" + ("" if self.sync else "  (host times, train.profile_sync=false)")]
        rows += [f"  {k:<22}{v:>9.3f} {100 * v / share:6.1f}%" for k, v in self.totals.items()]
        rows.append(f"  {'total':<22}{total:>9.3f} {100 * total / share:6.1f}%")
        rows += [f"  {k:<22}{v:>9.3f}  (in the background, not in the total)"
                 for k, v in (background or {}).items()]
        return "\n".join(rows)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (without them oneDNN emulates it, many times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # torch's probes are private (hence getattr) and newer than torch 2.4, the floor: there the CPU's
    # own flags say it (Linux), or auto would pick fp32, 1.5x slower on an AVX-512 BF16 VM (BENCHMARKS.md)
    probes = {"_is_avx512_bf16_supported": "avx512_bf16", "_is_amx_tile_supported": "amx_tile"}
    if all(hasattr(torch.cpu, probe) for probe in probes):
        return any(getattr(torch.cpu, probe)() for probe in probes)
    return bool(set(probes.values()) & cpu_flags())


CPUINFO = "/proc/cpuinfo"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no such file."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def resolve_precision(device: torch.device, precision: str) -> str:
    """``train.precision`` as it will run: ``auto`` is bf16 where ``native_bf16``, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A one-line warning when a CPU is asked for a half precision it has no kernels for: the GPU
    CIFAR net on a 2-core VM without AVX-512 BF16 trained at 8 img/s fp16, 11 bf16, 153 fp32."""
    if device.type != "cpu" or precision == "fp32":
        return None
    amx_fp16 = getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    if not (native_bf16(device) if precision == "bf16" else amx_fp16()):
        return (f"warning: train.precision={precision}: this CPU has no native {precision} kernels and usually "
                "runs many times slower than fp32; train.precision=auto picks what it has")
    return None


def topk_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (as device tensors, no sync) of top-1 and top-5 hits; top-k is capped by classes."""
    k = min(5, logits.shape[1])
    pred = logits.topk(k, dim=1).indices
    hits = pred == labels[:, None]
    return hits[:, 0].sum(), hits.any(dim=1).sum()


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, precision: str = "fp32") -> EvalResult:
    """Exact under DDP: each rank evaluates its own images once; counts are summed across ranks."""
    start = time.time()
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, count
    count = 0  # counted on the host: no copy to the device per batch
    with torch.no_grad(), autocast(device, precision):
        for images, labels in loader:
            logits = model(images).float()
            c1, c5 = topk_correct(logits, labels)
            sums[:3] += torch.stack([c1.double(), c5.double(),
                                     F.cross_entropy(logits, labels, reduction="sum").double()])
            count += labels.shape[0]
    sums[3] = count
    dist.all_reduce_sum(sums)
    model.train(was_training)
    c1, c5, loss, n = sums.tolist()
    n = max(n, 1.0)
    return EvalResult(100 * c1 / n, 100 * c5 / n, loss / n, int(n), time.time() - start)


def _step_finite(loss: torch.Tensor) -> bool:
    """All ranks agree whether to skip, or DDP replicas would drift apart (one small all-reduce)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    return dist.all_reduce_sum(bad).item() == 0


def train_epoch(state: TrainState, loader: Loader, hooks: Hooks, ctx: RunContext, epoch: int,
                timer: StageTimer | None = None, shapes_seen: set | None = None, stop: int | None = None) -> None:
    """One epoch's steps; stage times go to ``timer`` (run passes one and prints its table).
    ``shapes_seen``: the training shapes whose first step was timed already (ctx.report_first_steps).
    ``stop``: the epoch this invocation ends before (--max-epochs), for the ETA; the schedule's end if None."""
    sched, opt, device = state.schedule, state.optimizer, ctx.dist.device
    full_iters = len(loader)
    # the schedule's share of what this epoch's loader yields: a phase may train on another copy of the
    # data (trndir) holding more or fewer images, and the cifar loader drops a partial batch
    iters = sched.share_of_epoch(epoch, full_iters)
    if ctx.short_epoch_steps:
        iters = min(iters, ctx.short_epoch_steps)
    state.model.train()
    timer = timer or StageTimer(False, device)
    # device-side NaN watch: each step's loss is copied into this buffer (one kernel, no sync) and
    # the buffer is searched for the first non-finite one only when the host syncs anyway; the
    # steps not run yet hold 0, which is finite
    losses = torch.zeros(iters, device=device) if ctx.nonfinite == "stop" else None
    t_log, images_since_log = time.time(), 0
    for i, (images, labels) in enumerate(loader):
        if i >= iters:
            break
        timer.mark("data wait")
        first_of_shape = ctx.report_first_steps and tuple(images.shape) not in shapes_seen
        if first_of_shape:
            _sync(device)
            t_first = time.perf_counter()
        lr = sched.lr(epoch, i, full_iters)
        set_lr(opt, lr)
        with autocast(device, ctx.precision):
            logits = state.model(images)
            loss = hooks.loss_fn(logits, labels)
        timer.mark("forward")
        batch = labels.shape[0]
        state.step += batch * ctx.dist.world_size  # images seen, trained on or not: the same axis either way
        images_since_log += batch
        if ctx.nonfinite == "skip" and not _step_finite(loss):
            ctx.logger.progress(f"warning: non-finite loss at epoch {epoch} step {i}: step skipped")
            opt.zero_grad(set_to_none=True)
            continue
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            timer.mark("backward")
            state.scaler.step(opt)
            state.scaler.update()
        else:
            loss.backward()
            timer.mark("backward")
            opt.step()
        opt.zero_grad(set_to_none=True)
        if hooks.after_step is not None:
            hooks.after_step(state, i)
        timer.mark("optimizer")
        if first_of_shape:
            _sync(device)
            shapes_seen.add(tuple(images.shape))
            ctx.logger.progress(f"first step of shape {'x'.join(map(str, images.shape))}: "
                                f"{time.perf_counter() - t_first:.2f} s (compile warm-up included; once per shape)")
        if losses is not None:
            losses[i] = loss.detach()
        if (i + 1) % ctx.print_freq == 0 or i + 1 == iters:
            _check_finite(losses, epoch)
            now = time.time()
            ips = images_since_log / max(now - t_log, 1e-9)
            t_log, images_since_log = now, 0
            mean_loss = loss.item() / (batch if hooks.loss_is_sum else 1)
            _log_train(state, ctx, logits, labels, mean_loss, lr, ips, epoch, i, iters, stop)
            timer.mark("logging")  # the loss check's sync: unsynced, the device's queued steps land here
    timer.mark("data wait")  # the fetch that ended the loop
    _check_finite(losses, epoch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(losses: torch.Tensor | None, epoch: int) -> None:
    """All ranks stop together, at the earliest bad step of any rank (one tiny all-reduce); nothing
    to check when non-finite steps are skipped instead."""
    if losses is None:
        return
    never = torch.iinfo(torch.long).max
    steps = torch.arange(len(losses), device=losses.device)
    first = torch.where(torch.isfinite(losses), never, steps).min()
    bad = int(dist.all_reduce_min(first.reshape(1)).item())
    if bad != never:
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch} step {bad}; stopping "
                            "(train.nonfinite=skip skips such steps)")


def _log_train(state: TrainState, ctx: RunContext, logits, labels, loss: float, lr: float, ips: float,
               epoch: int, i: int, iters: int, stop: int | None) -> None:
    """A logging step: the only place the step's results are read back to the host."""
    c1, c5 = topk_correct(logits.detach().float(), labels)
    n = labels.shape[0]
    log, step = ctx.logger, state.step
    log.scalar("losses/xent", loss, step)
    log.scalar("losses/train_1", 100 * c1.item() / n, step)
    log.scalar("losses/train_5", 100 * c5.item() / n, step)
    log.scalar("times/1gpu_images_per_sec", ips, step)
    log.scalar("sizes/lr", lr, step)
    left = _images_left(state, ctx, epoch, i + 1, stop)
    eta = left / max(ips * ctx.dist.world_size, 1e-9)
    log.progress(f"epoch {epoch} [{i + 1}/{iters}] loss {loss:.4f} lr {lr:.5g} "
                 f"{ips:,.0f} img/s/rank  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")


def _images_left(state: TrainState, ctx: RunContext, epoch: int, done: int, stop: int | None = None) -> int:
    """Images all ranks still train in this invocation after ``done`` steps of ``epoch``: the steps
    the loader yields up to ``stop`` (the schedule's end if None), the partial last batch counted
    as the images it holds."""
    sched, world = state.schedule, ctx.dist.world_size
    left = 0
    for e in range(epoch, sched.num_epochs if stop is None else min(stop, sched.num_epochs)):
        iters = sched.iters_per_epoch(e, ctx.num_train, world, ctx.drop_last)  # the steps the loader yields
        if ctx.short_epoch_steps:
            iters = min(iters, ctx.short_epoch_steps)
        bs = sched.data_phase(e).batch_size
        per_rank = rank_train_images(ctx.num_train, world, bs)
        skip = min(done * bs, per_rank) if e == epoch else 0
        left += (min(iters * bs, per_rank) - skip) * world
    return max(left, 0)


def _phase_extras(phase: DataPhase) -> str:
    """The ImageNet-only fields a phase sets (crop scale, rectangular validation, data dirs); a
    phase that leaves them at their defaults (every CIFAR phase) prints none."""
    extras = [f"min_scale {phase.min_scale}" if phase.min_scale != DEFAULT_MIN_SCALE else "",
              "rect_val" if phase.rect_val else "",
              f"train_dir '{phase.train_dir}'" if phase.train_dir else "",
              f"val_dir '{phase.val_dir}'" if phase.val_dir != phase.train_dir else ""]
    return "".join(" " + e for e in extras if e)


def run(state: TrainState, loaders: PhaseSource, hooks: Hooks, ctx: RunContext) -> EvalResult | None:
    """Train from state.epoch to the schedule's end (or ctx.max_epochs more), evaluating and calling
    after_epoch (checkpointing) as configured. Returns the last evaluation."""
    sched, log = state.schedule, ctx.logger
    last_eval, last_phase = None, None
    shapes_seen: set = set()
    end = sched.num_epochs
    if ctx.max_epochs:
        end = min(end, state.epoch + ctx.max_epochs)
    for epoch in range(state.epoch, end):
        timer = StageTimer(ctx.profile, ctx.dist.device, ctx.profile_sync)  # one table per epoch, evaluation and checkpoint included
        # Reseed per epoch (not once per run) so a run resumed at this epoch draws the same numbers;
        # per rank, so DDP ranks draw different dropout / stochastic-depth masks (rank 0's seed as before)
        torch.manual_seed(ctx.seed * 1_000_003 + epoch + ctx.dist.rank * 7_919_113)
        train, val = loaders.for_epoch(epoch)
        phase = sched.data_phase(epoch)
        if phase != last_phase:
            log.scalar("sizes/batch", phase.batch_size, state.step)
            log.scalar("sizes/image", phase.size, state.step)
            # as imagenet18 logs it; per launch too, so a run resumed on other machines says both
            log.scalar("sizes/world", ctx.dist.world_size, state.step)
            log.human(f"phase at epoch {epoch}: size {phase.size} batch {phase.batch_size} val_batch {val.batch_size}"
                      f"{_phase_extras(phase)}")
            last_phase = phase
        train_epoch(state, train, hooks, ctx, epoch, timer, shapes_seen, end)
        state.epoch = epoch + 1
        final = state.epoch == sched.num_epochs
        if final or (hooks.eval_every and state.epoch % hooks.eval_every == 0):
            if hooks.evaluate is not None:
                last_eval = hooks.evaluate(state.raw_model, val)
            else:
                last_eval = evaluate(state.raw_model, val, ctx.dist.device, ctx.precision)
            log.log_eval(epoch, last_eval.top1, last_eval.top5, last_eval.seconds, state.step)
            timer.mark("evaluation")
        if hooks.after_epoch is not None:
            hooks.after_epoch(state)
            timer.mark("checkpoint wait")  # what the step waited; the write itself is background
        if ctx.profile:
            log.progress(timer.table(epoch, hooks.background() if hooks.background is not None else None))
    return last_eval
