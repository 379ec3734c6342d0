"""The DALI backend on a GPU (``mixed``: nvJPEG). Skips cleanly without CUDA or DALI.

The same claims as the CPU tests, on the device the loop trains on: labels from pixel colours,
pixels equal to the torchvision backend's (the crops are shared, so only decoding and resampling
differ), shapes/dtype/layout per phase with keep_dl and rect_val, two ranks' shards on one GPU,
a JPEG the GPU decoder rejects named in one line, and no host sync per batch.
"""
from __future__ import annotations

import gc
import math
import time
from collections import Counter
from functools import partial

import pytest
import torch

pytest.importorskip("nvidia.dali")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from conftest import make_jpeg_tree  # noqa: E402
from training.data import PhaseLoaders, get_backend  # noqa: E402
from training.data import dali  # noqa: E402
import loader_helpers  # noqa: E402
from loader_helpers import (assert_dali_names_an_undecodable_jpeg, assert_dali_pixels_match_torchvision,  # noqa: E402
                            assert_labels_match_pixels, make_pattern_tree, phase)

CUDA = torch.device("cuda", torch.cuda.current_device())
spec = partial(loader_helpers.spec, workers=4, device=CUDA)


@pytest.fixture(autouse=True)
def _collect_pipelines():
    yield
    gc.collect()


def test_probe_and_auto_pick_the_gpu_decoder():
    backend = get_backend("auto", device=CUDA, workers=4)
    assert backend.name == "dali" and backend.notes == [f"loader: dali (nvJPEG on {CUDA}), 4 threads per process"]


def test_labels_match_pixels_train_val_and_rect(jpeg_tree):
    assert_labels_match_pixels(dali, spec(jpeg_tree))


@pytest.mark.parametrize("rect", [False, True])
def test_same_pixels_as_the_torchvision_backend(tmp_path, rect):
    root = make_pattern_tree(tmp_path / "data")
    assert_dali_pixels_match_torchvision(spec(root, phase=phase(size=64, bs=4, rect=rect)))


@pytest.mark.parametrize("dtype,channels_last,fused", [(torch.float16, True, True), (torch.bfloat16, True, False),
                                                       (torch.float32, False, True)])
def test_shapes_dtype_layout_per_phase_keep_dl_and_rect(jpeg_tree, dtype, channels_last, fused):
    phases = (phase(0, 32, 4), phase(1, 32, 6, keep_dl=True), phase(2, 48, 5, rect=True))
    loaders = PhaseLoaders(get_backend("dali"), spec(jpeg_tree, dtype=dtype, channels_last=channels_last,
                                                     dali_fused_crop=fused), phases)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for epoch, (size, bs) in enumerate(((32, 4), (32, 6), (48, 5))):
        train, val = loaders.for_epoch(epoch)
        sizes = []
        for x, y in train:
            assert (x.device, y.device, x.dtype, y.dtype) == (CUDA, CUDA, dtype, torch.int64)
            assert x.shape[1:] == (3, size, size) and x.is_contiguous(memory_format=fmt)
            assert torch.isfinite(x).all()
            sizes.append(len(y))
        assert sizes == [bs] * (24 // bs) + ([24 % bs] if 24 % bs else [])
        for (x, y), b in zip(val, val._val, strict=True):
            assert tuple(x.shape) == (len(b.indices), 3, *b.hw) and x.is_contiguous(memory_format=fmt)
            assert y.device == CUDA and y.tolist() == [int(val._labels[i]) for i in b.indices]
    loaders.close()


def test_two_ranks_on_one_gpu_cover_train_and_validate_each_image_once(tmp_path):
    root = make_jpeg_tree(tmp_path / "data", classes=3, train_per_class=7, val_per_class=3)
    specs = [spec(root, rank=r, world=2, phase=phase(bs=4, rect=True)) for r in range(2)]
    trains = [dali.train_loader(s) for s in specs]
    counts = [[len(y) for _, y in t] for t in trains]
    assert len(counts[0]) == len(counts[1]) == math.ceil(11 / 4) and sum(counts[0]) == sum(counts[1]) == 11
    vals = [dali.val_loader(s) for s in specs]
    assert Counter(v for val in vals for _, y in val for v in y.tolist()) == Counter({0: 3, 1: 3, 2: 3})


@pytest.mark.parametrize("split", ["train", "validation"])
def test_jpeg_the_gpu_decoder_rejects_is_named(jpeg_tree, split):
    assert_dali_names_an_undecodable_jpeg(spec(jpeg_tree), jpeg_tree, split).close()


def test_next_batch_does_not_wait_for_queued_gpu_work(jpeg_tree):
    """With ~0.1 s or more of matrix products queued on the stream, taking the next batch must
    return long before they finish: the host stays ahead of the GPU."""
    loader = dali.train_loader(spec(jpeg_tree, phase=phase(bs=4), dtype=torch.float16, channels_last=True))
    it = iter(loader)
    next(it)
    a = torch.randn(8192, 8192, device=CUDA)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(12):
        b = a @ a
    t_next = time.perf_counter()
    next(it)
    blocked = time.perf_counter() - t_next
    torch.cuda.synchronize()
    busy = time.perf_counter() - t0
    it.close()
    loader.close()
    del a, b
    assert busy > 0.05 and blocked < busy / 2, (blocked, busy)
