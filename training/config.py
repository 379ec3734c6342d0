"""Typed run configuration: dataclass sections, YAML files, strict ``section.key=value`` overrides.

An unknown key or a value of the wrong type is an error (ConfigError, one line), as in nanoGPT's
configurator: a typo must never silently train the wrong thing. The resolved config is a plain dict
(``to_dict``) saved beside every run and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import math
import os
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from training import bounded

MAX_FILE_CHARS = 1 << 20  # a config file; the shipped ones are ~2 KB


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
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 1e-4  # per-step L2 coefficient, PyTorch SGD convention
    no_bn_wd: bool = False  # no weight decay on BatchNorm weights and biases, nothing else (imagenet18)
    no_bias_wd: bool = False  # nor on any module's bias (fc.bias); both: every 1-d tensor of a ResNet
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0..1


@dataclass
class DataConfig:
    dir: str = ""  # DATA: holds <trndir>/train and <valdir>/validation
    loader: str = "auto"  # auto | dali | torchvision | synthetic
    workers: int = 8  # loader worker processes (threads for DALI) per rank
    # per-rank validation batch, images, also rect_val's aspect-ratio chunk; 0: imagenet18's rule,
    # from the phase's bs and sz: max(bs, 512) at 128 px, max(bs, 256) at 224 px, else max(bs, 128)
    val_batch_size: int = 0
    bad_images: str = "skip"  # skip | error
    # seconds the torchvision loader waits for a batch from its workers before it fails the run (a
    # worker stuck, e.g. on a file system that stopped answering); 0: wait for ever
    timeout_s: int = 600
    synthetic_images: int = 1024  # images per epoch for --loader synthetic
    synthetic_classes: int = 10  # classes for --loader synthetic
    dali_fused_crop: bool = True  # DALI: decode only the crop's region (ROI); false: whole image, then crop
    dali_hw_load: float = 0.65  # DALI on a GPU: share of JPEGs for the hardware decoder (A100/H100 class)


@dataclass
class TrainConfig:
    logdir: str = "runs/default"  # events, train.log, config.yaml, checkpoints/; a fresh run needs its own
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast; fp16 on imagenet: + grad scaler, cifar sums its loss instead) | auto (bf16 where native, else fp32)
    channels_last: bool = True  # NHWC memory format (imagenet recipe: on CUDA only; cifar recipe: on every device)
    compile: bool = False  # torch.compile the model (imagenet recipe: on CUDA only, static shapes)
    seed: int = 0  # weights, data order and augmentation; 0..2**31-1
    resume: str = ""  # '' (a fresh run) | auto (the logdir's newest good checkpoint) | a checkpoint path
    evaluate: bool = False  # evaluate the checkpoint --resume names, write nothing, exit
    short_epoch: bool = False  # a few steps per epoch, for smoke tests
    short_epoch_steps: int = 4  # steps per epoch with short_epoch
    keep_checkpoints: int = 3  # how many epoch checkpoints to keep; 0: all
    # A checkpoint is written (in the background) after every checkpoint_every-th epoch, once at least
    # checkpoint_min_interval_s have passed since the previous one began; the run's last epoch and a
    # SIGTERM always get one. A restart redoes the epochs since the newest written checkpoint.
    checkpoint_every: int = 1  # epochs between checkpoints (>= 1)
    checkpoint_min_interval_s: float = 0.0  # seconds, at least, between checkpoints; 0: no minimum
    nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does
    dist_timeout_s: int = 1800  # collective timeout before a hung rank fails the group, seconds
    print_freq: int = 50  # steps between progress lines (and host syncs for the loss)
    profile: bool = False  # per-stage time table each epoch
    # with profile: a device sync at each stage boundary, so each stage holds its own GPU time; false: host
    # times, the device synced only at progress lines (print_freq, the epoch's last step) as in training, so
    # the host runs ahead and the epoch's time is an unprofiled one's; 'data wait' is then the host's
    profile_sync: bool = True
    profile_trace: str = ""  # dir: torch.profiler trace of training steps 5-8, for TensorBoard (imagenet recipe); '' off
    max_epochs: int = 0  # >0: train at most this many more epochs in this invocation, then stop; 0: to the end


@dataclass
class CifarConfig:
    """The single-GPU CIFAR recipe's knobs; each one switchable for ablations."""

    dataset: str = "cifar10"  # cifar10 | cifar100
    runs: int = 1  # independent runs (seeds train.seed, train.seed + 1, ...)
    results: str = ""  # JSON results file, rewritten after each run (a job cut off keeps its finished runs)
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
    whiten_bias_epochs: float = 3.0  # epochs the whitening bias trains before it is frozen (0: never)
    dirac: bool = True  # identity init of the first in_channels filters of each 3x3 conv
    bn_frozen_weight: bool = True  # BatchNorm scale fixed at 1 (only the bias trains)
    bn_momentum: float = 0.6  # weight of the old running stats per step (PyTorch's momentum = 1 - this)
    bn_eps: float = 1e-12  # BatchNorm epsilon
    head_scale: float = 0.1111111  # logits multiplier (airbench94: 1/9)
    head_unit_std: bool = False  # airbench94_muon's head: unit-std init, logits also divided by widths[2]
    half_weights: bool = False  # the net in train.precision's dtype, BN in fp32, no autocast (airbench94)
    pool: str = "native"  # native (max_pool2d) | reshape (amax over a reshaped view, masked-copy backward)
    # optimisation; the phases' lr is a multiplier (peak 1.0) of the lrs below
    optimizer: str = "sgd"  # sgd (Nesterov SGD for all) | muon (Muon for conv filters, SGD for the rest)
    lr: float = 11.5  # SGD lr, decoupled: per 1024 examples, normalised by 1 + 1/(1 - momentum)
    bias_lr_scale: float = 64.0  # x lr for BatchNorm biases (not their weight decay)
    whiten_bias_lr_scale: float = 64.0  # x lr for the whitening bias (airbench94: 1, its 64x is for BN only)
    head_lr_scale: float = 1.0  # x lr for the linear head
    momentum: float = 0.85  # SGD momentum (Nesterov)
    weight_decay: float = 0.0153  # per 1024 examples, decoupled from lr (decay per step = wd*bs/1024/(1+1/(1-m)) * lr multiplier)
    label_smoothing: float = 0.2  # cross-entropy label smoothing, 0..1
    muon_lr: float = 0.24  # Muon step, in units of the orthogonalised update (spectral norm ~1)
    muon_momentum: float = 0.6  # Muon's Nesterov momentum
    muon_ns_steps: int = 3  # Newton-Schulz iterations
    muon_batched: bool = False  # one zero-padded batched Newton-Schulz iteration for all layers (Hiverge)
    lookahead: bool = True  # airbench94's lookahead-EMA of the weights
    lookahead_start_epoch: float = 3.0  # first epoch of the EMA
    lookahead_every: int = 5  # steps between EMA updates (each also copies the EMA into the weights)
    lookahead_decay: float = 0.95  # per-step EMA decay, raised to the number of steps between updates
    lookahead_pow: float = 3.0  # decay x (step / total steps) ** pow: weak early, strong at the end
    # the weights set to the EMA at every epoch's end (dropping the steps since its last update); false:
    # only at the run's end, as airbench94
    lookahead_epoch_end: bool = True
    # data and augmentation (training/data/cifar.py)
    flip: str = "alternate"  # alternate | random | none
    translate: int = 2  # max random shift, px
    pad_mode: str = "reflect"  # reflect | zeros: the padding the shifted-in border comes from
    cutout: int = 0  # side of a zeroed square, px; 0: off
    brightness: float = 0.0  # per-image shift of the normalised pixels, uniform in +-this (units of the std); 0: off
    contrast: float = 0.0  # per-image scale of the normalised pixels, uniform in 1 +- this; 0: off
    drop_last: bool = True  # every step the same batch shape
    epoch_augment: bool = False  # augment + shuffle the whole epoch at once; batches are slices of it
    eval_batch_size: int = 2000  # images per evaluation batch
    tta_level: int = 2  # 0: plain; 1: + mirror; 2: + mirror x 1-px translations (6 views)
    tta_fraction: float = 1.0  # share of the test images that get the TTA views: the least confident by their plain logits; 1: all
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
    "train.precision": ("fp32", "fp16", "bf16", "auto"),
    "train.nonfinite": ("stop", "skip"),
    "cifar.dataset": ("cifar10", "cifar100"),
    "cifar.act": ("gelu", "relu"),
    "cifar.pool": ("native", "reshape"),
    "cifar.optimizer": ("sgd", "muon"),
    "cifar.flip": ("alternate", "random", "none"),
    "cifar.pad_mode": ("reflect", "zeros"),
    "cifar.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}
