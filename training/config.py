"""Typed run configuration: dataclass sections, YAML files, strict ``section.key=value`` overrides.

An unknown key or a value of the wrong type is an error (ConfigError, one line), as in nanoGPT's
configurator: a typo must never silently train the wrong thing. The resolved config is a plain dict
(``to_dict``) saved beside every run and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad configuration; the message is one line naming the key."""


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # any torchvision classification model name
    # zero gamma of each residual block's last BN (Goyal et al. 2017) and, as imagenet18, fc.weight ~ N(0, 0.01)
    init_bn0: bool = False
    num_classes: int = 0  # 0: the number of class folders in the data


@dataclass
class OptimConfig:
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # per-step L2 coefficient, PyTorch SGD convention
    no_bn_wd: bool = False  # no weight decay on BatchNorm weights and biases, nothing else (imagenet18)
    no_bias_wd: bool = False  # nor on any module's bias (fc.bias); both: every 1-d tensor of a ResNet
    label_smoothing: float = 0.0


@dataclass
class DataConfig:
    dir: str = ""  # DATA: holds <trndir>/train and <valdir>/validation
    loader: str = "auto"  # auto | dali | torchvision | synthetic
    workers: int = 8  # loader worker processes (threads for DALI) per rank
    # per-rank validation batch, images, also rect_val's aspect-ratio chunk; 0: imagenet18's rule,
    # from the phase's bs and sz: max(bs, 512) at 128 px, max(bs, 256) at 224 px, else max(bs, 128)
    val_batch_size: int = 0
    bad_images: str = "skip"  # skip | error
    synthetic_images: int = 1024  # images per epoch for --loader synthetic
    synthetic_classes: int = 10
    dali_fused_crop: bool = True  # DALI: decode only the crop's region (ROI); false: whole image, then crop
    dali_hw_load: float = 0.65  # DALI on a GPU: share of JPEGs for the hardware decoder (A100/H100 class)


@dataclass
class TrainConfig:
    logdir: str = "runs/default"
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast; fp16 adds a grad scaler)
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False  # torch.compile the model (imagenet recipe: on CUDA only, static shapes)
    seed: int = 0
    resume: str = ""  # '' | auto | path to a checkpoint
    evaluate: bool = False  # evaluate the (resumed) model and exit
    short_epoch: bool = False  # a few steps per epoch, for smoke tests
    short_epoch_steps: int = 4
    keep_checkpoints: int = 3  # how many epoch checkpoints to keep
    # A checkpoint is written (in the background) after every checkpoint_every-th epoch, once at least
    # checkpoint_min_interval_s have passed since the previous one began; the run's last epoch and a
    # SIGTERM always get one. A restart redoes the epochs since the newest written checkpoint.
    checkpoint_every: int = 1  # epochs between checkpoints (>= 1)
    checkpoint_min_interval_s: float = 0.0  # seconds, at least, between checkpoints; 0: no minimum
    nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does
    dist_timeout_s: int = 1800  # collective timeout before a hung rank fails the group, seconds
    print_freq: int = 50  # steps between progress lines (and host syncs for the loss)
    profile: bool = False  # per-stage time table each epoch
    profile_trace: str = ""  # dir: torch.profiler trace of training steps 5-8, for TensorBoard; '' off
    max_epochs: int = 0  # >0: stop after this many epochs (testing, resume drills)


