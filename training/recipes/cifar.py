"""The single-device CIFAR recipe: airbench-class net and method, N seeded runs, statistics, JSON.

One run (what is timed, as airbench times it, with CUDA events on a GPU): normalise the resident
images, initialise the whitening layer from data, train through the shared loop (training/loop.py)
with the phase schedule, then the final multi-view (TTA) evaluation. Loading the data onto the device
and the torch.compile / cudnn warm-up run (on random labels) are outside the timed region and are
printed separately.

Units, airbench94 style: the phases' ``lr`` is a multiplier (peak 1.0); ``cifar.lr`` is decoupled
(per 1024 examples, divided by the Nesterov gain 1 + 1/(1 - momentum)), and ``cifar.weight_decay``
is per 1024 examples and independent of lr. The loss is *summed* over the batch (a static loss
scale of batch_size, so fp16 gradients do not underflow without a GradScaler, which would sync the
host every step); the conversion to PyTorch SGD numbers is in ``param_groups``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from training import dist, hostmem, loop
from training.config import Config, ConfigError, dump, refuse_unread, to_dict
from training.data import DataError
from training.data import cifar as cdata
from training.files import write_atomic
from training.logs import RunLogger, check_logdir, check_logdir_free, check_logdir_writable, lock_logdir, refuse_reuse
from training.models import cifar as cmodel
from training.phases import Schedule, parse_schedule

DEFAULT_DATA_DIR = "./data"
THRESHOLD = 94.0  # percent: the share of runs at or above it is reported
MIN_PX = 8  # px out of the whitening conv: its three 2x2 max-pools leave 1 px for the global one
# torch's thread count for this process before any run changes it: what cifar.threads=0 asks for
DEFAULT_THREADS = torch.get_num_threads()


# ------------------------------------------------------------------------------------ statistics

# Two-sided 95% Student t critical values t_{0.975, df}, df = 1..30 (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """t_{0.975} for ``df`` degrees of freedom: the table to 30, then the Cornish-Fisher expansion
    around z = 1.959964 (error < 1e-4 beyond df 30)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963984540054
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def summarize(accuracies: list[float], threshold: float = THRESHOLD) -> dict:
    """mean, sample std (n-1), min, max, the 95% t-interval of the mean, and the share >= threshold."""
    n = len(accuracies)
    if not n:
        raise ValueError("no runs")
    mean = statistics.fmean(accuracies)
    std = statistics.stdev(accuracies) if n > 1 else 0.0
    half = t975(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": std, "min": min(accuracies), "max": max(accuracies),
            "ci95": [mean - half, mean + half] if n > 1 else None,
            "share_ge_threshold": sum(a >= threshold for a in accuracies) / n, "threshold": threshold}


# ------------------------------------------------------------------------------------ run pieces

@dataclass
class RunResult:
    seed: int
    accuracy: float  # percent, with TTA (the headline number)
    accuracy_no_tta: float  # percent, plain single view
    train_seconds: float  # timed region: whitening init .. end of the final TTA evaluation


@dataclass
class Timer:
    """CUDA events on a GPU (device time between two points of the stream), else a host clock."""

    device: torch.device
    seconds: float = 0.0
    _start: object = field(default=None, repr=False)

    def start(self) -> None:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> float:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.seconds = self._start.elapsed_time(end) / 1000
        else:
            self.seconds = time.perf_counter() - self._start
        return self.seconds


def kilostep_scale(momentum: float) -> float:
    """airbench: 1024 examples x the Nesterov steady-state gain 1 + 1/(1 - momentum)."""
    return 1024 * (1 + 1 / (1 - momentum))


