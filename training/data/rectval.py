"""Validation batching for every backend, including imagenet18's rectangular validation.

imagenet18 (fast.ai / DIUx) validated on rectangles instead of centre squares: images are sorted by
aspect ratio w/h (rounded to 5 decimals), cut into consecutive chunks of the batch size, and each
chunk is centre-cropped to its mean aspect ratio: the shorter side becomes the target size, the
longer side ``int(size * ar)`` (or ``int(size / ar)`` for tall batches) floored to a multiple of 8.
Rank r validates a contiguous block of whole chunks, so each image is seen exactly once and every
batch is the same chunk whatever the world size (imagenet18's ValDistSampler did the same).

Both backends also share the per-image geometry (``val_geometry``): the shorter side resized to
``int(size * 1.14)`` and the longer in proportion (torchvision's ``resize`` rule), then the batch's
crop centred as torchvision's ``center_crop`` places it, padded with black where it is larger.

The validation batch, and so the chunk, is not the training batch: imagenet18 validated with
max(bs, 512) at 128 px, max(bs, 256) at 224 px and max(bs, 128) at other sizes
(``phases.val_batch_size``; train_imagenet_nv.py, DataManager.preload_data).

Image sizes come from the shared header index (tree.index_tree), which is cached beside the
data, so no image is decoded to build the batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


VAL_RESIZE = 1.14  # imagenet18: validation resizes the shorter side to int(size * 1.14)


@dataclass(frozen=True)
class ValBatch:
    indices: tuple[int, ...]  # into the split's index
    hw: tuple[int, int]  # centre-crop (height, width) of every image in the batch


@dataclass(frozen=True)
class ValGeometry:
    resize_hw: tuple[int, int]  # the whole image is resized to this (height, width) first
    anchor_yx: tuple[int, int]  # top-left of the crop in the resized image; negative: black padding


def _centre(side: int, crop: int) -> int:
    """torchvision's center_crop offset: a crop larger than the image pads (crop - side) // 2 before
    it; a smaller one starts at round((side - crop) / 2), Python's round (half to even)."""
    return -((crop - side) // 2) if crop > side else int(round((side - crop) / 2.0))


def val_geometry(width: int, height: int, size: int, crop_hw: tuple[int, int]) -> ValGeometry:
    """Where a (width x height) image's validation crop of (h, w) ``crop_hw`` comes from."""
    short = int(size * VAL_RESIZE)
    if width <= height:
        rw, rh = short, int(short * height / width)
    else:
        rw, rh = int(short * width / height), short
    return ValGeometry((rh, rw), (_centre(rh, crop_hw[0]), _centre(rw, crop_hw[1])))


def aspect_ratio(width: int, height: int) -> float:
    return round(width / height, 5)


def crop_hw(ar: float, size: int) -> tuple[int, int]:
    """imagenet18's crop for a batch of mean aspect ratio ``ar`` (w/h): (height, width)."""
    if ar < 1:  # tall
        return int(size / ar) // 8 * 8, size
    return size, int(size * ar) // 8 * 8


def _chunks(order: Sequence[int], batch_size: int) -> list[tuple[int, ...]]:
    return [tuple(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def _rank_block(chunks: list, rank: int, world_size: int) -> list:
    per = math.ceil(len(chunks) / world_size)
    return chunks[rank * per:(rank + 1) * per]


def val_batches(sizes: Sequence[tuple[int, int]], batch_size: int, size: int, rank: int,
                world_size: int, rect: bool) -> list[ValBatch]:
    """This rank's validation batches over images of (width, height) ``sizes``.

    Square: index order, (size, size) crops. Rectangular: aspect-ratio order, per-chunk crops.
    Some ranks may get one batch fewer (or none): validation needs no padding, only a sum.
    """
    if not rect:
        chunks = _chunks(range(len(sizes)), batch_size)
        return [ValBatch(c, (size, size)) for c in _rank_block(chunks, rank, world_size)]
    ars = [aspect_ratio(w, h) for w, h in sizes]
    order = sorted(range(len(sizes)), key=ars.__getitem__)  # stable: ties keep index order
    chunks = _chunks(order, batch_size)
    return [ValBatch(c, crop_hw(round(float(np.mean([ars[i] for i in c])), 5), size))
            for c in _rank_block(chunks, rank, world_size)]
