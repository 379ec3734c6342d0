"""The torchvision backend, and the ImageFolder tree index every file-based backend shares.

Shared with dali.py: class discovery, the file index (labels in sorted class order, like
torchvision's ImageFolder), bad-image detection at index time, and the per-epoch shard of a rank.
Bad images are found by reading each file's header and tail once, then cached beside the data, so
every rank drops the same files before sharding and batch counts stay equal across ranks.

Train augmentation randomness is a pure function of (seed, epoch, sample index): the batch sampler
runs in the main process and sends (index, epoch) keys to the workers, which seed a private RNG
from them. Worker count and worker persistence cannot change a batch, and a run resumed at epoch e
yields what the uninterrupted run did.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from training.data import IMAGENET_MEAN, IMAGENET_STD, DataError, LoaderSpec
from training.data.rectval import ValBatch, val_batches

# Formats both backends decode (DALI has no GIF); MPO is how PIL names multi-picture camera JPEGs.
DECODABLE = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "PPM", "WEBP", "JPEG2000"}
VAL_RESIZE = 1.14  # imagenet18: validation resizes the shorter side to int(size * 1.14)
RRC_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range
INDEX_VERSION = 1
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def log(msg: str) -> None:
    print(f"loader: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ tree index

@dataclass
class TreeIndex:
    """The usable images of one split: parallel lists in sorted (class, path) order."""

    root: str
    classes: list[str]
    paths: list[str]
    labels: list[int]
    sizes: list[tuple[int, int]]  # (width, height) from the header
    skipped: dict[str, str] = field(default_factory=dict)  # bad file -> reason


def find_classes(split_dir: str) -> list[str]:
    """Sorted class folder names (hidden folders ignored); DataError if there is nothing to read."""
    if not os.path.exists(split_dir):
        raise DataError(f"data dir not found: {split_dir}")
    if not os.path.isdir(split_dir):
        raise DataError(f"data dir is not a directory: {split_dir}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {split_dir}")
    return classes


def check_same_classes(train_dir: str, train: list[str], val_dir: str, val: list[str]) -> None:
    """Validation labels index the training class list, so the two lists must be equal."""
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        what = (f"{len(only_train)} only in train (first {only_train[0]})" if only_train
                else f"{len(only_val)} only in validation (first {only_val[0]})")
        raise DataError(f"class folders differ between {train_dir} ({len(train)}) and "
                        f"{val_dir} ({len(val)}): {what}")


def _list_files(split_dir: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Relative paths of every non-hidden file under each class folder, as ImageFolder orders them."""
    rel, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(split_dir, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, split_dir)
            found += [os.path.join(rel_dir, f) for f in sorted(filenames) if not f.startswith(".")]
        if not found:
            raise DataError(f"class folder holds no images: {os.path.join(split_dir, name)}")
        rel += found
        labels += [label] * len(found)
    return rel, labels


def probe_image(path: str) -> tuple[int, int] | str:
    """(width, height) of a decodable image, else why not. Reads the header and the last bytes only:
    a JPEG without its end marker or a PNG without IEND is truncated and would stop DALI's decoder."""
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
        if fmt not in DECODABLE:
            return f"unsupported format {fmt}"
        if fmt in ("JPEG", "MPO", "PNG"):
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 1024))
                tail = f.read()
            # Cameras may append bytes after the end marker, so look in the last KiB, not the last 2 bytes.
            if (b"\xff\xd9" if fmt != "PNG" else b"IEND") not in tail:
                return "truncated file"
    except _DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    if min(size) <= 0:
        return f"empty image {size}"
    return size


def _cache_files(split_dir: str) -> list[str]:
    """Where the header index may live: beside the split (like imagenet18's sorted_idxar.p), else in
    the user cache when DATA is read-only."""
    split_dir = os.path.abspath(split_dir)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha1(os.fsencode(split_dir)).hexdigest()[:20]
    return [os.path.join(os.path.dirname(split_dir), f".{os.path.basename(split_dir)}-index.npz"),
            os.path.join(home, "training-data-index", f"{key}.npz")]


