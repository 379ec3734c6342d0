"""The DALI backend on the CPU (real DALI, device_id=None), against the same trees as torchvision."""
from __future__ import annotations

import gc
import math
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from conftest import make_jpeg_tree  # noqa: E402
from training.data import DataError, PhaseLoaders, get_backend  # noqa: E402
from training.data import dali, imagefolder  # noqa: E402
from training.data.tree import shard_indices  # noqa: E402
import loader_helpers  # noqa: E402
from loader_helpers import (assert_dali_names_an_undecodable_jpeg, assert_dali_pixels_match_torchvision,  # noqa: E402
                            assert_labels_match_pixels, make_pattern_tree, phase, rss_mb, unnormalise)

spec = partial(loader_helpers.spec, workers=2)  # DALI threads


@pytest.fixture(autouse=True)
def _collect_pipelines():
    """A loader's pipeline holds a callback into the loader (a reference cycle), so a loader a test
    did not close lives until the cyclic collector runs; its DALI threads must not outlive the test,
    or a later test's DataLoader forks a process with them (and its workers can crash)."""
    yield
    gc.collect()


def test_auto_picks_dali():
    assert get_backend("auto").name == "dali"


def test_labels_match_pixels_train_val_and_rect(jpeg_tree):
    assert_labels_match_pixels(dali, spec(jpeg_tree))


def test_same_shard_order_and_rect_shapes_as_torchvision(jpeg_tree):
    s = spec(jpeg_tree, phase=phase(rect=True))
    d, t = dali.train_loader(s), imagefolder.train_loader(replace(s, workers=0))
    for epoch in (0, 2):
        d.set_epoch(epoch)
        t.set_epoch(epoch)
        assert [y.tolist() for _, y in d] == [y.tolist() for _, y in t]
    dv, tv = dali.val_loader(s), imagefolder.val_loader(replace(s, workers=0))
    assert [(x.shape, y.tolist()) for x, y in dv] == [(x.shape, y.tolist()) for x, y in tv]


