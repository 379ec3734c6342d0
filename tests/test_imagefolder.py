"""The torchvision backend and the tree index it shares with DALI (CPU, small generated JPEG trees)."""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.datasets import ImageFolder

from conftest import make_jpeg_tree
from training import headers
from training.bench.jpegtree import textured
from training.data import DataError, LoaderStalled, PhaseLoaders, get_backend
from training.data import imagefolder, tree
from training.data.rectval import val_geometry
from training.phases import parse_schedule
from training.recipes import imagenet
from loader_helpers import (GREY16_VALUES, assert_labels_match_pixels, bad_huffman_jpeg, image_levels,
                            make_grey16_tree, motion_photo, phase, rss_mb, spec, truncated_jpeg, unnormalise)


def test_labels_match_pixels_train_val_and_rect(jpeg_tree):
    assert_labels_match_pixels(imagefolder, spec(jpeg_tree))


def test_shapes_dtypes_per_phase_keep_dl_and_rebuild(jpeg_tree):
    phases = (phase(0, 32, 4), phase(1, 32, 6, keep_dl=True), phase(2, 48, 5, rect=True))
    loaders = PhaseLoaders(get_backend("torchvision"), spec(jpeg_tree, dtype=torch.float16, channels_last=True),
                           phases)
    first = None
    for epoch, (size, bs) in enumerate(((32, 4), (32, 6), (48, 5))):
        train, val = loaders.for_epoch(epoch)
        first = train if first is None else first
        assert (train is first) == (epoch < 2)  # keep_dl kept the loader, the size change rebuilt it
        assert train.batch_size == bs and len(train) == math.ceil(24 / bs)
        batches = list(train)
        assert len(batches) == len(train)
        for x, y in batches:
            assert x.dtype == torch.float16 and y.dtype == torch.int64
            assert x.shape[1:] == (3, size, size) and x.is_contiguous(memory_format=torch.channels_last)
        assert [len(y) for _, y in batches] == [bs] * (24 // bs) + ([24 % bs] if 24 % bs else [])
        for x, _ in val:
            assert x.dtype == torch.float16 and min(x.shape[2:]) == size
            assert epoch < 2 or all(d % 8 == 0 for d in x.shape[2:])  # rect_val: long side floored to 8
    loaders.close()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_batches_are_the_fp32_values_rounded_once(jpeg_tree, dtype):
    """What a GPU run gets (half precision, channels_last) is the fp32 normalisation rounded once:
    the arithmetic stays in fp32 whatever the output dtype."""
    batches = {}
    for dt, cl in ((torch.float32, False), (dtype, True)):
        loader = imagefolder.train_loader(spec(jpeg_tree, seed=5, dtype=dt, channels_last=cl))
        batches[dt] = list(loader)
        loader.close()
    for (x32, y32), (xh, yh) in zip(batches[torch.float32], batches[dtype]):
        assert torch.equal(y32, yh) and xh.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xh, x32.to(dtype))


@pytest.mark.parametrize("backend", ["torchvision", "dali", "synthetic"])
def test_a_lone_last_training_image_is_left_out_as_the_schedule_counts(tmp_path, backend):
    """17 images at batch 8 would end each epoch on a batch of one, which BatchNorm cannot train on
    at 1 x 1 px (ResNet at 32 px stopped with a traceback); 17 over 2 ranks is 9 each: 8 and a lone
    one. Every backend yields the batches the schedule plans; 18 images keep their partial batch."""
    sched = parse_schedule([{"ep": 0, "sz": 32, "bs": 8}, {"ep": [0, 1], "lr": 0.1}])
    for n, world, sizes in ((17, 1, [8, 8]), (17, 2, [8]), (18, 1, [8, 8, 2])):
        root = make_jpeg_tree(tmp_path / str(n), classes=1, train_per_class=n, val_per_class=1, splits=("train",))
        s = spec(root, world=world, phase=phase(bs=8), synthetic_images=n)
        loader = get_backend(backend).train(s)
        got = [len(y) for _, y in loader]
        assert got == sizes and len(loader) == len(sizes) == sched.iters_per_epoch(0, n, world), (n, world)
        loader.close()