def _load_cache(files: list[str], digest: str, n: int) -> tuple[np.ndarray, dict[int, str]] | None:
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as z:  # never pickle: the cache may be shared
                if int(z["version"]) != INDEX_VERSION or str(z["digest"]) != digest or len(z["wh"]) != n:
                    continue
                return z["wh"], {int(i): str(w) for i, w in zip(z["bad_idx"], z["bad_why"])}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return None


def _save_cache(files: list[str], digest: str, wh: np.ndarray, bad: dict[int, str]) -> None:
    """Atomic (temp + rename, so concurrent ranks never read half a file); never fails."""
    for path in files:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, version=np.array(INDEX_VERSION), digest=np.array(digest), wh=wh,
                         bad_idx=np.array(sorted(bad), dtype=np.int64),
                         bad_why=np.array([bad[i] for i in sorted(bad)], dtype=str))
            os.replace(tmp, path)
            return
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def index_tree(split_dir: str, classes: list[str], bad_images: str = "skip", verbose: bool = True) -> TreeIndex:
    """Index a split: list files, probe each header once (cached, keyed by the file list), then
    stop on the first bad image ('error') or drop every bad one with a warning line ('skip')."""
    rel, labels = _list_files(split_dir, classes)
    digest = hashlib.sha1(b"\n".join(os.fsencode(p) for p in rel)).hexdigest()
    files = _cache_files(split_dir)
    cached = _load_cache(files, digest, len(rel))
    if cached is None:
        with ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
            probes = list(pool.map(probe_image, (os.path.join(split_dir, p) for p in rel), chunksize=64))
        wh = np.array([p if isinstance(p, tuple) else (0, 0) for p in probes], dtype=np.int32).reshape(-1, 2)
        bad = {i: p for i, p in enumerate(probes) if isinstance(p, str)}
        _save_cache(files, digest, wh, bad)
    else:
        wh, bad = cached
    if bad and bad_images == "error":
        i = min(bad)
        raise DataError(f"unreadable image {os.path.join(split_dir, rel[i])}: {bad[i]} "
                        "(data.bad_images=skip drops such files)")
    index = TreeIndex(split_dir, classes, [], [], [])
    for i, (p, label) in enumerate(zip(rel, labels)):
        path = os.path.join(split_dir, p)
        if i in bad:
            index.skipped[path] = bad[i]
            if verbose:
                log(f"skipping unreadable image {path}: {bad[i]}")
            continue
        index.paths.append(path)
        index.labels.append(label)
        index.sizes.append((int(wh[i, 0]), int(wh[i, 1])))
    if not index.paths:
        raise DataError(f"no readable images in {split_dir}")
    if bad and verbose:
        log(f"skipped {len(bad)} unreadable image(s) in {split_dir}")
    return index


def train_index(spec: LoaderSpec) -> TreeIndex:
    return index_tree(spec.train_dir, find_classes(spec.train_dir), spec.bad_images, spec.rank == 0)


def val_index(spec: LoaderSpec) -> TreeIndex:
    train_classes = find_classes(spec.train_dir)
    classes = find_classes(spec.val_dir)
    check_same_classes(spec.train_dir, train_classes, spec.val_dir, classes)
    return index_tree(spec.val_dir, classes, spec.bad_images, spec.rank == 0)


