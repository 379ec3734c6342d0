"""The torchvision backend: ImageFolder trees (indexed by tree.py) through DataLoader workers.

Train augmentation randomness is a pure function of (seed, epoch, sample index): the batch sampler
runs in the main process and sends (index, epoch) keys to the workers, which seed a private RNG
from them. Worker count and worker persistence cannot change a batch, and a run resumed at epoch e
yields what the uninterrupted run did.
"""
from __future__ import annotations

import math
import os
import random
import signal
from functools import partial
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from training.data import IMAGENET_MEAN, IMAGENET_STD, DataError, LoaderSpec, LoaderStalled
from training.data.rectval import ValBatch, val_batches, val_geometry
from training.data.tree import (TreeIndex, log, shard_batches, train_batches, train_index,
                                val_index)
from training.headers import DECODE_ERRORS
from training.orphans import end_with_parent

RRC_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range


def rrc_window(rng: random.Random, width: int, height: int, min_scale: float) -> tuple[int, int, int, int]:
    """RandomResizedCrop's (left, top, w, h): area fraction in [min_scale, 1], aspect ratio in
    [3/4, 4/3] log-uniform, 10 tries, then the largest centred crop of a clamped ratio."""
    area = width * height
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        w, h = width, round(width / RRC_RATIO[0])
    elif ratio > RRC_RATIO[1]:
        w, h = round(height * RRC_RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_crop(seed: int, epoch: int, index: int, width: int, height: int,
               min_scale: float) -> tuple[tuple[int, int, int, int], bool]:
    """The training crop window (left, top, w, h) and horizontal flip of one sample: a pure function
    of (seed, epoch, index), shared by every backend, so a batch is the same whoever decodes it."""
    rng = random.Random(f"{seed}/{epoch}/{index}")  # str seeds hash with sha512: stable across runs
    window = rrc_window(rng, width, height, min_scale)
    return window, rng.random() < 0.5


GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how PIL opens 16-bit grey (PNG, TIFF, PGM)


def _rgb(im: Image.Image) -> Image.Image:
    if im.mode in GREY16_MODES:
        # convert("RGB") clips 16-bit values at 255 (near white); scale to 8 bits as DALI does: v / 257.
        im = Image.fromarray(np.rint(np.clip(np.asarray(im), 0, 65535) / 257).astype(np.uint8))
    return im if im.mode == "RGB" else im.convert("RGB")


def _draft(im: Image.Image, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """JPEG DCT scaling: decode at 1/s (s = 2, 4, 8) while still >= ``size`` px per side. Returns where
    the whole image lies in the decoded one, (0, 0, W / s, H / s): the decode is ceil(W / s) px wide,
    its last column only partly inside the image, so its size is not the exact scale."""
    whole = (0.0, 0.0, float(im.size[0]), float(im.size[1]))
    drafted = im.draft("RGB", size)  # None where nothing was drafted (not a JPEG)
    return drafted[1] if drafted else whole


class _Samples(Dataset):
    """Decodes one image per key. A key carries all per-call state ((index, epoch) to train,
    (index, h, w) to validate), so persistent workers never hold a stale epoch or crop size."""

    def __init__(self, index: TreeIndex, size: int, min_scale: float, seed: int, train: bool):
        # numpy arrays, not lists of str: forked workers reading Python objects touch their
        # refcounts and copy the pages; 1.28M paths would be duplicated into every worker.
        self.paths = np.array([os.fsencode(p) for p in index.paths])
        self.labels = np.array(index.labels, dtype=np.int64)
        self.size, self.min_scale, self.seed, self.train = size, min_scale, seed, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, ...]) -> tuple[np.ndarray | None, int, str | None]:
        i = key[0]
        path = os.fsdecode(self.paths[i])
        try:
            with Image.open(path) as im:
                img = self._train(im, i, key[1]) if self.train else self._val(im, key[1], key[2])
        except DECODE_ERRORS as e:  # truncated or corrupt past the header: drop, report in main
            return None, int(self.labels[i]), f"{path}: {type(e).__name__}: {e}"
        return np.asarray(img), int(self.labels[i]), None

    def _train(self, im: Image.Image, i: int, epoch: int) -> Image.Image:
        width, height = im.size
        (left, top, w, h), flip = train_crop(self.seed, epoch, i, width, height, self.min_scale)
        # decoded at 1/2..1/8 only while the crop still covers >= size px per side
        whole = _draft(im, (math.ceil(width * self.size / w), math.ceil(height * self.size / h)))
        sx, sy = whole[2] / width, whole[3] / height
        img = _rgb(im).resize((self.size, self.size), Image.BILINEAR,
                              box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img

    def _val(self, im: Image.Image, h: int, w: int) -> Image.Image:
        geo = val_geometry(*im.size, self.size, (h, w))
        # Decoded in full, not drafted as in _train: imagenet18 and torchvision's reference validate on
        # full decodes, as DALI does, so a reported accuracy does not depend on the loader (a draft moved
        # each image by ~1.2-4/255). It costs 1.35-1.7x the drafted image's time, only on images a draft
        # would shrink, and validation is ~4% of an ImageNet epoch's images (docs/BENCHMARKS.md).
        img = _rgb(im).resize((geo.resize_hw[1], geo.resize_hw[0]), Image.BILINEAR)
        top, left = geo.anchor_yx
        return img.crop((left, top, left + w, top + h))  # PIL fills outside the image with black


def _collate(batch: list[tuple[np.ndarray | None, int, str | None]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 NHWC batch (no float on the CPU), int64 labels, and the files that failed to decode."""
    good = [(img, label) for img, label, bad in batch if bad is None]
    bad = [b for _, _, b in batch if b is not None]
    if not good:
        return torch.empty(0, 0, 0, 3, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    return (torch.from_numpy(np.stack([g[0] for g in good])),
            torch.tensor([g[1] for g in good], dtype=torch.int64), bad)


class _TrainBatches:
    """Batch sampler (main process): this rank's shard of the current epoch as (index, epoch) keys."""

    def __init__(self, n: int, batch_size: int, spec: LoaderSpec):
        self.n, self.batch_size, self.spec, self.epoch = n, batch_size, spec, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.spec
        for batch in shard_batches(self.n, self.batch_size, s.seed, self.epoch, s.rank, s.world_size):
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return train_batches(self.n, self.batch_size, self.spec.world_size)


class _ValBatches:
    """Batch sampler (main process): this rank's validation batches as (index, crop h, crop w) keys."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int, spec: LoaderSpec):
        self.sizes, self.spec = sizes, spec
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size  # rect_val groups neighbours by batch, so regroup
        self.batches: list[ValBatch] = val_batches(self.sizes, batch_size, self.spec.phase.size,
                                                   self.spec.rank, self.spec.world_size, self.spec.phase.rect_val)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for b in self.batches:
            yield [(i, *b.hw) for i in b.indices]

    def __len__(self) -> int:
        return len(self.batches)


def _init_worker(parent_pid: int, worker_id: int) -> None:
    """A SIGTERM or SIGINT to the whole process group (Slurm's preemption, ``kill -- -PGID``, Ctrl-C
    in a terminal) is for the main process, which saves its last finished epoch and stops the workers
    itself. A worker it ended would make the DataLoader raise over that (a dead-worker RuntimeError
    in place of the checkpoint). A worker whose rank dies is killed with it, even inside an item."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    end_with_parent(parent_pid)


class TorchvisionLoader:
    """DataLoader of uint8 batches; float conversion and normalisation happen on the device."""

    def __init__(self, spec: LoaderSpec, index: TreeIndex, dataset: _Samples,
                 batches: _TrainBatches | _ValBatches):
        self.spec = spec
        self.classes = index.classes
        self.num_images = len(index.paths)
        self.skipped = dict(index.skipped)  # bad file -> reason, index-time and decode-time
        self._batches = batches
        # generator=: without one, DataLoader draws its base seed from torch's global RNG when first
        # iterated, so a resumed run would draw at another point than the uninterrupted one and get
        # other dropout masks. Crops are keyed by (seed, epoch, index), so the worker seeds do not matter.
        self._loader: DataLoader | None = DataLoader(
            dataset, batch_sampler=batches, num_workers=spec.workers, collate_fn=_collate,
            pin_memory=spec.device.type == "cuda", persistent_workers=spec.workers > 0,
            timeout=spec.timeout_s if spec.workers > 0 else 0,
            generator=torch.Generator(), worker_init_fn=partial(_init_worker, os.getpid()))
        self._mean = torch.tensor(IMAGENET_MEAN, device=spec.device).mul(255).view(1, 3, 1, 1)
        self._inv_std = 1 / torch.tensor(IMAGENET_STD, device=spec.device).mul(255).view(1, 3, 1, 1)

    @property
    def batch_size(self) -> int:
        return self._batches.batch_size

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is None:
            raise RuntimeError("loader is closed")
        for imgs, labels, bad in self._batches_or_stall():
            for entry in bad:
                self._decode_failed(entry)
            if not len(labels):  # every image of the batch failed to decode
                if isinstance(self._batches, _TrainBatches):
                    # Under DDP every rank must run the same steps: a rank skipping one would hang the rest.
                    names = ", ".join(entry.partition(": ")[0] for entry in bad)
                    raise DataError(f"every image of a training batch failed to decode ({names}): a step "
                                    "cannot be skipped on one rank; remove or replace these files")
                continue  # validation: each rank's counts are summed once, at the end; this batch adds none
            yield self._normalise(imgs), labels.to(self.spec.device, non_blocking=True)

    def _batches_or_stall(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        try:
            yield from self._loader
        except RuntimeError as e:
            if not str(e).startswith("DataLoader timed out"):
                raise
            split = "training" if isinstance(self._batches, _TrainBatches) else "validation"
            raise LoaderStalled(f"the {split} loader's workers sent no batch in {self.spec.timeout_s:g} s "
                                "(data.timeout_s): a worker is stuck, e.g. on a file system that stopped "
                                "answering; continue the run with --resume auto") from None

    def _normalise(self, imgs: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW is a free view with channels_last strides. Two passes, written straight into
        # the output's dtype and layout (the subtraction promotes uint8 to fp32 itself, the multiply
        # casts once): half the time of float, subtract, multiply, convert on the CPU, same values.
        x = imgs.to(self.spec.device, non_blocking=True).permute(0, 3, 1, 2)
        fmt = torch.channels_last if self.spec.channels_last else torch.contiguous_format
        shifted = torch.sub(x, self._mean, out=torch.empty(x.shape, device=x.device, memory_format=fmt))
        if self.spec.dtype == torch.float32:
            return shifted.mul_(self._inv_std)
        out = torch.empty(x.shape, dtype=self.spec.dtype, device=x.device, memory_format=fmt)
        return torch.mul(shifted, self._inv_std, out=out)

    def _decode_failed(self, entry: str) -> None:
        path, _, reason = entry.partition(": ")
        self.skipped[path] = reason
        if self.spec.bad_images == "error":
            raise DataError(f"unreadable image {entry} (data.bad_images=skip drops such files)")
        log(f"skipping unreadable image {entry}")

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self._batches, _TrainBatches):
            self._batches.epoch = epoch

    def set_batch_size(self, batch_size: int) -> None:
        if isinstance(self._batches, _TrainBatches):
            self._batches.batch_size = batch_size
        else:
            self._batches.set_batch_size(batch_size)

    def close(self) -> None:
        if self._loader is not None:
            # A persistent DataLoader keeps its worker iterator; shutting it down is what its
            # __del__ would do, done now rather than whenever the garbage collector runs.
            it = getattr(self._loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
                # Its SIGTERM misses a worker that has not stopped by now: workers ignore it (see
                # _init_worker), and one stuck in C code never runs a handler. Left alive, it
                # would outlive this process (and multiprocessing's exit handler would wait for it).
                for worker in it._workers:
                    if worker.is_alive():
                        worker.kill()
                        worker.join()
            self._loader = None


def train_loader(spec: LoaderSpec) -> TorchvisionLoader:
    index = train_index(spec)
    dataset = _Samples(index, spec.phase.size, spec.phase.min_scale, spec.seed, train=True)
    return TorchvisionLoader(spec, index, dataset, _TrainBatches(len(index.paths), spec.phase.batch_size, spec))


def val_loader(spec: LoaderSpec) -> TorchvisionLoader:
    index = val_index(spec)
    dataset = _Samples(index, spec.phase.size, spec.phase.min_scale, spec.seed, train=False)
    return TorchvisionLoader(spec, index, dataset, _ValBatches(index.sizes, spec.phase.batch_size, spec))