def test_shapes_dtypes_per_phase_keep_dl_and_rebuild(jpeg_tree):
    phases = (phase(0, 32, 4), phase(1, 32, 6, keep_dl=True), phase(2, 48, 5, rect=True))
    loaders = PhaseLoaders(get_backend("dali"), spec(jpeg_tree, channels_last=True, dtype=torch.bfloat16), phases)
    first = None
    for epoch, (size, bs) in enumerate(((32, 4), (32, 6), (48, 5))):
        train, val = loaders.for_epoch(epoch)
        first = train if first is None else first
        assert (train is first) == (epoch < 2)
        assert train.batch_size == bs and len(train) == math.ceil(24 / bs)
        batches = list(train)
        assert [len(y) for _, y in batches] == [bs] * (24 // bs) + ([24 % bs] if 24 % bs else [])
        for x, y in batches:
            assert x.dtype == torch.bfloat16 and y.dtype == torch.int64
            assert x.shape[1:] == (3, size, size) and x.is_contiguous(memory_format=torch.channels_last)
        for x, _ in val:
            assert min(x.shape[2:]) == size and x.is_contiguous(memory_format=torch.channels_last)
    loaders.close()


def test_two_ranks_cover_train_at_least_once_and_validation_exactly_once(tmp_path):
    root = make_jpeg_tree(tmp_path / "data", classes=3, train_per_class=7, val_per_class=3)  # 21 and 9
    specs = [spec(root, rank=r, world=2, phase=phase(bs=4)) for r in range(2)]
    trains = [dali.train_loader(s) for s in specs]
    counts = [[len(y) for _, y in t] for t in trains]
    assert len(trains[0]) == len(trains[1]) == len(counts[0]) == len(counts[1]) == math.ceil(11 / 4)
    assert sum(counts[0]) == sum(counts[1]) == 11
    labels = Counter(l for t in trains for _, y in t for l in y.tolist())
    assert all(labels[c] >= 7 for c in range(3))  # 22 slots: every image, one padded repeat
    vals = [dali.val_loader(s) for s in specs]
    assert Counter(l for v in vals for _, y in v for l in y.tolist()) == Counter({0: 3, 1: 3, 2: 3})


def test_two_ranks_read_every_training_image_each_epoch(tmp_path):
    # One image per class: a label names the image read. 9 images, 2 ranks: 5 each, one repeat.
    root = make_jpeg_tree(tmp_path / "data", classes=9, train_per_class=1, val_per_class=1)
    for epoch in (0, 1):
        read = []
        for rank in range(2):  # batches of 3 and 2 (of 2, the fifth image would be a batch alone: left out)
            loader = dali.train_loader(spec(root, rank=rank, world=2, phase=phase(bs=3), seed=3))
            loader.set_epoch(epoch)
            read.append([label for _, y in loader for label in y.tolist()])
            assert read[rank] == shard_indices(9, 3, epoch, rank, 2)  # the one global permutation's shard
        assert set(read[0]) | set(read[1]) == set(range(9))


def test_same_seed_and_epoch_same_batches(jpeg_tree):
    a, b = dali.train_loader(spec(jpeg_tree, workers=1)), dali.train_loader(spec(jpeg_tree, workers=2))
    a.set_epoch(1)
    b.set_epoch(1)
    got_a, got_b = list(a), list(b)
    assert all(torch.equal(x, xb) and torch.equal(y, yb) for (x, y), (xb, yb) in zip(got_a, got_b))
    a.set_epoch(2)
    assert not torch.equal(next(iter(a))[0], got_a[0][0])


def test_bad_images_skip_at_index_time_and_error(jpeg_tree, capsys):
    (jpeg_tree / "train" / "n00000000" / "notes.txt").write_text("not an image")
    loader = dali.train_loader(spec(jpeg_tree))
    assert [Path(p).name for p in loader.skipped] == ["notes.txt"]
    assert sum(len(y) for _, y in loader) == 24
    assert "notes.txt" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"notes\.txt"):
        dali.train_loader(spec(jpeg_tree, bad_images="error"))


def test_bytes_after_the_end_marker_decode(jpeg_tree):
    """The index keeps a motion photo (a video after the JPEG's end marker): DALI decodes it too."""
    for split in ("train", "validation"):
        d = jpeg_tree / split / "n00000001"
        loader_helpers.motion_photo(sorted(d.glob("*.JPEG"))[0], d / "motion.JPEG")
    loader = dali.train_loader(spec(jpeg_tree))
    assert loader.num_images == 25 and not loader.skipped
    loader.close()
    assert_labels_match_pixels(dali, spec(jpeg_tree))


def test_16bit_grey_decodes_to_what_torchvision_yields(tmp_path):
    """round(v / 257), which test_imagefolder checks the torchvision loader yields for the same files."""
    root = loader_helpers.make_grey16_tree(tmp_path / "data")
    for loader in (dali.train_loader(spec(root)), dali.val_loader(spec(root, phase=phase(bs=1)))):
        assert loader_helpers.image_levels(loader) == [4, 156, 255]  # round(v / 257) of GREY16_VALUES
        loader.close()


@pytest.mark.parametrize("split", ["train", "validation"])
def test_image_failing_only_at_decode_is_named(jpeg_tree, split):
    loader = assert_dali_names_an_undecodable_jpeg(spec(jpeg_tree), jpeg_tree, split)
    with pytest.raises(DataError, match=r"huff\.JPEG"):  # a new pass gets a fresh pipeline, not a dead one
        list(loader)
    loader.close()


@pytest.mark.parametrize("split", ["train", "validation"])
def test_image_failing_to_decode_in_the_first_batch_is_named(jpeg_tree, split):
    """DALI's iterator decodes a pass's first batch as it is built (each phase's first pass, every
    validation loader's): an image failing there was a 15-line RuntimeError (exit 1, not 2), and the
    next pass an AttributeError on the half-built pipeline. One batch holds every image here."""
    loader = assert_dali_names_an_undecodable_jpeg(spec(jpeg_tree, phase=phase(bs=32)), jpeg_tree, split)
    with pytest.raises(DataError, match=r"huff\.JPEG"):
        list(loader)
    loader.close()


