"""CIFAR pickles and the device-resident loader: reading, errors, batched augmentation."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import DataError
from training.data import cifar as cd
from training.phases import parse_schedule

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """A small data set in torchvision's cifar-100-python format (pickled dicts, real key names)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        # each image's red plane holds its fine label, so the pairing can be checked after loading
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = fine[:, None].astype(np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"filenames": [f"img{i}.png" for i in range(n)], "batch_label": f"{name} batch",
                         "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": data}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f)
    return root


def test_reads_real_cifar10(cifar_batches):
    train = cd.load_split(cifar_batches, "cifar10", train=True)
    test = cd.load_split(cifar_batches, "cifar10", train=False)
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 3, 32, 32)
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # the README's per-channel statistics of the train split
    mean = train.images[:10000].reshape(10000, 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(mean, cd.CIFAR10_MEAN, atol=0.01)
    # DIR may also name the cifar-10-batches-py folder itself
    assert len(cd.load_split(Path(cifar_batches) / "cifar-10-batches-py", "cifar10", False).labels) == 10000


def test_reads_cifar100_format(tmp_path):
    root = write_cifar100(tmp_path)
    train = cd.load_split(root, "cifar100", train=True)
    test = cd.load_split(root, "cifar100", train=False)
    assert train.images.shape == (60, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    assert len(train.classes) == 100 and train.classes[7] == "fine7"
    assert (train.images[:, 0, 0, 0] == train.labels).all()  # fine labels, paired with their images
    assert cd.ensure_data(str(root), "cifar100", download=False) == str(root)


@pytest.mark.parametrize("beside", [True, False])
def test_missing_data_hint_with_and_without_the_shared_materializer(tmp_path, monkeypatch, beside):
    script = tmp_path / "shared" / "materialize.py"
    if beside:
        script.parent.mkdir()
        script.write_text("")
    monkeypatch.setattr(cd, "MATERIALIZE", script)
    hint = f"run `python {script} {tmp_path}`" if beside else f"put torchvision's cifar-10-batches-py folder in {tmp_path}"
    with pytest.raises(DataError) as e:
        cd.ensure_data(str(tmp_path), "cifar10", download=False)
    assert str(e.value) == f"no cifar-10-batches-py in {tmp_path}: {hint} (or pass --data DIR)"


def test_missing_and_corrupt_data_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no cifar-10-batches-py in") as e:
        cd.ensure_data(str(tmp_path), "cifar10", download=False)
    assert "\n" not in str(e.value) and "DIR" in str(e.value)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with pytest.raises(DataError, match="batches.meta: missing"):
        cd.load_split(tmp_path, "cifar10")
    (d / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        cd.load_split(tmp_path, "cifar10")
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b"]}, f)
    for labels in ([0, 5], [0, 2], [-1, 1]):  # 2: one past the last of 2 classes
        with open(d / "data_batch_1", "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": labels}, f)
        with pytest.raises(DataError, match="labels outside 0..1"):
            cd.load_split(tmp_path, "cifar10")


def pattern_images(n: int, seed: int = 0) -> torch.Tensor:
    """Asymmetric, pixel-distinct images: value = (3 * (y * 32 + x) + c + 7 * i) mod 251 + 1 (never 0)."""
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    base = 3 * (y * 32 + x) + c
    return torch.stack([(base + 7 * i) % 251 + 1 for i in range(n)]).to(torch.uint8)


def make_loader(images, labels=None, **kw) -> cd.CifarTrainLoader:
    labels = torch.arange(len(images)) if labels is None else labels
    return cd.CifarTrainLoader(images, labels, [str(i) for i in range(len(images))], kw.pop("bs", 16),
                               mean=MEAN, std=STD, **kw)


def test_batches_shapes_dtype_and_label_pairing():
    n = 100
    labels = torch.arange(n) % 10
    images = (labels * 20 + 10).to(torch.uint8)[:, None, None, None].expand(n, 3, 32, 32).contiguous()
    loader = make_loader(images, labels, bs=32, dtype=torch.float16, channels_last=True, cutout=0)
    assert len(loader) == 3 and loader.num_images == n  # drop_last
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, y in loader:
            assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float16 and y.dtype == torch.int64
            assert x.is_contiguous(memory_format=torch.channels_last)
            # each image is a constant (flip and reflect-translate keep it so): it must match its label
            value = (x.float()[:, 0, 16, 16] * STD[0] + MEAN[0]) * 255
            assert torch.allclose(value, (y * 20 + 10).float(), atol=0.6)
    loader.drop_last = False
    assert len(loader) == 4 and sum(len(y) for _, y in loader) == n


def test_a_lone_last_image_is_left_out_without_drop_last():
    """cifar.drop_last=false keeps a partial last batch, but not a batch of one image: the schedule
    (phases.rank_train_images) plans the steps without it."""
    images = pattern_images(33)
    sched = parse_schedule([{"ep": 0, "sz": 32, "bs": 16}, {"ep": [0, 1], "lr": 0.1}])
    loader = make_loader(images, drop_last=False)
    assert [len(y) for _, y in loader] == [16, 16] and len(loader) == sched.iters_per_epoch(0, 33)
    loader = make_loader(pattern_images(34), drop_last=False)
    assert [len(y) for _, y in loader] == [16, 16, 2] and len(loader) == sched.iters_per_epoch(0, 34)


def test_alternating_flip_is_deterministic_and_alternates():
    images = pattern_images(64)
    loader = make_loader(images, translate=0, flip="alternate", seed=3)
    idx = torch.arange(64)
    loader.set_epoch(0)
    e0 = loader.augment(idx)
    loader.set_epoch(1)
    e1 = loader.augment(idx)
    loader.set_epoch(0)
    assert torch.equal(loader.augment(idx), e0)  # deterministic per (seed, epoch)
    assert torch.equal(e1, e0.flip(-1))  # odd epochs mirror exactly the images even epochs did not
    plain = cd.normalize(images, MEAN, STD, torch.float32, False)
    flipped = (e0 != plain).flatten(1).any(1)
    assert torch.equal(e0[flipped], plain[flipped].flip(-1))
    assert 10 < int(flipped.sum()) < 54  # a fair coin per image, fixed for the run
    loader.set_epoch(2)
    assert torch.equal(loader.augment(idx), e0)
    loader.start_run(4)  # a new seed draws new flip bits
    assert not torch.equal(loader.augment(idx), e0)
    # the epoch's order and shifts are deterministic too
    a = make_loader(images, seed=5)
    b = make_loader(images, seed=5)
    a.set_epoch(7)
    b.set_epoch(7)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))