@dataclass
class CifarConfig:
    """The single-GPU CIFAR recipe's knobs; each one switchable for ablations."""

    dataset: str = "cifar10"  # cifar10 | cifar100
    runs: int = 1  # independent runs (seeds train.seed, train.seed + 1, ...)
    results: str = ""  # JSON results file
    download: bool = True  # try torchvision's download when the data dir holds no data set
    warmup_runs: int = 1  # untimed runs on random labels first (compile, cudnn autotune); 0: none
    compile_mode: str = "default"  # torch.compile mode with train.compile: default | reduce-overhead | max-autotune
    threads: int = 0  # CPU only: torch threads (0: torch's default; 1 is faster on a CPU shared with other jobs)
    # network (training/models/cifar.py)
    widths: list = field(default_factory=lambda: [64, 256, 256])  # channels of the 3 conv groups
    act: str = "gelu"  # gelu | relu
    whiten: bool = True  # first conv = patch whitening from the data, frozen (else a trained conv)
    whiten_kernel: int = 2  # whitening patch side, px (24 output channels at 2)
    whiten_eps: float = 5e-4  # added to patch-covariance eigenvalues, in (normalised pixel)^2
    whiten_samples: int = 5000  # training images the patch covariance is estimated from
    whiten_bias_epochs: float = 3  # epochs the whitening bias trains before it is frozen
    dirac: bool = True  # identity init of the first in_channels filters of each 3x3 conv
    bn_frozen_weight: bool = True  # BatchNorm scale fixed at 1 (only the bias trains)
    bn_momentum: float = 0.6  # weight of the old running stats per step (PyTorch's momentum = 1 - this)
    bn_eps: float = 1e-12
    head_scale: float = 0.1111111  # logits multiplier (1/9)
    head_unit_std: bool = False  # head weight init rescaled to unit std (with Muon, head_scale = 1/width)
    half_weights: bool = False  # the net in train.precision's dtype, BN in fp32, no autocast (airbench94)
    pool: str = "native"  # native (max_pool2d) | reshape (amax over a reshaped view, masked-copy backward)
    # optimisation; the phases' lr is a multiplier (peak 1.0) of the lrs below
    optimizer: str = "sgd"  # sgd (Nesterov SGD for all) | muon (Muon for conv filters, SGD for the rest)
    lr: float = 11.5  # SGD lr, decoupled: per 1024 examples, normalised by 1 + 1/(1 - momentum)
    bias_lr_scale: float = 64.0  # x lr for BatchNorm and whitening biases (not their weight decay)
    head_lr_scale: float = 1.0  # x lr for the linear head
    momentum: float = 0.85  # SGD momentum (Nesterov)
    weight_decay: float = 0.0153  # per 1024 examples, decoupled from lr (decay per step = wd*bs/1024/(1+1/(1-m)) * lr multiplier)
    label_smoothing: float = 0.2
    muon_lr: float = 0.24  # Muon step, in units of the orthogonalised update (spectral norm ~1)
    muon_momentum: float = 0.6  # Muon's Nesterov momentum
    muon_ns_steps: int = 3  # Newton-Schulz iterations
    muon_batched: bool = False  # one zero-padded batched Newton-Schulz iteration for all layers (Hiverge)
    lookahead: bool = True  # airbench94's lookahead-EMA of the weights
    lookahead_start_epoch: float = 3  # first epoch of the EMA
    lookahead_every: int = 5  # steps between EMA updates (each also copies the EMA into the weights)
    lookahead_decay: float = 0.95  # per-step EMA decay, raised to the number of steps between updates
    lookahead_pow: float = 3.0  # decay x (step / total steps) ** pow: weak early, strong at the end
    # data and augmentation (training/data/cifar.py)
    flip: str = "alternate"  # alternate | random | none
    translate: int = 2  # max random shift, px
    pad_mode: str = "reflect"  # reflect | zeros: the padding the shifted-in border comes from
    cutout: int = 0  # side of a zeroed square, px; 0: off
    drop_last: bool = True  # every step the same batch shape
    epoch_augment: bool = False  # augment + shuffle the whole epoch at once; batches are slices of it
    eval_batch_size: int = 2000
    tta_level: int = 2  # 0: plain; 1: + mirror; 2: + mirror x 1-px translations (6 views)
    eval_every: int = 0  # epochs between evaluations (inside the timed run); 0: only the final TTA one


@dataclass
class Config:
    recipe: str = "imagenet"  # imagenet | cifar
    phases: list = field(default_factory=list)  # the phase DSL (see training/phases.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cifar: CifarConfig = field(default_factory=CifarConfig)


CHOICES = {
    "recipe": ("imagenet", "cifar"),
    "data.loader": ("auto", "dali", "torchvision", "synthetic"),
    "data.bad_images": ("skip", "error"),
    "train.device": ("auto", "cuda", "cpu"),
    "train.precision": ("fp32", "fp16", "bf16"),
    "train.nonfinite": ("stop", "skip"),
    "cifar.dataset": ("cifar10", "cifar100"),
    "cifar.act": ("gelu", "relu"),
    "cifar.pool": ("native", "reshape"),
    "cifar.optimizer": ("sgd", "muon"),
    "cifar.flip": ("alternate", "random", "none"),
    "cifar.pad_mode": ("reflect", "zeros"),
    "cifar.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = Config, prefix: str = "") -> Any:
    """Build a dataclass from a (possibly partial) dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    obj = cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + str(key)!r} (known: {', '.join(sorted(names))})")
        setattr(obj, key, _coerce(prefix + key, value, hints[key], getattr(obj, key)))
    return obj


def _coerce(name: str, value: Any, hint: Any, current: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        base = dataclasses.asdict(current)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {value!r}")
        return from_dict({**base, **value}, hint, name + ".")
    origin = typing.get_origin(hint) or hint
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
    }.get(origin if not isinstance(origin, types.UnionType) else None)
    if ok is None or not ok(value):
        want = getattr(origin, "__name__", str(hint))
        raise ConfigError(f"config key {name!r}: expected {want}, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"config key {name!r}: {value!r} is not one of {', '.join(CHOICES[name])}")
    return float(value) if origin is float else value


def load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def parse_value(raw: str) -> Any:
    """A command-line value read as YAML ('5e-5' -> 5e-05, 'true' -> True); unparsable stays text."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.weight_decay=5e-5' -> (['optim', 'weight_decay'], 5e-05)."""
    key, _, raw = text.partition("=")
    return key.strip().split("."), parse_value(raw)


def merge(data: dict, path: list[str], value: Any) -> dict:
    """Set a dotted path in a nested dict (copying), creating sections as needed."""
    out = dict(data)
    if len(path) == 1:
        out[path[0]] = value
    else:
        sub = out.get(path[0], {})
        out[path[0]] = merge(sub if isinstance(sub, dict) else {}, path[1:], value)
    return out


def build(files: list[str], overrides: list[tuple[list[str], Any]]) -> Config:
    """Config from defaults, then each YAML file, then each override, validated as a whole."""
    data: dict = {}
    for path in files:
        for key, value in load_yaml(path).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                value = {**data[key], **value}
            data[key] = value
    for path, value in overrides:
        data = merge(data, path, value)
    return from_dict(data)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