def shard_indices(n: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's sample order for an epoch, exactly as DistributedSampler(shuffle=True) gives it:
    one permutation seeded by seed + epoch, padded from its head to a multiple of world_size, dealt
    round-robin. Every rank gets ceil(n / world_size) samples; every sample appears at least once."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    total = math.ceil(n / world_size) * world_size
    order += (order * math.ceil(total / n))[: total - n]
    return order[rank:total:world_size]


def train_batches(n: int, batch_size: int, world_size: int) -> int:
    """Batches per rank per epoch: ceil(ceil(N / world) / bs), on every rank."""
    return math.ceil(math.ceil(n / world_size) / batch_size)


# ------------------------------------------------------------------------------ torchvision backend

def rrc_window(rng: random.Random, width: int, height: int, min_scale: float) -> tuple[float, float, float, float]:
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


def _rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


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
        except _DECODE_ERRORS as e:  # truncated or corrupt past the header: drop, report in main
            return None, int(self.labels[i]), f"{path}: {type(e).__name__}: {e}"
        return np.asarray(img), int(self.labels[i]), None

    def _train(self, im: Image.Image, i: int, epoch: int) -> Image.Image:
        rng = random.Random(f"{self.seed}/{epoch}/{i}")  # str seeds hash with sha512: stable across runs
        width, height = im.size
        left, top, w, h = rrc_window(rng, width, height, self.min_scale)
        flip = rng.random() < 0.5
        # JPEG DCT scaling: decode at 1/2..1/8 when the crop still covers >= size px per side.
        im.draft("RGB", (math.ceil(width * self.size / w), math.ceil(height * self.size / h)))
        sx, sy = im.size[0] / width, im.size[1] / height
        img = _rgb(im).resize((self.size, self.size), Image.BILINEAR,
                              box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img

    def _val(self, im: Image.Image, h: int, w: int) -> Image.Image:
        short = int(self.size * VAL_RESIZE)
        im.draft("RGB", (short, short))  # JPEG DCT scaling, never below the shorter side we need
        return TF.center_crop(TF.resize(_rgb(im), short), [h, w])


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
        order = shard_indices(self.n, self.spec.seed, self.epoch, self.spec.rank, self.spec.world_size)
        for s in range(0, len(order), self.batch_size):
            yield [(i, self.epoch) for i in order[s:s + self.batch_size]]

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


class TorchvisionLoader:
    """DataLoader of uint8 batches; float conversion and normalisation happen on the device."""

    def __init__(self, spec: LoaderSpec, index: TreeIndex, dataset: _Samples,
                 batches: _TrainBatches | _ValBatches):
        self.spec = spec
        self.classes = index.classes
        self.num_images = len(index.paths)
        self.skipped = dict(index.skipped)  # bad file -> reason, index-time and decode-time
        self._batches = batches
        self._loader: DataLoader | None = DataLoader(
            dataset, batch_sampler=batches, num_workers=spec.workers, collate_fn=_collate,
            pin_memory=spec.device.type == "cuda", persistent_workers=spec.workers > 0)
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
        for imgs, labels, bad in self._loader:
            for entry in bad:
                self._decode_failed(entry)
            yield self._normalise(imgs), labels.to(self.spec.device, non_blocking=True)

    def _normalise(self, imgs: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW is a free view with channels_last strides; elementwise ops keep them.
        x = imgs.to(self.spec.device, non_blocking=True).permute(0, 3, 1, 2)
        x = (x.float() - self._mean) * self._inv_std
        fmt = torch.channels_last if self.spec.channels_last else torch.contiguous_format
        return x.to(dtype=self.spec.dtype, memory_format=fmt)

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
            self._loader = None


def train_loader(spec: LoaderSpec) -> TorchvisionLoader:
    index = train_index(spec)
    dataset = _Samples(index, spec.phase.size, spec.phase.min_scale, spec.seed, train=True)
    return TorchvisionLoader(spec, index, dataset, _TrainBatches(len(index.paths), spec.phase.batch_size, spec))


def val_loader(spec: LoaderSpec) -> TorchvisionLoader:
    index = val_index(spec)
    dataset = _Samples(index, spec.phase.size, spec.phase.min_scale, spec.seed, train=False)
    return TorchvisionLoader(spec, index, dataset, _ValBatches(index.sizes, spec.phase.batch_size, spec))