def test_phase_changes_release_pipelines(jpeg_tree):
    phases = tuple(phase(e, 32 + 16 * (e % 2), 4, rect=e % 2 == 1) for e in range(7))
    loaders = PhaseLoaders(get_backend("dali"), spec(jpeg_tree), phases)
    rss = []
    for epoch in range(7):
        train, val = loaders.for_epoch(epoch)
        sum(len(y) for _, y in train)
        sum(len(y) for _, y in val)
        rss.append(rss_mb())
    loaders.close()
    # after a warm-up change, five more rebuilds of train and val pipelines
    assert rss[-1] - rss[1] < 100, rss


@pytest.mark.parametrize("rect", [False, True])
def test_same_pixels_as_torchvision_train_and_validation(tmp_path, rect):
    """Both backends crop the same windows (train: the shared (seed, epoch, image) crop; validation:
    the shared geometry, black padding where a square image meets a wide batch's crop)."""
    root = make_pattern_tree(tmp_path / "data")
    assert_dali_pixels_match_torchvision(spec(root, phase=phase(size=64, bs=4, rect=rect)))


def test_one_pipeline_per_phase_reset_each_pass_rebuilt_on_batch_change(jpeg_tree):
    loader = dali.train_loader(spec(jpeg_tree))
    seen = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert sum(len(y) for _, y in loader) == 24
        seen.append(loader._pipe)
    assert seen[0] is seen[1] is seen[2] is not None
    loader.set_batch_size(6)
    assert [len(y) for _, y in loader] == [6] * 4 and loader._pipe is not seen[0]
    it = iter(loader)
    next(it)
    it.close()  # abandoned mid-pass: its prefetched batches must not leak into the next pass
    assert loader._pipe is None
    assert [len(y) for _, y in loader] == [6] * 4
    loader.close()


def test_a_fresh_loader_at_epoch_2_yields_what_the_long_lived_one_does(jpeg_tree):
    """A resumed run builds its pipeline at the resumed epoch; the uninterrupted run reset its pipeline
    twice by then. Crops, flips and order are functions of (seed, epoch, image): same batches."""
    long_lived, fresh = dali.train_loader(spec(jpeg_tree)), dali.train_loader(spec(jpeg_tree))
    for epoch in range(3):
        long_lived.set_epoch(epoch)
        got = list(long_lived)
    fresh.set_epoch(2)
    again = list(fresh)
    assert len(got) == len(again) == 6
    assert all(torch.equal(x, xa) and torch.equal(y, ya) for (x, y), (xa, ya) in zip(got, again))
    long_lived.close()
    fresh.close()


def test_a_rank_without_a_validation_batch_yields_none(tmp_path):
    """2 validation images on 4 ranks: ranks 1-3 have no batch, and their pass is empty (DALI refuses
    to build an iterator over a pipeline with no data)."""
    root = make_jpeg_tree(tmp_path / "data", classes=1, train_per_class=2, val_per_class=2)
    vals = [dali.val_loader(spec(root, rank=r, world=4)) for r in range(4)]
    assert [[len(y) for _, y in v] for v in vals] == [[2], [], [], []] and [len(v) for v in vals] == [1, 0, 0, 0]
    for v in vals:
        v.close()


def test_validation_pads_black_where_the_batch_crop_is_wider_than_the_image(tmp_path):
    """rect_val: a square image in a batch of wide ones, resized to 36 x 36, is cut at a 32 x 104 crop
    centred on it: 34 columns each side are padding, black before normalising (as torchvision's)."""
    root = tmp_path / "data"
    for split in ("train", "validation"):
        (root / split / "n00000000").mkdir(parents=True)
        for i, (w, h) in enumerate([(100, 100)] + [(400, 100)] * 3):
            Image.new("RGB", (w, h), (200, 200, 200)).save(root / split / "n00000000" / f"{i}.JPEG", quality=95)
    loader = dali.val_loader(spec(root, phase=phase(size=32, bs=4, rect=True)))
    ((x, _),) = list(loader)
    square = unnormalise(x[:1])[0]  # the lowest aspect ratio comes first
    assert x.shape == (4, 3, 32, 104)
    assert square[:, :, :34].abs().max() < 1 and square[:, :, -34:].abs().max() < 1
    assert (square[:, :, 36:68] - 200).abs().max() < 4
    loader.close()


