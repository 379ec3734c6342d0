"""CIFAR-10/100 held whole on the training device, augmented with batched tensor ops.

Reading: torchvision's on-disk layouts, pickles read directly (``cifar-10-batches-py``:
``data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python``: ``train``, ``test``,
``meta``). torchvision's dataset class is used only to download into an empty dir.

Augmentation (training loader), per epoch, all on the device with no per-image Python:
- flip: 'alternate' (airbench): each image gets one random flip bit for the whole run and is
  mirrored on even epochs per that bit, on odd epochs the opposite, so every image is seen both ways
  every two epochs (less redundancy than a fresh coin per epoch; +~0.1-0.2% at this length);
  'random': a fresh coin per image per epoch; 'none'.
- translate: random shift of up to ``translate`` px in x and y, from a reflect- or zero-padded copy
  (a random crop of the padded image).
- resize: in phases whose ``sz`` is below the images' side, the crops are scaled down to sz (bilinear,
  antialiased), as imagenet18 trains its first epochs at 128 px: cheaper steps while the net learns
  coarse features. Evaluation stays at the full side.
- cutout: a ``cutout`` px square (clipped at the border; px of the training images, resized or not)
  set to 0 (the mean after normalisation).
Flip, translate and the shuffle are one gather per batch: the padded images are kept channels-last
beside their mirror images, and a batch is one index of a strided view of all their windows,
out[n] = windows[image_n (or its mirror), dy_n, dx_n], each row of a window a contiguous run of
W x C values (on the 2-core CPU 0.3 ms per 512 images against 2.3 for a per-pixel gather; a
second padded copy in memory). With ``epoch_augment`` that gather runs once per epoch over the
whole shuffled set and the batches are slices of it (the same images: one launch of each
augmentation op per epoch instead of per step, for one epoch's copy in memory).
"""
from __future__ import annotations

import math
import os
import pickle
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from training.data import DataError
from training.phases import rank_train_images

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel on [0, 1], train split
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

LAYOUTS = {
    # dataset: (folder, train files, test files, meta file, label key, class-names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}
STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}
MATERIALIZE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar10" / "materialize.py"


@dataclass
class Split:
    images: np.ndarray  # (N, 3, 32, 32) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]


def folder(root: str | os.PathLike, dataset: str) -> Path:
    """The dataset's folder under ``root`` (``root`` may also be that folder itself)."""
    name = LAYOUTS[dataset][0]
    root = Path(root)
    return root if root.name == name else root / name


# What a CIFAR pickle may name: numpy's array reconstruction (numpy 1 and 2 spell the module
# differently) and bytes from Python 2 text. Anything else (os.system, builtins.eval, ...) is code.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")),
    *((mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _Refused(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's files hold (dicts, lists, str/bytes, numbers, numpy arrays), so a
    tampered file (from a mirror, a shared disk) runs nothing."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _Refused(f"refused: it names {module}.{name}, which no CIFAR file holds; nothing from it was run")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (expected torchvision's {path.parent.name} layout)") from None
    except _Refused as e:
        raise DataError(f"{path}: {e}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as e:
        raise DataError(f"{path}: not a readable CIFAR pickle ({e.__class__.__name__}: {e})") from None


def load_split(root: str | os.PathLike, dataset: str = "cifar10", train: bool = True) -> Split:
    """Read one split from the pickles; every problem is a one-line DataError naming the file."""
    if dataset not in LAYOUTS:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(LAYOUTS)})")
    _, train_files, test_files, meta_file, label_key, names_key = LAYOUTS[dataset]
    base = folder(root, dataset)
    meta = _unpickle(base / meta_file)
    classes = meta.get(names_key) if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{base / meta_file}: no {names_key!r} list of class names")
    images, labels = [], []
    for name in train_files if train else test_files:
        d = _unpickle(base / name)
        if not isinstance(d, dict) or "data" not in d or label_key not in d:
            raise DataError(f"{base / name}: expected a dict with 'data' and {label_key!r}")
        x = np.asarray(d["data"])
        try:  # ragged or nested lists, strings, ints past int64: refused below, not a numpy traceback
            y = np.asarray(d[label_key])
        except (ValueError, TypeError, OverflowError):
            y = np.asarray(None, dtype=object)
        if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):  # 0-d, nested, float, bool, str, object
            raise DataError(f"{base / name}: {label_key!r} must be a list of integer labels, got "
                            f"{y.dtype} of shape {y.shape}")
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DataError(f"{base / name}: 'data' must be N x 3072 uint8 with N labels, "
                            f"got {x.dtype} {x.shape} and {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{base / name}: labels outside 0..{len(classes) - 1}")
        images.append(x.reshape(-1, 3, 32, 32))  # R, G, B planes, row-major
        labels.append(y.astype(np.int64))
    out = Split(np.concatenate(images), np.concatenate(labels), [str(c) for c in classes])
    if not len(out.labels):
        raise DataError(f"{base}: the {'train' if train else 'test'} split is empty")
    return out