def param_groups(model: cmodel.CifarNet, cfg, batch_size: int) -> list[dict]:
    """Groups with ``lr_scale`` (the loop sets lr = phase multiplier x lr_scale) and weight decay set
    so the decay per step is weight_decay * batch / kilostep x multiplier in every group (decoupled
    from each group's lr, as airbench94). Group 0 is the conv filters (its lr_scale is never 0)."""
    ks = kilostep_scale(cfg.momentum)
    wd_step = cfg.weight_decay * batch_size / ks  # decay per step at multiplier 1

    def sgd_group(params, mult: float, name: str) -> dict:
        lr = cfg.lr * mult / ks
        return {"params": params, "lr_scale": lr, "weight_decay": wd_step / lr if lr else 0.0, "name": name}

    filters = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim == 4]
    head = [model.head.weight]
    norms = [p for n, p in model.named_parameters() if p.requires_grad and "norm" in n]
    whiten_bias = [model.whiten.bias]
    if cfg.optimizer == "muon":
        first = {"params": filters, "lr_scale": cfg.muon_lr, "muon": True, "momentum": cfg.muon_momentum,
                 "ns_steps": cfg.muon_ns_steps, "normalize": True, "batched": cfg.muon_batched, "weight_decay": 0.0,
                 "name": "filters"}
    else:
        first = sgd_group(filters, 1.0, "filters")
    groups = [first, sgd_group(head, cfg.head_lr_scale, "head"),
              sgd_group(norms, cfg.bias_lr_scale, "norm"),
              sgd_group(whiten_bias, cfg.whiten_bias_lr_scale, "whiten_bias")]
    return [g for g in groups if g["params"]]


def make_optimizer(model: cmodel.CifarNet, cfg, batch_size: int, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, batch_size)
    if cfg.optimizer == "muon":
        from training.muon import Muon
        return Muon(groups, lr=0.0, momentum=cfg.momentum, nesterov=True)
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, nesterov=True, **kw)


