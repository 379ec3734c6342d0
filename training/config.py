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
    init_bn0: bool = False  # zero gamma of each residual block's last BN (Goyal et al. 2017)
    num_classes: int = 0  # 0: the number of class folders in the data


@dataclass
class OptimConfig:
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # per-step L2 coefficient, PyTorch SGD convention
    no_bn_wd: bool = False  # no weight decay on BatchNorm weights and biases
    label_smoothing: float = 0.0


@dataclass
class DataConfig:
    dir: str = ""  # DATA: holds <trndir>/train and <valdir>/validation
    loader: str = "auto"  # auto | dali | torchvision | synthetic
    workers: int = 8  # loader worker processes (threads for DALI) per rank
    bad_images: str = "skip"  # skip | error
    synthetic_images: int = 1024  # images per epoch for --loader synthetic
    synthetic_classes: int = 10


@dataclass
class TrainConfig:
    logdir: str = "runs/default"
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast; fp16 adds a grad scaler)
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False  # torch.compile the model
    seed: int = 0
    resume: str = ""  # '' | auto | path to a checkpoint
    evaluate: bool = False  # evaluate the (resumed) model and exit
    short_epoch: bool = False  # a few steps per epoch, for smoke tests
    short_epoch_steps: int = 4
    keep_checkpoints: int = 3  # how many epoch checkpoints to keep
    nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does
    dist_timeout_s: int = 1800  # collective timeout before a hung rank fails the group, seconds
    print_freq: int = 50  # steps between progress lines (and host syncs for the loss)
    profile: bool = False  # per-stage time table each epoch
    max_epochs: int = 0  # >0: stop after this many epochs (testing, resume drills)


@dataclass
class CifarConfig:
    """The single-GPU CIFAR recipe's knobs; each one switchable for ablations."""

    dataset: str = "cifar10"  # cifar10 | cifar100
    runs: int = 1
    results: str = ""  # JSON results file


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