def test_two_ranks_cover_train_at_least_once_and_validation_exactly_once(tmp_path):
    root = make_jpeg_tree(tmp_path / "data", classes=3, train_per_class=7, val_per_class=3)  # 21 and 9
    specs = [spec(root, rank=r, world=2, phase=phase(bs=4)) for r in range(2)]
    for epoch in (0, 3):
        shards = [tree.shard_indices(21, 0, epoch, r, 2) for r in range(2)]
        assert set(shards[0]) | set(shards[1]) == set(range(21)) and len(shards[0]) == len(shards[1]) == 11
        sampler = DistributedSampler(range(21), num_replicas=2, rank=1, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        assert shards[1] == list(sampler)  # the same order DistributedSampler gives
    trains = [imagefolder.train_loader(s) for s in specs]
    counts = [[len(y) for _, y in t] for t in trains]
    assert len(trains[0]) == len(trains[1]) == math.ceil(11 / 4) == len(counts[0]) == len(counts[1])
    assert sum(counts[0]) == sum(counts[1]) == 11
    vals = [imagefolder.val_loader(s) for s in specs]
    labels = Counter(l for v in vals for _, y in v for l in y.tolist())
    assert labels == Counter({0: 3, 1: 3, 2: 3}) and vals[0].num_images == 9


def test_fewer_images_than_ranks_are_dealt_as_distributed_sampler_deals_them():
    """Padding repeats the whole permutation as often as it takes: with fewer images than ranks (a
    smoke run on 8 GPUs), every rank still gets ceil(n / world) images, in DistributedSampler's order."""
    for n, world in ((1, 3), (2, 5), (3, 8)):
        for r in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=7)
            sampler.set_epoch(2)
            assert tree.shard_indices(n, 7, 2, r, world) == list(sampler), (n, world, r)
            assert len(list(sampler)) == 1


def test_rrc_window_is_torchvisions_random_resized_crop_rule():
    """Known answers of RandomResizedCrop's rule, from scripted draws: a drawn window that fits the
    image exactly in one side is taken (w <= width), placed anywhere along the other; after 10 windows
    that do not fit, the largest centred crop whose ratio is clamped to [3/4, 4/3]."""
    class Script:  # random.Random's draws, scripted: uniform() from a cycle, randint(a, b) gives b
        def __init__(self, *uniform):
            self.uniform_values, self.calls = uniform, 0

        def uniform(self, lo, hi):
            self.calls += 1
            return self.uniform_values[(self.calls - 1) % len(self.uniform_values)]

        def randint(self, lo, hi):
            return hi

    # 2/3 of 100 x 200 at ratio 3/4: w = sqrt(13333 * 0.75) = 100, h = 133: fits, top up to 200 - 133
    assert imagefolder.rrc_window(Script(2 / 3, math.log(3 / 4)), 100, 200, 0.35) == (0, 67, 100, 133)
    never = Script(1.0, math.log(4 / 3))  # the whole area at ratio 4/3 is wider than any of these images
    assert imagefolder.rrc_window(never, 100, 200, 0.35) == (0, 33, 100, 133)  # tall: h = 100 / (3/4)
    assert never.calls == 20  # ten tries, two draws each
    never = Script(1.0, math.log(3 / 4))  # ... and at 3/4, taller
    assert imagefolder.rrc_window(never, 300, 100, 0.35) == (83, 0, 133, 100)  # wide: w = 100 * 4/3
    assert imagefolder.rrc_window(Script(1.0, math.log(4 / 3)), 120, 100, 0.35) == (0, 0, 120, 100)  # in range


def test_about_half_the_training_crops_are_mirrored():
    """RandomHorizontalFlip(0.5): the flip is a fair coin per (seed, epoch, image)."""
    flips = [imagefolder.train_crop(0, epoch, i, 200, 150, 0.35)[1] for epoch in range(2) for i in range(500)]
    assert 450 <= sum(flips) <= 550