def loss_fn(label_smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Summed label-smoothed cross-entropy (see the module docstring for why summed)."""
    def fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="sum")
    return fn


class StepHooks:
    """after_step: airbench94's lookahead-EMA and the whitening-bias freeze. Each lookahead update
    moves an EMA of the weights (and BN statistics) towards the weights and copies it back into
    them; the decay grows as (step / total)^pow, so it averages hard only near the end; at the end
    of the run (and of every epoch, with cifar.lookahead_epoch_end) the weights are set to the EMA."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 num_images: int, drop_last: bool, cfg, short_epoch_steps: int = 0):
        self.optimizer, self.schedule, self.cfg = optimizer, schedule, cfg
        self.steps = [schedule.iters_per_epoch(e, num_images, 1, drop_last) for e in range(schedule.num_epochs)]
        if short_epoch_steps:
            self.steps = [min(s, short_epoch_steps) for s in self.steps]
        self.full = [schedule.batches_per_epoch(e, num_images, 1, drop_last) for e in range(schedule.num_epochs)]
        self.total = sum(self.steps)
        self.count = 0
        self.bias_frozen = False
        self.ema: list[torch.Tensor] | None = None
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        if cfg.whiten_bias_epochs <= 0:  # never trained: no step computes its gradient
            self._freeze_whiten_bias()

    def _freeze_whiten_bias(self) -> None:
        self.bias_frozen = True
        for g in self.optimizer.param_groups:
            if g.get("name") == "whiten_bias":
                g["lr_scale"] = 0.0  # frozen: lr 0 from the next step on
                # and no gradient: backward then stops at the first 3x3 conv's weights, skipping
                # the largest input-gradient of the net (31x31 px) and the GELU before it
                for p in g["params"]:
                    p.requires_grad_(False)

    def __call__(self, state: loop.TrainState, i: int) -> None:
        cfg, epoch = self.cfg, state.epoch  # state.epoch is the running epoch until it ends
        self.count += 1
        last = i + 1 == self.steps[epoch]
        if not self.bias_frozen and epoch + (i + 1) / self.full[epoch] >= cfg.whiten_bias_epochs:
            self._freeze_whiten_bias()
        if not cfg.lookahead:
            return
        if epoch >= cfg.lookahead_start_epoch and self.count % cfg.lookahead_every == 0:
            if self.ema is None:
                self.ema = [t.detach().clone() for t in self.tensors]
            else:
                decay = cfg.lookahead_decay ** cfg.lookahead_every * (self.count / self.total) ** cfg.lookahead_pow
                torch._foreach_lerp_(self.ema, self.tensors, 1 - decay)
                torch._foreach_copy_(self.tensors, self.ema)
        if last and self.ema is not None and (cfg.lookahead_epoch_end or epoch == len(self.steps) - 1):
            torch._foreach_copy_(self.tensors, self.ema)


# ------------------------------------------------------------------------------- TTA evaluation

def tta_logits(model: nn.Module, images: torch.Tensor, level: int, channels_last: bool = False,
               plain: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(TTA logits, plain logits). level 1 averages the image and its mirror; level 2 also averages
    the mirror pair of the image shifted 1 px up-left and 1 px down-right (reflect padding), with
    weights 1/2 for the unshifted pair and 1/4 for each shifted pair (airbench's 6 views).
    ``plain``: the images' plain logits when already computed."""
    # A copy: under CUDA graphs (compile mode reduce-overhead) the next call of the model overwrites
    # its last output in place, and plain is read after the other views.
    plain = model(images).clone() if plain is None else plain
    if level == 0:
        return plain, plain
    mirror = 0.5 * plain + 0.5 * model(images.flip(-1))
    if level == 1:
        return mirror, plain
    h, w = images.shape[-2:]
    # reflect-pad in fp32 off the GPU (half reflect-pad is missing on some CPU builds)
    padded = F.pad(images if images.is_cuda else images.float(), (1, 1, 1, 1), mode="reflect").to(images.dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shifted = []
    for view in (padded[..., 0:h, 0:w], padded[..., 2:h + 2, 2:w + 2]):
        view = view.contiguous(memory_format=fmt)
        shifted.append(0.5 * model(view) + 0.5 * model(view.flip(-1)))
    return 0.5 * mirror + 0.25 * shifted[0] + 0.25 * shifted[1], plain


def selective_tta_logits(model: nn.Module, images: torch.Tensor, plain: torch.Tensor, level: int, fraction: float,
                         batch_size: int, channels_last: bool = False) -> torch.Tensor:
    """TTA logits for the ``ceil(fraction * N)`` images whose plain prediction is least confident
    (lowest top softmax probability), the plain logits for the rest (after Hiverge's CIFAR-10
    speedrun): TTA mostly changes the uncertain predictions, and the views cost a forward pass each.
    The chosen images go through in batches of ``batch_size``, the last padded with repeats, so a
    compiled model sees the one shape it saw in the plain pass."""
    logits = plain.clone()
    k = math.ceil(round(fraction * len(images), 6))  # 0.07 x 100 is 7.000000000000001 in floats: 7, not 8
    if level == 0 or k == 0:
        return logits
    chosen = plain.softmax(1).amax(1).topk(k, largest=False).indices
    for part in chosen.split(batch_size):
        idx = torch.cat([part, part[-1:].expand(batch_size - len(part))]) if len(part) < batch_size else part
        tta, _ = tta_logits(model, images[idx], level, channels_last, plain=plain[idx])
        logits[part] = tta[:len(part)].float()
    return logits


def make_evaluate(forward: nn.Module, raw: nn.Module, device: torch.device, precision: str, level: int,
                  extra: dict, channels_last: bool = False,
                  fraction: float = 1.0) -> Callable[[nn.Module, object], loop.EvalResult]:
    """The loop's evaluate hook: TTA top-1/top-5 over the loader (for every image, or with
    ``fraction`` < 1 for the least confident share: ``selective_tta_logits``); the plain top-1 goes
    to ``extra``. The loop passes the raw model; the compiled wrapper of it is used instead when
    there is one."""
    def evaluate(model: nn.Module, loader) -> loop.EvalResult:
        start = time.time()
        net = forward if model is raw else model
        was_training = net.training
        net.eval()
        with torch.no_grad(), loop.autocast(device, precision):
            if fraction >= 1:
                views = [(labels, *tta_logits(net, images, level, channels_last)) for images, labels in loader]
            else:  # the plain pass over every batch first, then the views for the chosen images
                batches = [(images, labels, net(images).clone()) for images, labels in loader]
                images, plain = torch.cat([b[0] for b in batches]), torch.cat([b[2] for b in batches]).float()
                logits = selective_tta_logits(net, images, plain, level, fraction, len(batches[0][0]), channels_last)
                views = [(torch.cat([b[1] for b in batches]), logits, plain)]
        net.train(was_training)
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # tta top1, top5, loss, plain top1
        n = 0
        for labels, logits, plain in views:
            logits, plain = logits.float(), plain.float()
            c1, c5 = loop.topk_correct(logits, labels)
            p1 = loop.topk_correct(plain, labels)[0]  # the same tie-break as c1 (argmax breaks ties otherwise)
            sums += torch.stack([c1.double(), c5.double(),
                                 F.cross_entropy(logits, labels, reduction="sum").double(), p1.double()])
            n += labels.shape[0]
        c1, c5, loss, p1 = sums.tolist()
        n = max(n, 1)
        extra["accuracy_no_tta"] = 100 * p1 / n
        return loop.EvalResult(100 * c1 / n, 100 * c5 / n, loss / n, n, time.time() - start)
    return evaluate


# --------------------------------------------------------------------------------------- checks

def check_config(cfg: Config) -> Schedule:
    """Sections this recipe does not read must stay at their defaults: a setting there would
    otherwise be silently ignored."""
    refuse_unread(cfg, "cifar", ("optim", "model", "data"), "its settings are cifar.*", keep=("data.dir",))
    if cfg.train.resume or cfg.train.evaluate:
        raise ConfigError("train.resume / train.evaluate: the cifar recipe keeps no checkpoints (a run is seconds)")
    if cfg.train.profile_trace:
        raise ConfigError("train.profile_trace (--profile-trace) is the imagenet recipe's; a cifar run's trace: "
                          "python -m training.bench cifar --data DIR --config FILE --trace OUTDIR")
    c = cfg.cifar
    # airbench's lr arithmetic: step s trains at the ramps' value at s (LambdaLR; 1 - s / total)
    schedule = parse_schedule(cfg.phases, step_start=True)
    cmodel.build(c, 10)  # the model's settings (widths, act, pool, whiten_kernel): a small CPU net, ms
    for phase in schedule.raw:
        for key in ("trndir", "valdir", "min_scale", "rect_val"):
            if key in phase:
                raise ConfigError(f"phases: {key} (at epoch {phase['ep']}) is not used by the cifar recipe "
                                  "(its phases read ep, sz, bs, lr)")
    smallest = MIN_PX + c.whiten_kernel - 1
    for ph in schedule.data_phases:
        if not smallest <= ph.size <= 32:
            raise ConfigError(f"phases: the cifar recipe trains at sz {smallest}..32 px (the images scaled down; "
                              f"evaluation at 32), got sz {ph.size} at epoch {ph.start}")
        if c.cutout > ph.size:  # a square larger than the image: every training image blanked, or nearly
            raise ConfigError(f"cifar.cutout must be at most each phase's sz ({ph.size} px at epoch {ph.start}), "
                              f"got {c.cutout}")
    for key in ("eval_batch_size", "whiten_samples", "lookahead_every"):  # cifar.runs: config.RANGES
        if getattr(c, key) < 1:
            raise ConfigError(f"cifar.{key} must be >= 1, got {getattr(c, key)}")
    # a negative lr or weight decay (gradient ascent, weights that grow) would train to chance silently
    for key in ("warmup_runs", "translate", "cutout", "eval_every", "muon_ns_steps", "threads", "whiten_bias_epochs",
                "brightness", "lr", "weight_decay", "muon_lr", "bias_lr_scale", "head_lr_scale", "whiten_bias_lr_scale"):
        if getattr(c, key) < 0:
            raise ConfigError(f"cifar.{key} must be >= 0, got {getattr(c, key)}")
    if not 0 <= c.contrast < 1:  # a scale of 1 - contrast must stay positive
        raise ConfigError(f"cifar.contrast must be in [0, 1), got {c.contrast}")
    if c.half_weights and cfg.train.precision == "fp32":
        raise ConfigError("cifar.half_weights needs train.precision fp16 or bf16 (the dtype of the weights)")
    if c.tta_level not in (0, 1, 2):
        raise ConfigError(f"cifar.tta_level must be 0, 1 or 2, got {c.tta_level}")
    if not 0 <= c.tta_fraction <= 1:
        raise ConfigError(f"cifar.tta_fraction must be in [0, 1], got {c.tta_fraction}")
    if (not 0 <= c.momentum < 1 or not 0 <= c.bn_momentum < 1 or not 0 <= c.muon_momentum < 1
            or not 0 <= c.lookahead_decay <= 1):
        raise ConfigError("cifar.momentum, cifar.bn_momentum and cifar.muon_momentum must be in [0, 1), "
                          "cifar.lookahead_decay in [0, 1]")
    if c.lookahead_pow < 0:  # (step / total) ** pow > 1 early in the run: an EMA weight above 1, extrapolating
        raise ConfigError(f"cifar.lookahead_pow must be >= 0, got {c.lookahead_pow}")
    if c.bn_eps <= 0:  # a channel of zero variance (a dead ReLU) would normalise to 0/0
        raise ConfigError(f"cifar.bn_eps must be > 0, got {c.bn_eps}")
    if not 0 <= c.label_smoothing <= 1:
        raise ConfigError(f"cifar.label_smoothing must be in [0, 1], got {c.label_smoothing}")
    if c.whiten_eps <= 0:  # a patch covariance has eigenvalues near 0: the whitening would divide by ~0
        raise ConfigError(f"cifar.whiten_eps must be > 0, got {c.whiten_eps}")
    if c.translate > 15:
        raise ConfigError(f"cifar.translate must be < 16 px, got {c.translate}")
    return schedule


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------ the driver

class Trainer:
    """Everything built once (data on the device, loaders, model, compiled wrapper), then any number
    of runs, each from fresh weights, a fresh optimizer and its own seed (and its own augmented
    copy of the training images, held only while it runs)."""

    def __init__(self, cfg: Config, schedule: Schedule, device: torch.device, data_dir: str):
        self.cfg, self.schedule, self.device = cfg, schedule, device
        c = cfg.cifar
        on_gpu = device.type == "cuda"
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        else:
            hostmem.keep_large_blocks()
        precision = loop.resolve_precision(device, cfg.train.precision)
        # half_weights (airbench94's way): the net itself in the half dtype, BN in fp32, no autocast
        self.precision = "fp32" if c.half_weights else precision
        # the images in the dtype the first conv computes in: what autocast would cast them to anyway,
        # at half the memory and gather traffic of fp32
        dtype = loop.AMP_DTYPES.get(precision, torch.float32)
        channels_last = cfg.train.channels_last
        t0 = time.perf_counter()
        train_split = cdata.load_split(data_dir, c.dataset, train=True)
        test_split = cdata.load_split(data_dir, c.dataset, train=False)
        mean, std = cdata.STATS[c.dataset]
        x_train, y_train = cdata.to_device(train_split, device)
        x_test, y_test = cdata.to_device(test_split, device)
        self.classes = train_split.classes
        first = schedule.data_phases[0]
        try:
            self.train = cdata.CifarTrainLoader(
                x_train, y_train, self.classes, first.batch_size, mean=mean, std=std, seed=cfg.train.seed,
                dtype=dtype, channels_last=channels_last, flip=c.flip, translate=c.translate,
                pad_mode=c.pad_mode, cutout=c.cutout, brightness=c.brightness, contrast=c.contrast,
                drop_last=c.drop_last, epoch_augment=c.epoch_augment)
        except DataError as e:
            raise ConfigError(f"cifar: {e}") from None
        if c.drop_last:  # else an epoch would train nothing and the run would evaluate its initial weights
            for ph in schedule.data_phases:
                if ph.batch_size > self.train.num_images:
                    raise ConfigError(f"phases: batch size {ph.batch_size} at epoch {ph.start} is more than the "
                                      f"{self.train.num_images} training images (cifar.drop_last drops it whole)")
        self.val = cdata.CifarEvalLoader(x_test, y_test, self.classes, c.eval_batch_size, mean=mean, std=std,
                                         dtype=dtype, channels_last=channels_last)
        self.whiten_images = x_train[:c.whiten_samples]
        self.mean, self.std, self.dtype, self.channels_last = mean, std, dtype, channels_last
        if on_gpu:
            torch.cuda.synchronize(device)
        self.data_seconds = time.perf_counter() - t0

        self.model = cmodel.build(c, len(self.classes)).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if c.half_weights:
            self.model.half_weights(dtype)
        # dynamic=False: one static graph per shape (train batch, eval batch), as the warm-up sees them
        self.forward: nn.Module = (torch.compile(self.model, dynamic=False, mode=c.compile_mode)
                                   if cfg.train.compile else self.model)
        self.extra: dict = {}
        self.evaluate = make_evaluate(self.forward, self.model, device, self.precision, c.tta_level, self.extra,
                                      channels_last, c.tta_fraction)

    def evaluate_at(self, fraction: float) -> loop.EvalResult:
        """The final evaluation of the current weights again, with ``fraction`` as cifar.tta_fraction
        (bench cifar --tta-fractions: the same trained weights scored at each share; untimed)."""
        c = self.cfg.cifar
        return make_evaluate(self.forward, self.model, self.device, self.precision, c.tta_level, {},
                             self.channels_last, fraction)(self.model, self.val)

    @property
    def threads(self) -> int | None:
        """The torch threads a run on the CPU uses (cifar.threads, 0: the process's default); None on a GPU."""
        return (self.cfg.cifar.threads or DEFAULT_THREADS) if self.device.type == "cpu" else None

    def for_epoch(self, epoch: int):
        """The loop's PhaseSource: one resident loader serves every data phase (bs and sz change)."""
        phase = self.schedule.data_phase(epoch)
        self.train.set_batch_size(phase.batch_size)
        self.train.set_size(phase.size)
        self.train.set_epoch(epoch)
        return self.train, self.val

    def run(self, seed: int, logdir: str | None, warmup: bool = False) -> RunResult:
        cfg, c = self.cfg, self.cfg.cifar
        if self.threads:  # per run: bench variants share one process (and a variant may ask for the default)
            torch.set_num_threads(self.threads)
        torch.manual_seed(seed)
        self.model.reset()
        optimizer = make_optimizer(self.model, c, self.schedule.data_phases[0].batch_size, self.device)
        true_labels = self.train.labels
        if warmup:  # airbench: the warm-up's only job is compiling/autotuning, so its labels are noise
            self.train.labels = torch.randint(0, len(self.classes), true_labels.shape, device=self.device,
                                              generator=torch.Generator(device=self.device).manual_seed(seed))
        logger = RunLogger(logdir or ".", enabled=logdir is not None)
        try:
            timer = Timer(self.device)
            timer.start()
            self.train.start_run(seed)
            if c.whiten:
                whiten_x = cdata.normalize(self.whiten_images, self.mean, self.std, torch.float32, False)
                self.model.init_whiten(whiten_x, c.whiten_eps)
            ctx_short = cfg.train.short_epoch_steps if cfg.train.short_epoch else 0
            state = loop.TrainState(self.forward, self.model, optimizer, None, self.schedule)
            hooks = loop.Hooks(loss_fn=loss_fn(c.label_smoothing),
                               after_step=StepHooks(self.model, optimizer, self.schedule, self.train.num_images,
                                                    c.drop_last, c, ctx_short),
                               evaluate=self.evaluate, eval_every=c.eval_every, loss_is_sum=True)
            ctx = loop.RunContext(dist=dist.DistInfo(0, 1, 0, self.device), logger=logger,
                                  num_train=self.train.num_images, drop_last=c.drop_last,
                                  precision=self.precision, seed=seed,
                                  short_epoch_steps=ctx_short,
                                  max_epochs=cfg.train.max_epochs, nonfinite=cfg.train.nonfinite,
                                  print_freq=cfg.train.print_freq, profile=cfg.train.profile,
                                  profile_sync=cfg.train.profile_sync)
            self.extra.clear()
            result = loop.run(state, self, hooks, ctx)
            if state.epoch < self.schedule.num_epochs or result is None:  # stopped early (max_epochs)
                result = self.evaluate(self.model, self.val)
                logger.log_eval(state.epoch - 1, result.top1, result.top5, result.seconds, state.step)
                if not warmup:
                    print(f"note: --max-epochs stopped run (seed {seed}) after {state.epoch} of "
                          f"{self.schedule.num_epochs} epochs: its accuracy is not a whole run's, and the cifar "
                          "recipe keeps no checkpoint to resume from", file=sys.stderr, flush=True)
            seconds = timer.stop()
        finally:
            self.train.labels = true_labels
            # the padded, normalised copy (1.5 GB in fp32) is made again by each run's start_run:
            # between runs it is dead weight, times every variant bench cifar keeps built
            self.train.close()
            logger.close()
        return RunResult(seed, result.top1, self.extra["accuracy_no_tta"], seconds)

    def close(self) -> None:
        self.train.close()
        self.val.close()


def format_summary(results: list[RunResult]) -> list[str]:
    acc = summarize([r.accuracy for r in results])
    plain = summarize([r.accuracy_no_tta for r in results])
    secs = [r.train_seconds for r in results]
    ci = acc["ci95"]
    ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a (1 run)"
    hits = sum(r.accuracy >= THRESHOLD for r in results)
    return [
        f"runs {acc['n']}: accuracy (TTA) mean {acc['mean']:.2f}% std {acc['std']:.2f} min {acc['min']:.2f} "
        f"95% CI of the mean {ci_text}; >= {THRESHOLD:g}%: {hits}/{acc['n']} ({100 * acc['share_ge_threshold']:.0f}%)",
        f"accuracy without TTA mean {plain['mean']:.2f}% std {plain['std']:.2f} min {plain['min']:.2f}",
        f"train time (timed region) median {statistics.median(secs):.3f} s mean {statistics.fmean(secs):.3f} s "
        f"min {min(secs):.3f} s",
    ]


def _write_results(path: str, doc: dict) -> None:
    """The results file (``--results``) replaced whole, the runs so far in it (``cifar.runs`` in its
    config says how many were asked)."""
    out = Path(path)
    try:
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise ConfigError(f"results file {out}: {e.strerror}") from None


def results_json(cfg: Config, results: list[RunResult], extra: dict) -> dict:
    acc = summarize([r.accuracy for r in results])
    plain = summarize([r.accuracy_no_tta for r in results])
    return {
        "runs": [{"seed": r.seed, "accuracy": r.accuracy, "accuracy_no_tta": r.accuracy_no_tta,
                  "train_seconds": r.train_seconds} for r in results],
        "mean_accuracy": acc["mean"], "std_accuracy": acc["std"],
        "median_train_seconds": statistics.median(r.train_seconds for r in results),
        "min_accuracy": acc["min"], "ci95_mean_accuracy": acc["ci95"],
        "share_ge_94": acc["share_ge_threshold"], "mean_accuracy_no_tta": plain["mean"],
        **extra,
        "config": to_dict(cfg),
    }


def check_start(cfg: Config, schedule: Schedule, own_disk: bool = True) -> None:
    """What ``train.py --check`` reads on disk: a writable logdir free for a new run. (The data dir
    may be missing on purpose: the run downloads into it. ``own_disk`` is for the imagenet recipe's
    launchers: a cifar run is one process on this machine.)"""
    check_logdir_writable(cfg.train.logdir)
    check_logdir_free(cfg.train.logdir)
    refuse_reuse(cfg.train.logdir, resumable=False)


def main(cfg: Config) -> int:
    schedule = check_config(cfg)
    c = cfg.cifar
    info = dist.setup(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        if info.world_size > 1:
            raise ConfigError("the cifar recipe runs on one device; launch it without torchrun")
        device = info.device
        cfg.train.precision = loop.resolve_precision(device, cfg.train.precision)  # config.yaml says what ran
        if warning := loop.precision_warning(device, cfg.train.precision):
            print(warning, file=sys.stderr)
        check_logdir_free(cfg.train.logdir)  # first: a second job on a live run's logdir hears it is in use
        data_dir = cdata.ensure_data(cfg.data.dir or DEFAULT_DATA_DIR, c.dataset, download=c.download)
        refuse_reuse(cfg.train.logdir, resumable=False)
        trainer = Trainer(cfg, schedule, device, data_dir)  # data read first: bad data leaves no logdir
        lock = None
        try:
            check_logdir(cfg.train.logdir)
            lock = lock_logdir(cfg.train.logdir)  # held until the runs end: one run writes the logdir
            (Path(cfg.train.logdir) / "config.yaml").write_text(dump(cfg))
            return _runs(cfg, trainer, device)
        except loop.NonFiniteLoss as e:  # a training failure, said in one line as the imagenet recipe does
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            if lock is not None:
                lock.release()
            trainer.close()
    finally:
        dist.teardown()


def _runs(cfg: Config, trainer: Trainer, device: torch.device) -> int:
    c = cfg.cifar
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({os.cpu_count()} cores, {trainer.threads} torch threads)"
    _say(f"cifar: {c.dataset} {trainer.train.num_images} train / {trainer.val.num_images} test images on "
         f"{dev_name}, torch {torch.__version__}, {cfg.train.precision}, compile {cfg.train.compile}; "
         f"data load to device {trainer.data_seconds:.2f} s (not timed)")
    warmup_seconds = 0.0
    for w in range(c.warmup_runs):
        t0 = time.perf_counter()
        trainer.run(cfg.train.seed - 1 - w, None, warmup=True)
        warmup_seconds += time.perf_counter() - t0
    if c.warmup_runs:
        _say(f"warm-up ({c.warmup_runs} run(s) on random labels: compile, autotune): "
             f"{warmup_seconds:.2f} s (not timed)")
    from torch.utils.tensorboard import SummaryWriter
    summary = SummaryWriter(cfg.train.logdir)
    extra = {"warmup_seconds": warmup_seconds, "data_load_seconds": trainer.data_seconds,
             "device": dev_name, "torch": torch.__version__, "host": platform.node(),
             "command": " ".join(sys.argv)}
    results: list[RunResult] = []
    try:
        for r in range(c.runs):
            seed = cfg.train.seed + r
            res = trainer.run(seed, os.path.join(cfg.train.logdir, f"run_{r:03d}"))
            results.append(res)
            _say(f"run {r} seed {seed}: accuracy {res.accuracy:.2f}% (no TTA {res.accuracy_no_tta:.2f}%) "
                 f"time {res.train_seconds:.3f} s")
            summary.add_scalar("cifar/accuracy", res.accuracy, r)
            summary.add_scalar("cifar/accuracy_no_tta", res.accuracy_no_tta, r)
            summary.add_scalar("cifar/train_seconds", res.train_seconds, r)
            if c.results:  # replaced after each run: a job cut off keeps its finished runs
                _write_results(c.results, results_json(cfg, results, extra))
        lines = format_summary(results)
        for line in lines:
            _say(line)
        summary.add_text("cifar/summary", "\n\n".join(lines), 0)
    finally:
        summary.close()
    if c.results:
        _say(f"results: {c.results}")
    return 0