def test_each_epoch_is_a_new_shuffle_and_the_same_one_for_the_same_epoch():
    """The order (and so the batches) changes every epoch, as a reshuffling sampler's does, and is a
    function of (seed, epoch): a resumed run at epoch 1 sees what the uninterrupted one did."""
    loader = make_loader(pattern_images(64), bs=16, seed=3)
    orders = []
    for epoch in (0, 1, 2, 1):
        loader.set_epoch(epoch)
        orders.append(torch.cat([y for _, y in loader]).tolist())
    assert all(sorted(o) == list(range(64)) for o in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0] and orders[3] == orders[1]
    fresh = make_loader(pattern_images(64), bs=16, seed=3)
    fresh.set_epoch(1)
    assert torch.cat([y for _, y in fresh]).tolist() == orders[1]


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_translate_stays_within_bounds(pad_mode):
    r = 2
    images = pattern_images(200)
    loader = make_loader(images, translate=r, pad_mode=pad_mode, flip="none", seed=1)
    idx = torch.arange(200)
    out = loader.augment(idx)
    plain = cd.normalize(images, MEAN, STD, torch.float32, False)
    mode = "constant" if pad_mode == "zeros" else "reflect"
    padded = torch.nn.functional.pad(plain, (r, r, r, r), mode=mode)
    found = set()
    for i in range(200):
        matches = [(dy, dx) for dy in range(2 * r + 1) for dx in range(2 * r + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(matches) == 1, f"image {i} is not a shift of at most {r} px"
        found.add(matches[0])
    assert len(found) == (2 * r + 1) ** 2  # every shift in [-r, r]^2 occurs


@pytest.mark.parametrize("flip, pad_mode, channels_last", [("alternate", "reflect", True), ("random", "reflect", True),
                                                          ("alternate", "zeros", False)])
def test_each_image_is_its_drawn_window_of_the_padded_image_mirrored_per_its_flip(flip, pad_mode, channels_last):
    """Flip and translate together: image i is the window at its drawn (dy, dx) of its padded
    image, then mirrored if its flip bit says so (crop, then mirror), in batches as in one gather."""
    r = 3
    images = pattern_images(40)
    loader = make_loader(images, translate=r, flip=flip, seed=6, bs=16, channels_last=channels_last, pad_mode=pad_mode)
    padded = torch.nn.functional.pad(cd.normalize(images, MEAN, STD, torch.float32, False), (r, r, r, r),
                                     mode="reflect" if pad_mode == "reflect" else "constant")
    for epoch in range(2):
        loader.set_epoch(epoch)
        idx = loader.perm[:32]
        out = torch.cat([loader.augment(idx[:16]), loader.augment(idx[16:])])
        for o, i in zip(out, idx.tolist()):
            dy, dx = loader.shifts[i].tolist()
            window = padded[i, :, dy:dy + 32, dx:dx + 32]
            assert torch.equal(o, window.flip(-1) if loader.flips[i] else window)
        assert 0 < int(loader.flips[idx].sum()) < 32 and len(set(loader.shifts[idx, 1].tolist())) > 3


def test_a_smaller_phase_size_scales_the_crops_down():
    """sz below the images' side: the same crops, flipped alike, scaled down (antialiased bilinear)."""
    images = pattern_images(24)
    loader = make_loader(images, translate=2, flip="alternate", seed=2, bs=8, channels_last=True, dtype=torch.bfloat16)
    loader.set_epoch(1)
    idx = loader.perm[:8]
    full = loader.augment(idx)
    loader.set_size(20)
    small = loader.augment(idx)
    assert small.shape == (8, 3, 20, 20) and small.dtype == torch.bfloat16
    assert small.is_contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.interpolate(full.float(), size=(20, 20), mode="bilinear", antialias=True)
    torch.testing.assert_close(small.float(), want, atol=0.02, rtol=0.01)  # the crop itself in bf16 first
    batches = list(loader)
    assert len(batches) == 3 and all(x.shape == (8, 3, 20, 20) for x, _ in batches)
    loader.set_size(32)
    assert torch.equal(loader.augment(idx), full)
    # the whole epoch in one go (cifar.epoch_augment): the same batches at the phase's size
    whole = make_loader(images, translate=2, flip="alternate", seed=2, bs=8, channels_last=True,
                        dtype=torch.bfloat16, epoch_augment=True)
    whole.set_epoch(1)
    assert next(iter(whole))[0].shape[-1] == 32  # the epoch's images made, at the images' side
    whole.set_size(20)  # after the epoch's images were made: made again at the new size
    loader.set_size(20)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(whole, loader))
    # cutout: its centres drawn over the full side land on the scaled-down image as well, each square
    # at least partly inside it (drawn last: the same crops as without cutout)
    cut, plain = (make_loader(images, translate=2, flip="random", cutout=4, seed=3, bs=8),
                  make_loader(images, translate=2, flip="random", seed=3, bs=8))
    for each in (cut, plain):
        each.set_size(16)
    cut_px = torch.cat([(a != b).any(1) for (a, _), (b, _) in zip(cut, plain)])  # (N, 16, 16)
    assert cut_px.flatten(1).any(1).all() and cut_px.flatten(1).sum(1).max() <= 16
    for bad in (0, 33):
        with pytest.raises(DataError, match=f"training image size must be 1..32 px .*got {bad}"):
            loader.set_size(bad)


def test_cutout_zeroes_one_clipped_square():
    images = pattern_images(50)
    loader = make_loader(images, translate=0, flip="none", cutout=8, seed=2)
    out = loader.augment(torch.arange(50))
    plain = cd.normalize(images, MEAN, STD, torch.float32, False)
    for i in range(50):
        cut = (out[i] != plain[i]).any(0)  # pixels changed (the pattern has no pixel at the mean)
        assert (out[i][:, cut] == 0).all()
        ys, xs = cut.nonzero(as_tuple=True)
        assert 1 <= len(ys) <= 64
        assert len(ys) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle
        assert ys.max() - ys.min() < 8 and xs.max() - xs.min() < 8
        cy, cx = loader.cut_centres[i].tolist()  # around its drawn centre: rows by y, columns by x
        assert (ys.min(), ys.max()) == (max(cy - 4, 0), min(cy + 3, 31))
        assert (xs.min(), xs.max()) == (max(cx - 4, 0), min(cx + 3, 31))


def test_colour_jitter_is_one_brightness_shift_and_contrast_scale_per_image():
    """cifar.brightness / cifar.contrast: image i becomes (x + b_i) * c_i, b_i uniform in +-brightness,
    c_i in 1 +- contrast, drawn per (seed, epoch); the shuffle, flips and shifts stay those of a run
    without jitter."""
    images = pattern_images(300)
    plain, jittered = make_loader(images, seed=4), make_loader(images, seed=4, brightness=0.3, contrast=0.2)
    for loader in (plain, jittered):
        loader.set_epoch(1)
    shifts, scales = [], []
    for (xa, ya), (xb, yb) in zip(plain, jittered):
        assert torch.equal(ya, yb)
        a, b = xa.flatten(1), xb.flatten(1)
        c = ((a - a.mean(1, keepdim=True)) * (b - b.mean(1, keepdim=True))).sum(1) / (a - a.mean(1, keepdim=True)).square().sum(1)
        shift = (b - a * c[:, None]).mean(1) / c  # b = (a + shift) * c
        torch.testing.assert_close(b, (a + shift[:, None]) * c[:, None], atol=1e-5, rtol=1e-5)
        shifts.append(shift)
        scales.append(c)
    shift, scale = torch.cat(shifts), torch.cat(scales)
    assert shift.abs().max() <= 0.3 + 1e-5 and shift.abs().max() > 0.25 and shift.std() > 0.1
    assert (scale - 1).abs().max() <= 0.2 + 1e-5 and (scale - 1).abs().max() > 0.15
    again = make_loader(images, seed=4, brightness=0.3, contrast=0.2)
    again.set_epoch(1)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(again, jittered))  # deterministic per (seed, epoch)
    idx = torch.arange(300)
    torch.testing.assert_close(jittered.augment(idx.flip(0)).flip(0), jittered.augment(idx))  # per image, not slot
    with pytest.raises(DataError, match="contrast in"):
        make_loader(images, contrast=1.0)


def test_eval_loader_in_order():
    images = pattern_images(25)
    loader = cd.CifarEvalLoader(images, torch.arange(25), ["x"], 10, mean=MEAN, std=STD)
    assert len(loader) == 3
    ys = torch.cat([y for _, y in loader])
    assert torch.equal(ys, torch.arange(25))
    x0 = next(iter(loader))[0]
    assert torch.allclose(x0, cd.normalize(images[:10], MEAN, STD, torch.float32, False))