def test_hidden_folders_beside_the_classes_are_no_class(tmp_path):
    """A hidden folder among the class folders (a notebook's .ipynb_checkpoints, a sync tool's temp
    folder) is not a class: '.' sorts first, and as class 0 it would shift every label by one."""
    root = make_jpeg_tree(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    for split in ("train", "validation"):
        (root / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (40, 40)).save(root / split / ".ipynb_checkpoints" / "x.JPEG")
    assert tree.find_classes(str(root / "train")) == ["n00000000", "n00000001"]
    for make in (imagefolder.train_loader, imagefolder.val_loader):
        loader = make(spec(root))
        assert loader.classes == ["n00000000", "n00000001"]
        assert loader.num_images == (4 if make is imagefolder.train_loader else 2)  # x.JPEG read by neither
        loader.close()
    assert_labels_match_pixels(imagefolder, spec(root))


def test_same_seed_and_epoch_same_batches_whatever_the_workers(jpeg_tree):
    a = imagefolder.train_loader(spec(jpeg_tree, workers=0))
    b = imagefolder.train_loader(spec(jpeg_tree, workers=2))
    epochs_a = []
    for epoch in (0, 1):  # a runs epoch 0 first; b starts at epoch 1 as a resumed run would
        a.set_epoch(epoch)
        epochs_a.append([(x.clone(), y.clone()) for x, y in a])
    b.set_epoch(1)
    for _ in range(2):  # and twice over the same persistent workers
        got = list(b)
        assert len(got) == len(epochs_a[1])
        assert all(torch.equal(x, xa) and torch.equal(y, ya) for (x, y), (xa, ya) in zip(got, epochs_a[1]))
    assert not torch.equal(epochs_a[0][0][0], epochs_a[1][0][0])  # a new epoch reshuffles and re-augments
    a.close()
    b.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_iterating_leaves_the_global_rng_alone(jpeg_tree, workers):
    """A resumed run must draw the same dropout masks as the uninterrupted one, so the loaders (first
    pass or later, train or validation) never consume torch's global RNG."""
    for make in (imagefolder.train_loader, imagefolder.val_loader):
        loader = make(spec(jpeg_tree, workers=workers))
        for _ in range(2):
            before = torch.get_rng_state()
            assert sum(len(y) for _, y in loader) == loader.num_images
            assert torch.equal(torch.get_rng_state(), before)
        loader.close()


def test_16bit_grey_scaled_to_8_bits_not_clipped(tmp_path):
    """16-bit grey (PNG: I;16, big-endian TIFF: I;16B, 16-bit PGM: I) becomes round(v / 257), as DALI
    decodes it (test_dali checks DALI), not v clipped at 255."""
    v = np.arange(0, 65536, 97, dtype=np.uint16)[:660].reshape(20, 33)
    want = np.repeat(np.rint(v / 257).astype(np.uint8)[..., None], 3, -1)
    Image.fromarray(v).save(tmp_path / "a.png")
    Image.frombytes("I;16B", (33, 20), v.astype(">u2").tobytes()).save(tmp_path / "b.tif")
    (tmp_path / "c.pgm").write_bytes(b"P5 33 20 65535\n" + v.astype(">u2").tobytes())
    for name, mode in (("a.png", "I;16"), ("b.tif", "I;16B"), ("c.pgm", "I")):
        with Image.open(tmp_path / name) as im:
            assert im.mode == mode and np.array_equal(np.asarray(imagefolder._rgb(im)), want), name
    root = make_grey16_tree(tmp_path / "data")
    for loader in (imagefolder.train_loader(spec(root)), imagefolder.val_loader(spec(root, phase=phase(bs=1)))):
        assert image_levels(loader) == [round(v / 257) for v in GREY16_VALUES] == [4, 156, 255]
        loader.close()


def test_drafted_jpeg_decode_crops_the_exact_window(tmp_path):
    """A JPEG decoded at 1/8 (DCT scaling) is ceil(1001 / 8) = 126 px wide but holds 125.125 px of image:
    crops from it must match crops of the full decode (same window, in the file's pixels) up to decode
    noise, here on a gradient (red = x, green = y) where a window off by dx px is off by dx / 4 levels."""
    yy, xx = np.mgrid[0:1001, 0:1001]
    px = np.stack([xx * 255 / 1000, yy * 255 / 1000, np.full_like(xx, 128)], -1).round().astype(np.uint8)
    for split in ("train", "validation"):
        (tmp_path / split / "n0").mkdir(parents=True)
        Image.fromarray(px).save(tmp_path / split / "n0" / "g.JPEG", quality=95)
    with Image.open(tmp_path / "train" / "n0" / "g.JPEG") as im:
        full = im.convert("RGB")
    s = spec(tmp_path, phase=phase(size=32, bs=1), seed=3)
    train, val = imagefolder.train_loader(s), imagefolder.val_loader(s)
    pairs = []  # (yielded, wanted)
    for epoch in range(8):
        train.set_epoch(epoch)
        (x, _), = list(train)
        (left, top, w, h), flip = imagefolder.train_crop(3, epoch, 0, 1001, 1001, 0.35)
        assert min(w, h) >= 8 * 32  # decoded at 1/8
        want = full.resize((32, 32), Image.BILINEAR, box=(left, top, left + w, top + h))
        pairs.append((x, want.transpose(Image.FLIP_LEFT_RIGHT) if flip else want))
    (x, _), = list(val)
    geo = val_geometry(1001, 1001, 32, tuple(x.shape[2:]))
    top, left = geo.anchor_yx
    want = full.resize(geo.resize_hw[::-1], Image.BILINEAR).crop((left, top, left + x.shape[3], top + x.shape[2]))
    pairs.append((x, want))
    diffs = [(unnormalise(x)[0, :2] - torch.from_numpy(np.asarray(want, np.float32)).permute(2, 0, 1)[:2]).abs()
             .mean().item() for x, want in pairs]
    assert max(diffs) < 0.6, diffs  # the drafted size as the scale: up to 1.7 here


def test_a_crop_is_drafted_only_while_it_keeps_size_px_per_side(tmp_path, monkeypatch):
    """The draft request is rounded up: a 399 px crop of a 1000 px JPEG at size 100 needs the whole at
    >= 250.6 px, so a 1/2 decode (the crop 199.5 px there), not 1/4 (99.75 px, upsampled to 100), which
    a request rounded down to 250 px would pick."""
    (tmp_path / "train" / "n0").mkdir(parents=True)
    textured(np.random.default_rng(0), 1000, 1000).save(tmp_path / "train" / "n0" / "t.JPEG", quality=90)
    monkeypatch.setattr(imagefolder, "train_crop", lambda *a: ((0, 0, 399, 399), False))
    decoded, rgb = [], imagefolder._rgb
    monkeypatch.setattr(imagefolder, "_rgb", lambda im: decoded.append(im.size) or rgb(im))
    (x, _), = list(imagefolder.train_loader(spec(tmp_path, phase=phase(size=100, bs=1))))
    assert tuple(x.shape[2:]) == (100, 100) and decoded == [(500, 500)]


@pytest.mark.parametrize("rect", [False, True])
def test_validation_decodes_in_full_as_dali_and_imagenet18_do(tmp_path, rect):
    """Validation pixels are the full decode's, resized and cropped (exactly, on a textured JPEG a 1/2
    to 1/8 draft would change by ~2/255 per pixel), so a reported accuracy does not depend on the loader."""
    for split in ("train", "validation"):
        (tmp_path / split / "n0").mkdir(parents=True)
        textured(np.random.default_rng(0), 640, 480).save(tmp_path / split / "n0" / "t.JPEG", quality=90)
    with Image.open(tmp_path / "validation" / "n0" / "t.JPEG") as im:
        full = im.convert("RGB")
    loader = imagefolder.val_loader(spec(tmp_path, phase=phase(size=64, bs=1, rect=rect)))
    (x, _), = list(loader)
    geo = val_geometry(640, 480, 64, tuple(x.shape[2:]))
    top, left = geo.anchor_yx
    want = full.resize(geo.resize_hw[::-1], Image.BILINEAR).crop((left, top, left + x.shape[3], top + x.shape[2]))
    got = unnormalise(x)[0].round().permute(1, 2, 0).numpy()
    assert np.array_equal(got, np.asarray(want, np.float32))


def test_index_order_is_imagefolders_in_nested_folders(tmp_path):
    """Index i is torchvision ImageFolder's sample i, so shard_indices deals the images
    DistributedSampler over ImageFolder (imagenet18) would: folders in sorted-path order, where a
    depth-first walk would put c0/a/sub/ before c0/a-b/ ('-' sorts before '/')."""
    for rel in ("c0/z.jpg", "c0/a/x.jpg", "c0/a/sub/y.jpg", "c0/a-b/w.jpg", "c0/a.b/v.jpg", "c0/A/u.jpg",
                "c0/a b/t.jpg", "c1/b/s.jpg", "c1/b/c/r.jpg", "c1/b+/q.jpg", "c1/p.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    rel, labels = tree.list_files(str(tmp_path), tree.find_classes(str(tmp_path)))
    want = ImageFolder(str(tmp_path)).samples
    assert [(str(tmp_path / p), label) for p, label in zip(rel, labels)] == want


def test_bad_images_skipped_named_counted(jpeg_tree, capsys):
    good = sorted((jpeg_tree / "train").rglob("*.JPEG"))
    (jpeg_tree / "train" / "n00000000" / "notes.txt").write_text("not an image")
    truncated_jpeg(good[0], jpeg_tree / "train" / "n00000001" / "cut.JPEG")
    bad_huffman_jpeg(good[0], jpeg_tree / "train" / "n00000002" / "huff.JPEG")
    loader = imagefolder.train_loader(spec(jpeg_tree, phase=phase(bs=5)))
    assert loader.num_images == 25  # the header check drops two; huff.JPEG only fails to decode
    assert sorted(Path(p).name for p in loader.skipped) == ["cut.JPEG", "notes.txt"]
    assert sum(len(y) for _, y in loader) == 24
    assert sorted(Path(p).name for p in loader.skipped) == ["cut.JPEG", "huff.JPEG", "notes.txt"]
    err = capsys.readouterr().err
    for name in ("notes.txt", "cut.JPEG", "huff.JPEG"):
        assert sum(name in line for line in err.splitlines()) == 1


def test_bytes_after_the_end_marker_kept_truncated_files_dropped(jpeg_tree):
    """A motion photo's appended video pushes the end marker out of the KiB the index reads; a full
    decode then tells it (kept, its header size) from a truncated file (dropped)."""
    d = jpeg_tree / "train" / "n00000001"
    good = sorted(d.glob("*.JPEG"))[0]
    with Image.open(good) as im:
        size = im.size
        im.save(d / "still.png")
    motion_photo(good, d / "motion.JPEG")
    motion_photo(d / "still.png", d / "still.png")
    truncated_jpeg(good, d / "cut.JPEG")
    probes = [headers.probe_image(str(d / f)) for f in ("motion.JPEG", "still.png", "cut.JPEG")]
    assert probes == [size, size, "truncated file"]
    loader = imagefolder.train_loader(spec(jpeg_tree))
    assert loader.num_images == 26 and [Path(p).name for p in loader.skipped] == ["cut.JPEG"]
    assert_labels_match_pixels(imagefolder, spec(jpeg_tree))


def test_bad_images_error_names_the_file(jpeg_tree):
    good = sorted((jpeg_tree / "train").rglob("*.JPEG"))
    bad_huffman_jpeg(good[0], jpeg_tree / "train" / "n00000002" / "huff.JPEG")
    loader = imagefolder.train_loader(spec(jpeg_tree, bad_images="error", workers=1))
    with pytest.raises(DataError, match=r"huff\.JPEG"):
        list(loader)
    loader.close()
    truncated_jpeg(good[0], jpeg_tree / "train" / "n00000001" / "cut.JPEG")
    with pytest.raises(DataError, match=r"cut\.JPEG: truncated") as e:
        imagefolder.train_loader(spec(jpeg_tree, bad_images="error"))
    assert "\n" not in str(e.value)


def test_bad_images_error_names_the_first_unreadable_file(jpeg_tree):
    """With several unreadable files, 'error' names the first in the index's order (class, then file),
    as the index promises, not the last one probed."""
    good = sorted((jpeg_tree / "train").rglob("*.JPEG"))
    for cls in ("n00000001", "n00000002"):
        truncated_jpeg(good[0], jpeg_tree / "train" / cls / "cut.JPEG")
    with pytest.raises(DataError, match=r"n00000001[/\\]cut\.JPEG: truncated"):
        imagefolder.train_loader(spec(jpeg_tree, bad_images="error"))


def test_a_batch_of_undecodable_images_is_skipped_in_validation_and_stops_training(jpeg_tree, capsys):
    """huff.JPEG alone in a batch of 1: validation goes on without it (an empty batch would crash the
    model); training stops with one line naming it, as no rank may skip a step under DDP."""
    good = sorted((jpeg_tree / "validation").rglob("*.JPEG"))
    for split in ("train", "validation"):
        bad_huffman_jpeg(good[0], jpeg_tree / split / "n00000001" / "huff.JPEG")
    val = imagefolder.val_loader(spec(jpeg_tree, phase=phase(bs=1)))
    labels = [y.tolist() for _, y in val]
    assert labels == [[0]] * 4 + [[1]] * 4 + [[2]] * 4  # make_jpeg_tree's 4 per class; huff.JPEG dropped
    assert [Path(p).name for p in val.skipped] == ["huff.JPEG"]
    assert sum("huff.JPEG" in line for line in capsys.readouterr().err.splitlines()) == 1
    train = imagefolder.train_loader(spec(jpeg_tree, phase=phase(bs=1)))
    with pytest.raises(DataError, match=r"every image of a training batch failed to decode \(\S*huff\.JPEG\)") as e:
        list(train)
    assert "\n" not in str(e.value)


def test_auto_is_dali_where_it_decodes_else_torchvision_and_one_line_says_which(monkeypatch):
    """Without a GPU or DALI: a stand-in DALI module whose probe passes, then fails as on a driver
    nvJPEG cannot use. --loader auto then falls back (and says why), --loader dali refuses in one line."""
    import sys
    import types

    from training import data
    fake = types.ModuleType("training.data.dali")
    fake.probe, fake.train_loader, fake.val_loader = (lambda device: None), object(), object()
    monkeypatch.setitem(sys.modules, "training.data.dali", fake)
    monkeypatch.setattr(data, "dali", fake, raising=False)
    gpu = get_backend("auto", torch.device("cuda", 0), 4)
    assert gpu.name == "dali" and gpu.notes == ["loader: dali (nvJPEG on cuda:0), 4 threads per process"]
    assert get_backend("auto").notes == ["loader: dali (CPU decode), 1 thread per process"]  # DALI runs >= 1 thread

    def probe(device):
        raise RuntimeError("nvJPEG: no decoder for this driver\nthe details")
    fake.probe = probe
    backend = get_backend("auto", workers=2)
    assert backend.name == "torchvision" and backend.notes == [
        "loader: DALI not available (RuntimeError: nvJPEG: no decoder for this driver); using torchvision",
        "loader: torchvision (PIL decode on the CPU), 2 worker processes per process, uint8 batches normalised on cpu"]
    with pytest.raises(DataError) as e:
        get_backend("dali")
    assert str(e.value) == "--loader dali: DALI does not work here (nvJPEG: no decoder for this driver)"


def test_the_recipes_loaders_are_the_configs_with_its_workers_and_nchw_on_the_cpu():
    from training.config import Config
    from training.dist import DistInfo
    cfg = Config()
    cfg.data.loader, cfg.data.workers = "torchvision", 3
    schedule = parse_schedule([{"ep": 0, "sz": 32, "bs": 4}, {"ep": [0, 1], "lr": [0.1, 0.1]}])
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loaders = imagenet.build_loaders(cfg, schedule, cpu)
    assert loaders.backend.notes == ["loader: torchvision (PIL decode on the CPU), 3 worker processes per process, "
                                     "uint8 batches normalised on cpu"]
    assert loaders.base.workers == 3 and not loaders.base.channels_last  # the model is NHWC on CUDA only


def test_a_trailing_slash_on_data_finds_the_phase_dirs(tmp_path):
    """imagenet18's phase dirs extend DATA's name (DATA-sz/32/train): DATA given as /x/data/ finds
    them too, in the recipe's check and in the loaders."""
    make_jpeg_tree(tmp_path / "data", splits=("validation",))
    make_jpeg_tree(tmp_path / "data-sz" / "32", splits=("train",))
    schedule = parse_schedule([{"ep": 0, "sz": 32, "bs": 4, "trndir": "-sz/32", "valdir": ""},
                               {"ep": [0, 1], "lr": 0.1}])
    for root in (f"{tmp_path}/data", f"{tmp_path}/data/", f"{tmp_path}/data//"):
        imagenet.check_data_root(root, schedule, "torchvision")
        s = spec(root, phase=schedule.data_phases[0])
        assert (s.train_dir, s.val_dir) == (f"{tmp_path}/data-sz/32/train", f"{tmp_path}/data/validation")
        assert imagefolder.train_loader(s).num_images == 24 and imagefolder.val_loader(s).num_images == 12


def test_dataset_errors_are_one_line(tmp_path):
    cases = []
    cases.append((tmp_path / "missing", "data dir not found"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    cases.append((tmp_path / "empty", "no class folders"))
    make_jpeg_tree(tmp_path / "hollow", splits=("train",))
    (tmp_path / "hollow" / "train" / "n00000009").mkdir()
    cases.append((tmp_path / "hollow", r"class folder holds no images: .*n00000009"))
    for root, message in cases:
        with pytest.raises(DataError, match=message) as e:
            imagefolder.train_loader(spec(root))
        assert "\n" not in str(e.value)
    root = make_jpeg_tree(tmp_path / "mismatch")
    (root / "validation" / "n00000002").rename(root / "validation" / "n00000007")
    with pytest.raises(DataError, match=r"class folders differ .* only in train \(first n00000002\)"):
        imagefolder.val_loader(spec(root))


def test_phase_changes_release_memory_and_workers(jpeg_tree):
    phases = tuple(phase(e, 32 + 16 * (e % 2), 4, rect=e % 2 == 1) for e in range(6))
    loaders = PhaseLoaders(get_backend("torchvision"), spec(jpeg_tree, workers=1), phases)
    rss = []
    for epoch in range(6):
        train, val = loaders.for_epoch(epoch)
        next(iter(train))
        sum(len(y) for _, y in val)
        rss.append(rss_mb())
    loaders.close()
    assert rss[-1] - rss[0] < 100, rss  # five rebuilds; a leak of loaders or workers would show
    assert multiprocessing.active_children() == []


def _stuck_after(monkeypatch, items: int) -> None:
    """Workers serve ``items`` images, then each further one takes 600 s (a read that never returns)."""
    real_item, served = imagefolder._Samples.__getitem__, []

    def item(self, key):  # runs in the worker
        served.append(key)
        if len(served) > items:
            time.sleep(600)
        return real_item(self, key)
    monkeypatch.setattr(imagefolder._Samples, "__getitem__", item)
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.5)  # the shutdown's join


def test_closing_kills_a_worker_that_would_not_stop(jpeg_tree, monkeypatch):
    """A worker stuck where neither the DataLoader's done signal nor its SIGTERM (which workers ignore,
    and a child stuck in C code never handles) reaches it would outlive its rank and hold the job open:
    closing the loader kills it."""
    _stuck_after(monkeypatch, 4)
    loader = imagefolder.train_loader(spec(jpeg_tree, workers=1))
    next(iter(loader))
    worker = multiprocessing.active_children()[0]
    try:
        t0 = time.monotonic()
        loader.close()
        assert not worker.is_alive() and time.monotonic() - t0 < 10
    finally:
        if worker.is_alive():  # else multiprocessing's exit handler would wait for it, 600 s
            worker.kill()
            worker.join()


def test_a_stalled_loader_fails_after_data_timeout_s_naming_it(jpeg_tree, monkeypatch):
    _stuck_after(monkeypatch, 4)
    loader = imagefolder.train_loader(spec(jpeg_tree, workers=1, timeout_s=1.5))
    batches = iter(loader)
    next(batches)

    def waited_for_ever(signum, frame):
        raise AssertionError("no timeout: the loader would wait for ever")
    old = signal.signal(signal.SIGALRM, waited_for_ever)
    signal.alarm(15)
    try:
        t0 = time.monotonic()
        with pytest.raises(LoaderStalled, match=r"^the training loader's workers sent no batch in 1\.5 s "
                                                r"\(data\.timeout_s\): a worker is stuck"):
            next(batches)
        assert 1.4 < time.monotonic() - t0 < 5
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        loader.close()


def test_the_walk_skips_hidden_files_and_folders(tmp_path):
    """A tree copied from a Mac holds AppleDouble files (``._x.JPEG``, not images) and ``.DS_Store``; a
    notebook leaves ``.ipynb_checkpoints``: none of them is listed, so none becomes a bad image or a class."""
    from training import files
    for rel in ("a/x.JPEG", "a/._x.JPEG", "a/.DS_Store", "a/.ipynb_checkpoints/y.JPEG", "b/z.JPEG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [(os.path.relpath(d, tmp_path), f) for d, f in files.walk(str(tmp_path))] == \
        [(".", []), ("a", ["x.JPEG"]), ("b", ["z.JPEG"])]
