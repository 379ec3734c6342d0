"""Helpers shared by the loader tests (torchvision and DALI backends)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import PALETTE
from training.data import IMAGENET_MEAN, IMAGENET_STD, LoaderSpec
from training.phases import DataPhase, rank_train_images


def phase(start=0, size=32, bs=4, rect=False, keep_dl=False, min_scale=0.35) -> DataPhase:
    return DataPhase(start=start, size=size, batch_size=bs, train_dir="", val_dir="",
                     min_scale=min_scale, rect_val=rect, keep_dl=keep_dl)


def spec(root: Path, rank=0, world=1, workers=0, **kw) -> LoaderSpec:
    kw.setdefault("phase", phase())
    kw.setdefault("device", torch.device("cpu"))
    return LoaderSpec(root=str(root), rank=rank, world_size=world, workers=workers, seed=kw.pop("seed", 0), **kw)


def image_levels(loader) -> list[float]:
    """Each yielded image's mean 0..255 value, sorted (one grey level for a uniform image)."""
    return sorted(round(unnormalise(x).mean((1, 2, 3))[i].item(), 2) for x, _ in loader for i in range(len(x)))


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """The 0..255 values a normalised NCHW batch was made from, on the CPU (a GPU loader's batch too:
    the tests' palette and constants are CPU tensors)."""
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (IMAGENET_STD, IMAGENET_MEAN))
    return x.detach().cpu().float() * std + mean


def pixel_classes(x: torch.Tensor) -> list[int]:
    """Class whose PALETTE colour is nearest to each image's un-normalised centre patch."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    rgb = unnormalise(x)[:, :, h - 2:h + 2, w - 2:w + 2].mean((2, 3))
    return torch.cdist(rgb, torch.tensor(PALETTE, dtype=torch.float)).argmin(1).tolist()


def truncated_jpeg(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])


def motion_photo(src: Path, dst: Path) -> None:
    """``src`` (JPEG or PNG) with 5 KiB appended after its end marker, as phones append a video to a
    photo: more than the last KiB the index reads, and no marker in it (no 0xff byte)."""
    dst.write_bytes(src.read_bytes() + bytes(range(255)) * 20)


def bad_huffman_jpeg(src: Path, dst: Path) -> None:
    """Valid header and end marker (passes the index check) but a scan naming an undefined
    Huffman table: only a decoder finds it."""
    data = src.read_bytes()
    sos = data.index(b"\xff\xda")
    dst.write_bytes(data[:sos] + b"\xff\xda\x00\x0c\x03\x01\x77\x02\x77\x03\x77\x00\x3f\x00" + data[sos + 14:])


GREY16_VALUES = (1000, 40000, 65535)  # 8 bits: round(v / 257) = 4, 156, 255


def make_grey16_tree(root: Path) -> Path:
    """One class of uniform 16-bit grey PNGs (PIL mode I;16), one per GREY16_VALUES, in both splits."""
    for split in ("train", "validation"):
        d = root / split / "n00000000"
        d.mkdir(parents=True)
        for v in GREY16_VALUES:
            Image.fromarray(np.full((40, 48), v, np.uint16)).save(d / f"grey_{v}.png")
    return root


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def assert_labels_match_pixels(backend, s: LoaderSpec) -> None:
    """Train, validation and rect validation of a backend module yield every image with the label
    its colour encodes (training: all but a lone last one, ``rank_train_images``)."""
    for loader, train in ((backend.train_loader(s), True), (backend.val_loader(s), False),
                          (backend.val_loader(replace(s, phase=phase(rect=True))), False)):
        n = 0
        for x, y in loader:
            assert pixel_classes(x) == y.tolist()
            n += len(y)
        assert n == (rank_train_images(loader.num_images, s.world_size, s.phase.batch_size) if train
                     else loader.num_images)
        loader.close()


# (width, height) of the images of make_pattern_tree: a square among wide and tall ones, odd sides
PATTERN_SIZES = [(300, 150), (150, 300), (200, 200), (257, 131), (131, 257), (401, 300)]


def make_pattern_tree(root: Path, classes: int = 2) -> Path:
    """A tree whose pixels say where they are (red = x, green = y, a 16-px checkerboard in blue), so
    two loaders agree on the pixels only if they crop the same window: PATTERN_SIZES per class."""
    for split in ("train", "validation"):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(PATTERN_SIZES):
                yy, xx = np.mgrid[0:h, 0:w]
                px = np.stack([xx * 255 / w, yy * 255 / h, ((xx // 16 + yy // 16) % 2) * 200 + 20], -1)
                Image.fromarray(px.astype(np.uint8)).save(d / f"img_{i}.JPEG", quality=95)
    return root


def mean_abs_diff_per_image(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Normalised units (one is ~58 grey levels)."""
    return (a.float() - b.float()).abs().mean((1, 2, 3)).tolist()


def assert_dali_pixels_match_torchvision(s: LoaderSpec) -> None:
    """DALI's loaders of spec ``s`` (on its device) against torchvision's (in-process on the CPU: no
    DataLoader worker forked beside live DALI threads), epoch 3, train and validation: same shapes and
    labels, and pixels that differ only by JPEG decoding and resampling (~0.02-0.08 per image on
    make_pattern_tree; a one-pixel shift of the window gives ~0.15, mean-colour padding ~0.5)."""
    from training.data import dali, imagefolder
    for kind in ("train_loader", "val_loader"):
        d = getattr(dali, kind)(s)
        t = getattr(imagefolder, kind)(replace(s, device=torch.device("cpu"), workers=0))
        d.set_epoch(3)
        t.set_epoch(3)
        pairs = list(zip(d, t, strict=True))
        assert len(pairs) == 3
        for (xd, yd), (xt, yt) in pairs:
            assert xd.device == yd.device == s.device
            assert xd.shape == xt.shape and torch.equal(yd.cpu(), yt)
            diff = mean_abs_diff_per_image(xd.cpu(), xt)
            assert max(diff) < 0.12, (kind, diff)
        d.close()


def assert_dali_names_an_undecodable_jpeg(s: LoaderSpec, tree: Path, split: str):
    """A JPEG whose header passes the index but no decoder accepts, in ``split``: the pass stops with
    one line naming it. Returns the loader (the caller closes it)."""
    from training.data import DataError, dali
    good = sorted((tree / split).rglob("*.JPEG"))
    bad_huffman_jpeg(good[0], tree / split / "n00000001" / "huff.JPEG")
    loader = (dali.train_loader if split == "train" else dali.val_loader)(s)
    try:
        list(loader)
    except DataError as e:
        assert "huff.JPEG" in str(e) and "\n" not in str(e), str(e)
    else:
        raise AssertionError("the undecodable JPEG passed")
    return loader
