"""The one small loader protocol every data backend implements, and the per-phase loader manager.

A backend builds, for one data phase, a train loader and a validation loader. Both yield
``(images, labels)`` already on the training device: images floating point, normalised, in the
requested memory format; labels int64. The training loop knows nothing else about data.

Torch is imported where it is used, not here: ``rectval`` (validation batching) is shared with
``bench project``, which projects a run's time on a machine without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

if TYPE_CHECKING:
    import torch

from training.config import ConfigError
from training.phases import DataPhase, loader_phase, val_batch_size


def _torch():
    import torch
    return torch


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LoaderStalled(RuntimeError):
    """The loader's workers sent no batch within ``data.timeout_s``: a failure a restart may cure
    (exit 1), not bad input."""


class DataError(ValueError):
    """Unusable data (missing dir, empty class, mismatched classes, corrupt image); one line."""


def split_dir(root: str, suffix: str, split: str) -> str:
    """DATA + a phase's dir suffix + '/' + split, e.g. /x/imagenet-sz/160/train. The suffix extends
    DATA's own name, so a trailing slash on DATA (/x/imagenet/) is dropped first."""
    return f"{root.rstrip('/') or root}{suffix}/{split}"


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a backend needs to build the loaders of one data phase on one rank."""

    root: str  # DATA; the phase's dirs are split_dir(root, phase.train_dir, 'train') and the like
    phase: DataPhase
    rank: int
    world_size: int
    device: torch.device
    workers: int
    seed: int
    dtype: torch.dtype = field(default_factory=lambda: _torch().float32)  # dtype of the yielded images
    channels_last: bool = False
    bad_images: str = "skip"  # skip | error
    timeout_s: float = 0.0  # torchvision loader: seconds to wait for a batch from the workers (0: for ever)
    synthetic_images: int = 1024
    synthetic_classes: int = 10
    dali_fused_crop: bool = True  # DALI: decode only the crop's region (else decode whole, then crop)
    dali_hw_load: float = 0.65  # DALI on a GPU: share of JPEGs sent to the hardware decoder, if any

    @property
    def train_dir(self) -> str:
        return split_dir(self.root, self.phase.train_dir, "train")

    @property
    def val_dir(self) -> str:
        return split_dir(self.root, self.phase.val_dir, "validation")


class Loader(Protocol):
    """Batches for one rank. ``len`` is the number of batches this rank yields per pass."""

    num_images: int  # images in the whole split, all ranks together
    classes: list[str]
    batch_size: int  # current per-rank batch size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically for ``epoch`` (seeded by spec.seed and epoch)."""

    def set_batch_size(self, batch_size: int) -> None:
        """keep_dl: change only the batch size, keep every other setting."""

    def close(self) -> None: ...


@dataclass
class Backend:
    name: str
    train: Callable[[LoaderSpec], Loader]
    val: Callable[[LoaderSpec], Loader]
    notes: list[str] = field(default_factory=list)  # what runs and why: for one line each at start


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def get_backend(name: str, device: torch.device | None = None, workers: int = 0) -> Backend:
    """Resolve ``auto`` to DALI when it imports and (on a GPU) decodes with this driver, else
    torchvision. ``notes`` say which backend runs, where it decodes and with how many workers (and why
    DALI was passed over); the caller prints them once the loaders are built, so bad data still gets
    a single error line."""
    device = device or _torch().device("cpu")
    notes = []
    if name in ("auto", "dali"):
        try:
            from training.data import dali
            dali.probe(device)
        except (ImportError, RuntimeError) as e:
            if name == "dali":
                raise DataError(f"--loader dali: DALI does not work here ({str(e).splitlines()[0]})") from None
            notes.append(f"loader: DALI not available ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
                         "using torchvision")
            name = "torchvision"
        else:
            where = f"nvJPEG on {device}" if device.type == "cuda" else "CPU decode"
            return Backend("dali", dali.train_loader, dali.val_loader,
                           [f"loader: dali ({where}), {_count(max(1, workers), 'thread')} per process"])
    if name == "torchvision":
        from training.data import imagefolder
        notes.append(f"loader: torchvision (PIL decode on the CPU), {_count(workers, 'worker process', 'es')} "
                     f"per process, uint8 batches normalised on {device}")
        return Backend("torchvision", imagefolder.train_loader, imagefolder.val_loader, notes)
    if name == "synthetic":
        from training.data import synthetic
        return Backend("synthetic", synthetic.train_loader, synthetic.val_loader,
                       [f"loader: synthetic (random images generated on {device})"])
    raise DataError(f"unknown loader {name!r}")


class PhaseLoaders:
    """Hands the loop the right loaders for each epoch: rebuilds them when a data phase starts,
    only changes the batch size for a keep_dl phase, and closes old ones so no memory leaks.

    The validation loader is built from a spec whose ``phase.batch_size`` is the validation batch
    (``val_batch_size`` images, or imagenet18's rule from the phase's size and training batch when
    0); backends read their batch, and rect_val its chunk, from there and need no other knob. A
    keep_dl phase keeps the validation loader, as imagenet18's did."""

    def __init__(self, backend: Backend, base: LoaderSpec, phases: tuple[DataPhase, ...],
                 val_batch_size: int = 0):
        if val_batch_size < 0:
            raise ConfigError(f"data.val_batch_size must be 0 (imagenet18's rule) or a number of images, "
                              f"got {val_batch_size}")
        self.backend = backend
        self.base = base
        self.phases = phases
        self.val_batch_size = val_batch_size
        self.active: DataPhase | None = None  # the phase whose loaders were built
        self.train: Loader | None = None
        self.val: Loader | None = None
        # called before a phase's loaders are built, whose workers fork (the recipe: the checkpoint write's wait)
        self.before_build: Callable[[], None] | None = None

    def spec_for(self, epoch: int) -> LoaderSpec:
        """The spec of the loaders that serve ``epoch`` (its data copy: ``.train_dir``)."""
        return replace(self.base, phase=loader_phase(self.phases, epoch))

    def for_epoch(self, epoch: int) -> tuple[Loader, Loader]:
        phase = [p for p in self.phases if p.start <= epoch][-1]
        spec = self.spec_for(epoch)
        if self.active is None or spec.phase != self.active:
            if self.before_build is not None:
                self.before_build()
            self.close()
            self.train, self.val = self.backend.train(spec), self.backend.val(self.val_spec(spec))
            self.active = spec.phase
        if self.train.batch_size != phase.batch_size:
            self.train.set_batch_size(phase.batch_size)
        self.train.set_epoch(epoch)
        return self.train, self.val

    def val_spec(self, spec: LoaderSpec) -> LoaderSpec:
        """``spec`` with its phase's batch size replaced by the validation batch."""
        bs = val_batch_size(spec.phase.size, spec.phase.batch_size, self.val_batch_size)
        return replace(spec, phase=replace(spec.phase, batch_size=bs))

    def close(self) -> None:
        for loader in (self.train, self.val):
            if loader is not None:
                loader.close()
        self.train = self.val = None
        self.active = None