def test_a_pass_abandoned_mid_epoch_leaves_no_reads_for_the_next(jpeg_tree):
    """An abandoned pass (train.short_epoch stops each one early) has batches read ahead: the next
    pass, another epoch, must read that epoch's images and crops, as a fresh loader at it does."""
    loader, fresh = dali.train_loader(spec(jpeg_tree)), dali.train_loader(spec(jpeg_tree))
    it = iter(loader)
    next(it)
    it.close()
    loader.set_epoch(1)
    fresh.set_epoch(1)
    got, want = list(loader), list(fresh)
    assert len(got) == len(want) == 6
    assert all(torch.equal(x, xw) and torch.equal(y, yw) for (x, y), (xw, yw) in zip(got, want))
    loader.close()
    fresh.close()


def _graph(node, depth: int = 0) -> list[tuple[int, str, str, dict]]:
    """A defined pipeline's graph from an output back, depth first: (depth, operator, device, arguments).
    Reads DALI's Python graph objects (DataNode.source, its _op and _inputs; as in DALI 2.4): a DALI
    that renames them fails here by name, not silently."""
    op = node.source._op
    rows = [(depth, getattr(op, "schema_name", type(op).__name__), op.device, getattr(op, "_init_args", {}))]
    for i in node.source._inputs:
        rows += _graph(i, depth + 1)
    return rows


@pytest.mark.parametrize("train,fused,dtype,channels_last", [
    (True, True, torch.bfloat16, True), (True, False, torch.float16, False), (False, True, torch.float32, True)])
def test_gpu_graph_is_valid_dali_without_a_gpu(jpeg_tree, train, fused, dtype, channels_last):
    """The ``mixed`` graph has not yet run on a GPU: defining it checks every operator's arguments
    against this DALI's schema (a misspelt or mistyped one raises), and its shape is pinned here: the
    decode on ``mixed``, fp16 or fp32 out of the pipeline in the asked layout, images and labels
    leaving it on the device."""
    s = spec(jpeg_tree, device=torch.device("cuda", 0), dtype=dtype, channels_last=channels_last,
             dali_fused_crop=fused, dali_hw_load=0.5)
    loader = (dali.train_loader if train else dali.val_loader)(s)
    try:
        images, labels = loader._define()._graph_out
        assert (images.device, labels.device) == ("gpu", "gpu")
        ops = [(d, name) for d, name, dev, _ in _graph(images) if dev != "cpu"]
        if not train:  # validation decodes whole images, then resizes to the target and crops
            decode = ["Slice", "Resize", "decoders__Image"]
        else:
            decode = ["Resize"] + (["decoders__ImageSlice"] if fused else ["Slice", "decoders__Image"])
        assert ops == [(0, "CropMirrorNormalize")] + [(1 + k, n) for k, n in enumerate(decode)]
        (decoder,) = [args for _, _, dev, args in _graph(images) if dev == "mixed"]
        roi = train and fused
        assert (decoder["hw_decoder_load"], decoder["jpeg_fancy_upsampling"]) == (0.5, not roi)
        assert decoder["affine"] is False  # 8 ranks' decoder threads must not all pin cores 0..W-1
        cmn = _graph(images)[0][3]
        half = dtype != torch.float32
        assert (cmn["dtype"], cmn["output_layout"]) == (dali.types.FLOAT16 if half else dali.types.FLOAT,
                                                        "HWC" if channels_last else "CHW")
    finally:
        loader.close()