def ensure_data(root: str, dataset: str = "cifar10", download: bool = True,
                log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> str:
    """``root`` when it holds the dataset; else try torchvision's download into it (network
    permitting); else a one-line DataError saying what to do."""
    base = folder(root, dataset)
    if base.is_dir():
        return str(base.parent)
    hint = (f"run `python {MATERIALIZE} {root}`" if dataset == "cifar10" and MATERIALIZE.exists()
            else f"put torchvision's {base.name} folder in {root}")
    if not download:
        raise DataError(f"no {base.name} in {root}: {hint} (or pass --data DIR)")
    log(f"data: no {base.name} in {root}; trying torchvision's download")
    import torchvision
    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    old = socket.getdefaulttimeout()
    # the outermost folder this call creates: removed again if the download fails
    created = next((p for p in (*reversed(Path(root).parents), Path(root)) if not p.exists()), None)
    try:
        socket.setdefaulttimeout(30)
        Path(root).mkdir(parents=True, exist_ok=True)
        cls(root, train=True, download=True)
    except Exception as e:  # no network, proxy, disk full, checksum: all end the same way
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(f"no {base.name} in {root} and the download failed ({reason[:120]}): "
                        f"{hint} (or pass --data DIR)") from None
    finally:
        socket.setdefaulttimeout(old)
    return root


def to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and int64 labels on the device: 3 MB-per-10k-images copies, done once."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device, non_blocking=True)
    labels = torch.from_numpy(split.labels).to(device, non_blocking=True)
    return images, labels


def normalize(images_u8: torch.Tensor, mean, std, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (x / 255 - mean) / std in ``dtype`` (arithmetic in fp32)."""
    m = torch.tensor(mean, device=images_u8.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images_u8.device).view(1, -1, 1, 1) * 255
    x = ((images_u8.float() - m) / s).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class CifarTrainLoader:
    """The training split on the device; yields augmented, shuffled batches (drop_last by default,
    so every step has the same shape: one compiled graph, one cudnn plan)."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, classes: list[str], batch_size: int,
                 *, mean, std, seed: int = 0, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 flip: str = "alternate", translate: int = 2, pad_mode: str = "reflect", cutout: int = 0,
                 brightness: float = 0.0, contrast: float = 0.0, drop_last: bool = True, epoch_augment: bool = False):
        if flip not in ("alternate", "random", "none"):
            raise DataError(f"flip must be alternate, random or none, got {flip!r}")
        if pad_mode not in ("reflect", "zeros"):
            raise DataError(f"pad_mode must be reflect or zeros, got {pad_mode!r}")
        if not 0 <= translate < images_u8.shape[-1] // 2 or cutout < 0:
            raise DataError(f"translate must be in 0..{images_u8.shape[-1] // 2 - 1} px and cutout >= 0")
        if not (0 <= brightness and 0 <= contrast < 1):
            raise DataError(f"brightness must be >= 0 and contrast in [0, 1), got {brightness} and {contrast}")
        self.images_u8, self.labels, self.classes = images_u8, labels, classes
        self.device = images_u8.device
        self.num_images = len(labels)
        self.batch_size = batch_size
        self.mean, self.std, self.dtype, self.channels_last = mean, std, dtype, channels_last
        self.flip, self.translate, self.pad_mode, self.cutout = flip, translate, pad_mode, cutout
        self.brightness, self.contrast = brightness, contrast
        self.drop_last = drop_last
        self.epoch_augment = epoch_augment
        self.epoch_images = self.epoch_labels = None
        self.epoch = 0
        self.side = images_u8.shape[-1]  # px, square images
        self.size = self.side  # px, of the training images this epoch
        self.windows: torch.Tensor | None = None
        self.start_run(seed)

    def start_run(self, seed: int) -> None:
        """New run: new seed, new per-image flip bits; normalise (and pad) the images once here,
        on the device (a few ms on a GPU; part of a timed run, as in airbench)."""
        self.seed = seed
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.flip_bits = torch.rand(self.num_images, generator=self.gen, device=self.device) < 0.5
        self.windows = self.epoch_images = None  # the last run's, freed before the new ones are built
        # normalised and padded in fp32 (some torch versions lack half reflect-pad on the CPU), then
        # written once, channels-last, into the stored dtype; images N.. are the mirror images of 0..N-1
        x = normalize(self.images_u8, self.mean, self.std, torch.float32, False)
        r, n = self.translate, self.num_images
        if r:
            x = F.pad(x, (r, r, r, r), mode="reflect" if self.pad_mode == "reflect" else "constant")
        x = x.permute(0, 2, 3, 1)  # (N, H + 2r, W + 2r, C) view
        stored = torch.empty((2 * n if self.flip != "none" else n, *x.shape[1:]), dtype=self.dtype, device=self.device)
        stored[:n].copy_(x)
        del x
        if self.flip != "none":
            stored[n:].copy_(stored[:n].flip(2))
        sn, sh, sw, sc = stored.stride()
        # (image, dy, dx, y, x, channel): every window of the padded images, without a copy
        self.windows = stored.as_strided((len(stored), 2 * r + 1, 2 * r + 1, self.side, self.side, stored.shape[3]),
                                         (sn, sh, sw, sh, sw, sc))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Deterministic per (seed, epoch): the shuffle, the shifts and the flips of this epoch."""
        self.epoch = epoch
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1_000_003 + epoch + 1)
        n, r = self.num_images, self.translate
        self.perm = torch.randperm(n, generator=g, device=self.device)
        self.shifts = torch.randint(0, 2 * r + 1, (n, 2), generator=g, device=self.device)
        if self.flip == "alternate":
            self.flips = self.flip_bits ^ bool(epoch % 2)
        elif self.flip == "random":
            self.flips = torch.rand(n, generator=g, device=self.device) < 0.5
        else:
            self.flips = torch.zeros(n, dtype=torch.bool, device=self.device)
        if self.cutout:
            self.cut_centres = torch.randint(0, self.images_u8.shape[-1], (n, 2), generator=g, device=self.device)
        if self.brightness or self.contrast:  # drawn last: the draws above stay those of a run without them
            u = torch.rand(n, 2, generator=g, device=self.device) * 2 - 1
            self.scale = (1 + self.contrast * u[:, 1]).to(self.dtype)
            self.shift = (self.brightness * u[:, 0]).to(self.dtype) * self.scale  # (x + b) * c = x * c + b * c
        if self.epoch_augment:
            self.epoch_images = self.epoch_labels = None  # made when iterated: once, though start_run sets epoch 0 too

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def set_size(self, size: int) -> None:
        """Training images of ``size`` px from here on (the images' side: as they are)."""
        if not 1 <= size <= self.side:
            raise DataError(f"training image size must be 1..{self.side} px (the images' side), got {size}")
        if size != self.size:
            self.epoch_images = None  # with epoch_augment: made again, at the new size, when next needed
        self.size = size

    def __len__(self) -> int:
        b = self.batch_size
        n = rank_train_images(self.num_images, 1, b)  # the schedule's count: no batch of one image
        return n // b if self.drop_last else math.ceil(n / b)

    def augment(self, idx: torch.Tensor) -> torch.Tensor:
        """The augmented images ``idx`` of this epoch (flip + translate, resize, colour jitter, cutout)."""
        shifts = self.shifts[idx]
        src, dy, dx = idx, shifts[:, 0], shifts[:, 1]
        if self.flip != "none":
            # the window at dx of an image, mirrored, is the window at 2r - dx of its mirror image
            flips = self.flips[idx]
            src = torch.where(flips, idx + self.num_images, idx)
            dx = torch.where(flips, 2 * self.translate - dx, dx)
        # (B, H, W, C); the permuted view is NCHW in channels_last memory order
        out = self.windows[src, dy, dx].permute(0, 3, 1, 2)
        if self.size != self.side:  # in fp32: the CPU has no half antialiased resize
            out = F.interpolate(out.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                                align_corners=False).to(self.dtype)
        if self.brightness or self.contrast:  # colour jitter (Hiverge's CIFAR-10 speedrun): one fused op
            out = torch.addcmul(self.shift[idx].view(-1, 1, 1, 1), out, self.scale[idx].view(-1, 1, 1, 1))
        if self.cutout:
            ar = torch.arange(out.shape[-1], device=self.device)
            # (B, 2): top-left corner, may be < 0; the centres drawn on the full side, scaled to this one
            start = self.cut_centres[idx] * self.size // self.side - self.cutout // 2
            inside_y = (ar[None, :] >= start[:, :1]) & (ar[None, :] < start[:, :1] + self.cutout)
            inside_x = (ar[None, :] >= start[:, 1:]) & (ar[None, :] < start[:, 1:] + self.cutout)
            mask = inside_y[:, None, :, None] & inside_x[:, None, None, :]
            out = out.masked_fill(mask, 0)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        for i in range(len(self)):
            batch = slice(i * b, (i + 1) * b)
            if self.epoch_augment:
                if self.epoch_images is None:  # labels too: a training step then starts with two views, no kernel
                    self.epoch_images, self.epoch_labels = self.augment(self.perm), self.labels[self.perm]
                yield self.epoch_images[batch], self.epoch_labels[batch]
            else:
                idx = self.perm[batch]
                yield self.augment(idx), self.labels[idx]

    def close(self) -> None:
        self.windows = self.epoch_images = self.epoch_labels = None


class CifarEvalLoader:
    """The test split on the device, normalised once, in order, no augmentation."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, classes: list[str], batch_size: int,
                 *, mean, std, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        self.images = normalize(images_u8, mean, std, dtype, channels_last)
        self.labels, self.classes = labels, classes
        self.num_images = len(labels)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        for i in range(len(self)):
            yield self.images[i * b:(i + 1) * b], self.labels[i * b:(i + 1) * b]

    def set_epoch(self, epoch: int) -> None:
        pass

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def close(self) -> None:
        pass