# Inclusive ranges of numeric keys; anything outside would crash mid-run or do nothing quietly.
# (The cifar.* keys are checked by the cifar recipe, which knows how they combine.)
RANGES = {
    "model.num_classes": (0, 100_000),  # ImageNet-21k has 21,841; 1e12 ran out of memory building fc
    "data.val_batch_size": (0, 65536),  # per process, as a phase's bs (phases.MAX_BATCH)
    "data.workers": (0, None),
    "data.timeout_s": (0, 7 * 24 * 3600),
    "data.synthetic_images": (1, None),
    "data.synthetic_classes": (1, None),
    "train.seed": (0, 2**31 - 1),
    "train.short_epoch_steps": (1, None),
    "train.keep_checkpoints": (0, None),
    "train.dist_timeout_s": (1, 7 * 24 * 3600),
    "train.print_freq": (1, None),
    "train.max_epochs": (0, None),
    "cifar.runs": (1, None),  # here too, so that --runs 0 is refused naming the flag
    "optim.momentum": (0, 1),
    "optim.weight_decay": (0, None),
    "optim.label_smoothing": (0, 1),
    "data.dali_hw_load": (0, 1),
}

# Paths that must name something: an empty logdir would scatter a run over the current directory
# and runs/DATE_HOST (SummaryWriter's default).
NONEMPTY = {"train.logdir"}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def refuse_unread(cfg: Config, recipe: str, names: tuple[str, ...], hint: str, keep: tuple[str, ...] = ()) -> None:
    """ConfigError for the first key of the sections ``names`` (but the ``keep`` keys, as 'data.dir') that
    differs from its default: ``recipe`` does not read those sections, so the setting would be ignored."""
    classes = sections()
    for section in names:
        default = classes[section]()
        for key, value in to_dict(getattr(cfg, section)).items():
            if f"{section}.{key}" not in keep and value != getattr(default, key):
                raise ConfigError(f"{section}.{key} is not used by the {recipe} recipe ({hint})")


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
        why = " (YAML reads yes/no/on/off as true/false)" if isinstance(value, bool) else ""
        raise ConfigError(f"config key {name!r}: expected {want}, got {value!r}{why}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"config key {name!r}: {value!r} is not one of {', '.join(CHOICES[name])}")
    if origin is float:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            value = math.inf
        if not math.isfinite(value):  # NaN passes every range check below
            raise ConfigError(f"config key {name!r}: must be a finite number, got {value!r}")
    if name in NONEMPTY and not value:
        raise ConfigError(f"config key {name!r}: must not be empty")
    if name in NONEMPTY and not _utf8(value):  # the event files' writer needs UTF-8 names
        raise ConfigError(f"config key {name!r}: not valid UTF-8: {os.fsencode(value)!r}")
    low, high = RANGES.get(name, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        want = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"config key {name!r}: must be {want}, got {value!r}")
    return value


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: a name of undecodable bytes holds surrogates (surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_yaml(path: str) -> dict:
    try:
        data = bounded.load_yaml(bounded.read_text(path, MAX_FILE_CHARS), MAX_FILE_CHARS)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except bounded.LimitError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    except bounded.TextError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def parse_value(raw: str, name: str = "value") -> Any:
    """A command-line value read as YAML ('5e-5' -> 5e-05, 'true' -> True); unparsable stays text.
    A YAML comment in it is refused: YAML would drop it silently ('5 #3' -> 5)."""
    try:
        value = bounded.load_yaml(raw, MAX_FILE_CHARS) if raw.strip() else ""
    except bounded.LimitError as e:
        raise ConfigError(f"{name}: {e}") from None
    except bounded.TextError:
        return raw
    if (at := bounded.comment_at(raw)) is not None:
        raise ConfigError(f"{name}: {raw!r}: YAML would read {raw[at:]!r} as a comment and drop it; "
                          "remove it, or quote text that holds a '#'")
    return value


def is_text(path: list[str]) -> bool:
    """Whether the dotted config key holds text ('train.logdir', 'recipe'); False for an unknown key."""
    obj: Any = Config()
    for part in path:
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, part)
    return isinstance(obj, str)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.weight_decay=5e-5' -> (['optim', 'weight_decay'], 5e-05). A text setting takes the value
    as typed, as its --flag does (as YAML 'train.logdir=runs/exp #3' lost ' #3', a comment), but for
    blanks around it and the quotes of a YAML string ('train.logdir="runs/x"' from a list of args
    that no shell unquoted), which are not part of a path or a name."""
    key, _, raw = text.partition("=")
    path = key.strip().split(".")
    if not is_text(path):
        return path, parse_value(raw, key.strip())
    raw = raw.strip()
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    return path, parse_value(raw, key.strip()) if quoted else raw


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
    return bounded.dump_yaml(to_dict(cfg), sort_keys=False)


def sections() -> dict[str, type]:
    """Section name -> its dataclass (model -> ModelConfig, ...)."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def comments() -> dict[str, str]:
    """'section.key' (or a top-level key) -> the comment on its line in this file: the meaning,
    unit and choices that --help and --print-config show. Read from the source, so a key added
    with a comment is documented everywhere at once."""
    out = _line_comments(Config)
    for name, cls in sections().items():
        out.update({f"{name}.{key}": text for key, text in _line_comments(cls).items()})
    return out


def _line_comments(cls: type) -> dict[str, str]:
    """A field's comment: the one at the end of its line, else the comment lines right above it."""
    names = {f.name for f in dataclasses.fields(cls)}
    code: dict[int, list[str]] = {}
    notes: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(inspect.getsource(cls))).readline):
        if tok.type == tokenize.COMMENT:
            notes[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type in (tokenize.NAME, tokenize.OP):
            code.setdefault(tok.start[0], []).append(tok.string)
    out = {}
    for line, t in code.items():
        if len(t) > 1 and t[0] in names and t[1] == ":":  # a field's line: `name: type = default`
            above, prev = [], line - 1
            while prev in notes and prev not in code:  # a comment-only line
                above.insert(0, notes[prev])
                prev -= 1
            if line in notes or above:
                out[t[0]] = notes.get(line) or " ".join(above)
    return out


def yaml_text(value: Any) -> str:
    """A value as one line of YAML ('' for an empty string, [64, 256] for a list)."""
    text = bounded.dump_yaml(value, default_flow_style=True, width=float("inf"), sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def annotated(cfg: Config) -> str:
    """The resolved config as YAML, every key with its comment (``--print-config``); it loads back
    as a config file."""
    notes = comments()

    def line(indent: str, key: str, value: Any, note: str | None) -> str:
        return f"{indent}{key}: {yaml_text(value)}" + (f"  # {note}" if note else "")

    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.append(f"{f.name}:")
            out += [line("  ", g.name, getattr(value, g.name), notes.get(f"{f.name}.{g.name}"))
                    for g in dataclasses.fields(value)]
        elif f.name == "phases" and value:
            out.append(f"phases:  # {notes['phases']}")
            out += [f"  - {yaml_text(p)}" for p in value]
        else:
            out.append(line("", f.name, value, notes.get(f.name)))
    return "\n".join(out) + "\n"
