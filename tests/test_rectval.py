"""imagenet18's rectangular validation: the crop rule, batching across ranks, the cached size index."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from training import headers
from training.config import ConfigError
from training.data import Backend, LoaderSpec, PhaseLoaders, get_backend
from training.data import imagefolder, tree
from training.data.rectval import ValBatch, crop_hw, val_batches
from training.phases import val_batch_size
from training.phases import DataPhase

# (width, height) -> aspect ratios 2.0, 1.0, 0.5, 1.5, 0.75, 1.2
SIZES = [(200, 100), (100, 100), (100, 200), (150, 100), (90, 120), (120, 100)]
# Sorted by ratio: 2 (0.5), 4 (0.75), 1 (1.0), 5 (1.2), 3 (1.5), 0 (2.0). In pairs, mean ratios
# 0.625 -> tall: int(64 / 0.625) = 102 -> 96 x 64; 1.1 -> int(70.4) = 70 -> 64 x 64;
# 1.75 -> int(112.0) = 112 -> 64 x 112.
EXPECTED = [ValBatch((2, 4), (96, 64)), ValBatch((1, 5), (64, 64)), ValBatch((3, 0), (64, 112))]


def test_crop_rule_known_answers():
    assert crop_hw(4 / 3, 128) == (128, 168)  # int(170.67) = 170 -> 168
    assert crop_hw(0.75, 128) == (168, 128)
    assert crop_hw(1.0, 224) == (224, 224)
    assert crop_hw(1.0, 100) == (100, 96)  # imagenet18 floors the long side even when square
    assert crop_hw(2.2, 288) == (288, 632)  # int(633.6) = 633 -> 632


def test_batches_known_answers_and_rank_split():
    assert val_batches(SIZES, 2, 64, 0, 1, rect=True) == EXPECTED
    assert val_batches(SIZES, 2, 64, 0, 2, rect=True) == EXPECTED[:2]
    assert val_batches(SIZES, 2, 64, 1, 2, rect=True) == EXPECTED[2:]
    assert val_batches(SIZES, 4, 32, 0, 1, rect=False) == [ValBatch((0, 1, 2, 3), (32, 32)),
                                                            ValBatch((4, 5), (32, 32))]


@pytest.mark.parametrize("world,bs,rect", list(itertools.product((1, 2, 3, 8), (1, 3, 5), (False, True))))
def test_every_image_exactly_once_across_ranks(world, bs, rect):
    rng = np.random.default_rng(world * 10 + bs)
    sizes = [tuple(int(v) for v in rng.integers(20, 200, 2)) for _ in range(23)]
    seen = [i for r in range(world) for b in val_batches(sizes, bs, 64, r, world, rect) for i in b.indices]
    assert sorted(seen) == list(range(23))


def _tree(root: Path) -> Path:
    """validation/a/img{i}.JPEG of SIZES (index i is file i) and a one-image train/a."""
    for split, sizes in (("validation", SIZES), ("train", SIZES[:1])):
        d = root / split / "a"
        d.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h), (200, 30, 30)).save(d / f"img{i}.JPEG")
    return root


def _spec(root: Path, world: int = 1, rank: int = 0) -> LoaderSpec:
    phase = DataPhase(start=0, size=64, batch_size=2, train_dir="", val_dir="", min_scale=0.35,
                      rect_val=True, keep_dl=False)
    return LoaderSpec(root=str(root), phase=phase, rank=rank, world_size=world,
                      device=torch.device("cpu"), workers=0, seed=0)


def test_rect_batches_from_real_files(tmp_path):
    loader = imagefolder.val_loader(_spec(_tree(tmp_path / "data")))
    shapes = [tuple(x.shape) for x, _ in loader]
    assert shapes == [(2, 3, *b.hw) for b in EXPECTED]
    r0 = [tuple(x.shape) for x, _ in imagefolder.val_loader(_spec(tmp_path / "data", 2, 0))]
    r1 = [tuple(x.shape) for x, _ in imagefolder.val_loader(_spec(tmp_path / "data", 2, 1))]
    assert r0 + r1 == shapes


def test_size_index_cached_beside_data_and_invalidated(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    first = tree.index_tree(split, ["a"])
    cache = root / ".validation-index.npz"
    assert cache.is_file()
    with np.load(cache, allow_pickle=False) as z:  # plain arrays: readable without pickle
        assert z["wh"].tolist() == [list(s) for s in SIZES]
    calls = []
    real_probe = headers.probe_image
    monkeypatch.setattr(headers, "probe_image", lambda p: calls.append(p) or real_probe(p))
    assert tree.index_tree(split, ["a"]).sizes == first.sizes == SIZES
    assert calls == []  # served from the cache
    Image.new("RGB", (50, 70)).save(root / "validation" / "a" / "img9.JPEG")
    assert tree.index_tree(split, ["a"]).sizes == SIZES + [(50, 70)]
    assert len(calls) == 7  # the file list changed: every header read again


def test_a_replaced_unreadable_file_is_read_again_from_a_cached_index(tmp_path, monkeypatch):
    """The skip warning invites replacing the file; a rerun must then use it, not the cached verdict,
    and probe only the files the cache holds as bad."""
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    path = root / "validation" / "a" / "img0.JPEG"
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])
    assert str(path) in tree.index_tree(split, ["a"], verbose=False).skipped
    path.write_bytes(good)
    calls = []
    real_probe = headers.probe_image
    monkeypatch.setattr(headers, "probe_image", lambda p: calls.append(p) or real_probe(p))
    again = tree.index_tree(split, ["a"], verbose=False)
    assert not again.skipped and again.sizes == SIZES and calls == [str(path)]
    assert tree.index_tree(split, ["a"], verbose=False).sizes == SIZES and calls == [str(path)]  # cached as good


def test_a_file_replaced_in_place_is_read_again_from_a_cached_index(tmp_path, monkeypatch):
    """Same names, other pixels: the cache is keyed on the file list, so only each file's (size,
    mtime_ns) tells. A stale size would give rect_val (and DALI's crops) the old aspect ratio."""
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    assert tree.index_tree(split, ["a"]).sizes == SIZES
    calls = []
    real_probe = headers.probe_image
    monkeypatch.setattr(headers, "probe_image", lambda p: calls.append(p) or real_probe(p))
    wide, square = root / "validation" / "a" / "img2.JPEG", root / "validation" / "a" / "img1.JPEG"
    Image.new("RGB", (240, 80), (200, 30, 30)).save(wide)  # overwritten in place: 0.5 -> 3.0
    assert tree.index_tree(split, ["a"]).sizes == [*SIZES[:2], (240, 80), *SIZES[3:]]
    assert calls == [str(wide)]
    st = square.stat()
    os.utime(square, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime: read again
    assert tree.index_tree(split, ["a"]).sizes[2] == (240, 80) and calls == [str(wide), str(square)]
    tree.index_tree(split, ["a"])
    assert calls == [str(wide), str(square)]  # the new stats are cached


def test_a_bad_file_is_read_again_even_with_its_stat_unchanged(tmp_path, monkeypatch):
    """A file that failed for a reason its stat does not show (a read error, or a fix that kept size
    and mtime) is not kept bad forever: the few cached bad files are probed at every index, and one
    found good is cached as good."""
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    path = root / "validation" / "a" / "img0.JPEG"
    good = path.read_bytes()
    path.write_bytes(bytes(len(good)))  # same length, no image
    assert str(path) in tree.index_tree(split, ["a"], verbose=False).skipped
    st = path.stat()
    path.write_bytes(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not tree.index_tree(split, ["a"], verbose=False).skipped
    calls = []
    real_probe = headers.probe_image
    monkeypatch.setattr(headers, "probe_image", lambda p: calls.append(p) or real_probe(p))
    assert not tree.index_tree(split, ["a"], verbose=False).skipped and calls == []  # now cached as good


def test_read_only_data_falls_back_or_skips_caching(tmp_path, monkeypatch):
    """The user cache only when DATA is read-only: one cache, not two to keep in step."""
    root = _tree(tmp_path / "data")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # nothing can be created under a regular file, even by root
    fallback = tmp_path / "user-cache" / "v.npz"
    monkeypatch.setattr(tree, "_cache_files", lambda d: [str(tmp_path / "beside.npz"), str(fallback)])
    assert tree.index_tree(str(root / "validation"), ["a"]).sizes == SIZES
    assert (tmp_path / "beside.npz").is_file() and not fallback.parent.exists()
    monkeypatch.setattr(tree, "_cache_files", lambda d: [str(blocker / "v.npz"), str(fallback)])
    assert tree.index_tree(str(root / "validation"), ["a"]).sizes == SIZES
    assert fallback.is_file()
    monkeypatch.setattr(tree, "_cache_files", lambda d: [str(blocker / "v.npz")])
    assert tree.index_tree(str(root / "validation"), ["a"]).sizes == SIZES


def test_the_user_cache_is_one_per_host_and_the_one_beside_the_data_is_shared(tmp_path, monkeypatch):
    """A home shared by nodes that each hold their own copy of a read-only DATA (other mtimes): one
    cache for all would have every node find every file changed at every start and write it back."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    split = str(tmp_path / "data" / "train")
    monkeypatch.setattr(tree.socket, "gethostname", lambda: "node1")
    beside1, home1 = tree._cache_files(split)
    monkeypatch.setattr(tree.socket, "gethostname", lambda: "node2")
    beside2, home2 = tree._cache_files(split)
    assert beside1 == beside2 == str(tmp_path / "data" / ".train-index.npz")
    assert home1 != home2 and Path(home1).parent == Path(home2).parent == tmp_path / "home" / "training-data-index"


# (133, 100): 72 * 1.33 = 95.76, floored to 95 as torchvision does, not rounded
@pytest.mark.parametrize("wh", [(300, 150), (150, 300), (200, 200), (257, 131), (131, 257), (64, 41), (41, 64),
                                (133, 100), (100, 133)])
@pytest.mark.parametrize("crop", [(64, 64), (64, 120), (120, 64), (64, 72), (64, 73), (70, 64)])
def test_val_geometry_is_torchvisions_resize_and_center_crop(wh, crop):
    """Known answer: torchvision's resize(img, int(size * 1.14)) + center_crop(img, crop) on an image
    whose pixels are their own coordinates (a crop larger than the image pads with 0)."""
    import torch
    import torchvision.transforms.functional as TF
    from training.data.rectval import val_geometry
    w, h = wh
    size = 64
    g = val_geometry(w, h, size, crop)
    rh, rw = g.resize_hw
    resized = TF.resize(torch.zeros(1, h, w), int(size * 1.14), antialias=True)
    assert tuple(resized.shape[1:]) == (rh, rw)
    yy, xx = torch.meshgrid(torch.arange(1, rh + 1.0), torch.arange(1, rw + 1.0), indexing="ij")
    ref = TF.center_crop(torch.stack([yy, xx]), list(crop))
    top, left = g.anchor_yx
    ys, xs = torch.arange(top + 1.0, top + 1 + crop[0]), torch.arange(left + 1.0, left + 1 + crop[1])
    ours_y = torch.where((ys >= 1) & (ys <= rh), ys, 0.0)[:, None].expand(crop)
    ours_x = torch.where((xs >= 1) & (xs <= rw), xs, 0.0)[None, :].expand(crop)
    inside = (ours_y > 0) & (ours_x > 0)
    assert torch.equal(ref[0], torch.where(inside, ours_y, 0.0)) and torch.equal(ref[1], torch.where(inside, ours_x, 0.0))


@pytest.mark.parametrize("size,bs,val_bs", [(128, 64, 512), (128, 1024, 1024), (224, 128, 256), (224, 300, 300),
                                            (288, 32, 128), (288, 256, 256), (160, 8, 128), (192, 128, 128)])
def test_val_batch_size_is_imagenet18s_rule(size, bs, val_bs):
    assert val_batch_size(size, bs) == val_bs


class _Recording:
    """A backend that records the phase each loader was built for."""

    def __init__(self):
        self.built: list[tuple[str, DataPhase]] = []
        self.epochs: list[int] = []  # set_epoch's calls, on either loader

    def make(self, kind: str):
        def build(spec: LoaderSpec) -> SimpleNamespace:
            self.built.append((kind, spec.phase))
            return SimpleNamespace(batch_size=spec.phase.batch_size, set_epoch=self.epochs.append,
                                   set_batch_size=lambda b: None, close=lambda: None)
        return build


@pytest.mark.parametrize("override,expected", [(0, [512, 512, 256, 128]), (5, [5, 5, 5, 5])])
def test_phase_loaders_build_validation_with_the_val_batch(override, expected):
    phases = (DataPhase(0, 128, 64, "-sz/160", "-sz/160", 0.08, False, False),
              DataPhase(1, 128, 96, "-sz/160", "-sz/160", 0.08, False, True),  # keep_dl: val loader kept
              DataPhase(2, 224, 64, "", "", 0.087, False, False),
              DataPhase(3, 288, 32, "", "", 0.5, True, False))
    rec = _Recording()
    loaders = PhaseLoaders(Backend("rec", rec.make("train"), rec.make("val")),
                           _spec(Path("unused")), phases, val_batch_size=override)
    vals = [loaders.for_epoch(e)[1].batch_size for e in range(4)]
    assert vals == expected
    assert rec.epochs == [0, 1, 2, 3]  # each epoch its own shuffle, a kept (keep_dl) loader's too
    # training loaders keep the phase's own batch; validation differs from it only in the batch
    assert [p.batch_size for k, p in rec.built if k == "train"] == [64, 64, 32]
    assert [p for k, p in rec.built if k == "val"] == [replace(phases[i], batch_size=expected[i]) for i in (0, 2, 3)]
    with pytest.raises(ConfigError, match="data.val_batch_size must be 0"):
        PhaseLoaders(loaders.backend, loaders.base, phases, val_batch_size=-1)


@pytest.mark.parametrize("backend", ["torchvision", "dali"])
@pytest.mark.parametrize("override,shapes", [
    (0, [(6, 3, 64, 72)]),  # max(2, 128) images: one chunk, mean ratio 1.15833 -> int(74.13) = 74 -> 72
    (2, [(2, 3, *b.hw) for b in EXPECTED])])
def test_rect_val_chunks_are_the_val_batch(tmp_path, backend, override, shapes):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    loaders = PhaseLoaders(get_backend(backend), _spec(_tree(tmp_path / "data")), (_spec(tmp_path).phase,),
                           val_batch_size=override)
    _, val = loaders.for_epoch(0)
    assert [tuple(x.shape) for x, _ in val] == shapes
    loaders.close()


# A rank of a 2-process gloo group (a FileStore, no torchrun): indexes its split twice and writes
# what it got and which files it probed each time.
_RANK_SCRIPT = '''
import json, sys
import torch.distributed as d
from training import dist, headers
from training.data import DataError, tree
rank, store, split, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
d.init_process_group("gloo", store=d.FileStore(store, 2), rank=rank, world_size=2)
probed, real = [], headers.probe_image
headers.probe_image = lambda p: probed.append(p) or real(p)
runs = []
try:
    for _ in range(2):
        index = tree.index_tree(split, tree.find_classes(split), verbose=False)
        runs.append({"paths": index.paths, "sizes": index.sizes, "skipped": index.skipped, "probed": sorted(probed)})
        probed.clear()
except DataError as e:
    runs.append({"error": str(e)})
dist.teardown()  # as the trainer ends its group: a bare destroy hung 1 exit in 4 on torch 2.4.1
json.dump(runs, open(out, "w"))
'''


def _index_in_two_ranks(tmp_path: Path, splits: tuple[str, str]) -> list[list[dict]]:
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"), splits[r],
                               str(tmp_path / f"rank{r}.json")], env=env, start_new_session=True)
             for r in range(2)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_ranks_of_a_group_share_the_header_reads_and_get_the_same_index(tmp_path):
    """A first index of ImageNet reads 1.28M headers, about one core's work per rank (the GIL): each of
    W ranks reads 1/W of them, and every rank gets the whole index, as one process gets it."""
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    cut = root / "validation" / "a" / "img3.JPEG"
    cut.write_bytes(cut.read_bytes()[:200])
    alone = tree.index_tree(split, ["a"], verbose=False)
    (root / ".validation-index.npz").unlink()
    ranks = _index_in_two_ranks(tmp_path, (split, split))
    files = sorted(str(p) for p in (root / "validation" / "a").iterdir())
    for first, second in ranks:
        assert (first["paths"], [tuple(s) for s in first["sizes"]], first["skipped"]) == \
            (alone.paths, alone.sizes, alone.skipped)
        assert (second["paths"], second["sizes"], second["skipped"]) == (first["paths"], first["sizes"], first["skipped"])
    assert [len(r[0]["probed"]) for r in ranks] == [3, 3]  # a half each, together every file once
    assert sorted(ranks[0][0]["probed"] + ranks[1][0]["probed"]) == files
    assert ranks[0][1]["probed"] + ranks[1][1]["probed"] == [str(cut)]  # from the cache: the bad file, once


def test_ranks_that_list_different_files_are_refused_naming_both(tmp_path):
    """Two machines whose copies of DATA differ would deal other samples and other batch counts, and
    the group would hang at its first epoch end: every rank says so before anything is read."""
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    (b / "validation" / "a" / "img5.JPEG").unlink()
    ranks = _index_in_two_ranks(tmp_path, (str(a / "validation"), str(b / "validation")))
    host = socket.gethostname()
    for r, split in enumerate((a, b)):
        assert ranks[r] == [{"error": f"ranks list different files in {split / 'validation'}: rank 1 ({host}) 5, "
                                      f"rank 0 ({host}) 6: every machine's copy of the data must hold the same files"}]


def test_many_headers_are_read_by_processes_with_the_same_answers(tmp_path, monkeypatch, capsys):
    """Reading a header is Python under the GIL: threads only overlap the waits, so a large index is
    read by fresh interpreters, a share each. Their answers are the threads' answers, whatever the
    file names hold (a newline, bytes that are not UTF-8)."""
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    cut = root / "validation" / "a" / "img3.JPEG"
    cut.write_bytes(cut.read_bytes()[:200])
    (root / "validation" / "a" / "img1.JPEG").rename(root / "validation" / "a" / "odd\nname.JPEG")
    os.rename(root / "validation" / "a" / "img2.JPEG", os.fsencode(root / "validation" / "a") + b"/\xff.JPEG")
    threads = tree.index_tree(split, ["a"], verbose=False)
    (root / ".validation-index.npz").unlink()
    monkeypatch.setattr(tree, "PROCESS_MIN", 1)
    monkeypatch.setattr(tree, "_cores", lambda: 2)
    shares, real = [], headers.probe_in_processes
    monkeypatch.setattr(headers, "probe_in_processes", lambda paths, n: shares.append(n) or real(paths, n))
    monkeypatch.setattr(headers, "probe_image", None)  # nothing is read in this process
    capsys.readouterr()
    processes = tree.index_tree(split, ["a"], verbose=False)
    assert shares == [2]
    said = capsys.readouterr().err.splitlines()  # what the minutes of a first ImageNet index are spent on
    assert said[0] == f"loader: reading the headers of 6 images in {split}; the index is cached for later starts"
    assert re.fullmatch(r"loader: read 6 headers in \d+\.\d s", said[1]) and len(said) == 2
    assert (processes.paths, processes.sizes, processes.skipped) == (threads.paths, threads.sizes, threads.skipped)
    assert list(processes.skipped) == [str(cut)] and len(processes.paths) == 5


def test_a_header_reading_process_that_fails_says_why(tmp_path, monkeypatch):
    script = tmp_path / "fails"
    script.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setattr(headers.sys, "executable", str(script))
    with pytest.raises(RuntimeError, match=r"reading image headers failed \(exit 3\): broken"):
        headers.probe_in_processes([str(tmp_path / "x.JPEG")], 1)


def test_a_signal_while_processes_read_headers_stops_them_at_once(tmp_path, monkeypatch):
    """A rank told to stop (SIGTERM, Ctrl-C) during a first index must not wait minutes for its
    readers to finish, nor leave them running."""
    script = tmp_path / "slow"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    monkeypatch.setattr(headers.sys, "executable", str(script))
    started, real_popen = [], subprocess.Popen
    monkeypatch.setattr(headers.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])

    def stop(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(1)
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            headers.probe_in_processes([str(tmp_path / f"{i}.JPEG") for i in range(4)], 2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        for p in started:
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - t < 10
    assert len(started) == 2 and all(p.returncode == -signal.SIGKILL for p in started)


def test_the_cores_of_a_rank_are_its_machines_shared_by_its_local_ranks(monkeypatch):
    monkeypatch.setattr(tree.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert tree._cores() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert tree._cores() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert tree._cores() == 16


def test_a_small_first_index_is_read_without_a_word(tmp_path, capsys):
    """The lines on reading headers are for the minutes of a large first index (PROCESS_MIN files
    and up): a small one takes a blink, and the loader's own lines stay the run's only ones."""
    split = str(_tree(tmp_path / "data") / "validation")
    capsys.readouterr()
    assert tree.index_tree(split, ["a"]).sizes == SIZES and capsys.readouterr().err == ""


def test_the_index_is_saved_only_when_what_it_holds_changed(tmp_path, monkeypatch):
    """Every rank of every start indexes each split: a cache rewritten each time would cost a write
    of the whole index (and a rename under concurrent ranks) for nothing."""
    root = _tree(tmp_path / "data")
    split = str(root / "validation")
    saved, real_save = [], tree._save_cache
    monkeypatch.setattr(tree, "_save_cache", lambda *a: saved.append(a[-1].shape) or real_save(*a))
    tree.index_tree(split, ["a"], verbose=False)
    tree.index_tree(split, ["a"], verbose=False)
    assert saved == [(6, 2)]  # the first index only
    Image.new("RGB", (80, 40)).save(root / "validation" / "a" / "img4.JPEG")  # replaced in place
    assert tree.index_tree(split, ["a"], verbose=False).sizes[4] == (80, 40)
    tree.index_tree(split, ["a"], verbose=False)
    assert len(saved) == 2


def test_file_stats_are_each_files_size_and_mtime_ns_in_order(tmp_path, monkeypatch):
    """The cache's key for "replaced in place": every file's row, across the stat tasks, at the
    nanosecond (a copy rewritten within the same second keeps its st_mtime), -1 for a file gone."""
    root = _tree(tmp_path / "data")
    split = root / "validation"
    rel = [f"a/img{i}.JPEG" for i in range(6)]
    rel.insert(3, "a/gone.JPEG")
    os.utime(split / rel[0], ns=(0, 1_500_000_001))
    monkeypatch.setattr(tree, "STAT_CHUNK", 4)  # two tasks: rows 0-3, 4-6
    want = [[-1, -1] if "gone" in p else [(split / p).stat().st_size, (split / p).stat().st_mtime_ns] for p in rel]
    stats = tree.file_stats(str(split), rel)
    assert stats.dtype == np.int64 and stats.tolist() == want and want[0][1] == 1_500_000_001


def test_headers_are_read_by_processes_only_from_process_min_files_and_two_cores(tmp_path, monkeypatch):
    """Processes pay for their start (~0.2 s each) only on a large index, and only with a core
    to spare: one core reads as fast in this process's threads."""
    split = str(_tree(tmp_path / "data") / "validation")
    rel = [f"a/img{i}.JPEG" for i in range(6)]
    shares = []
    monkeypatch.setattr(headers, "probe_in_processes",
                        lambda paths, n: shares.append(n) or [headers.probe_image(p) for p in paths])
    monkeypatch.setattr(tree, "PROCESS_MIN", 6)
    for cores in (2, 1):
        monkeypatch.setattr(tree, "_cores", lambda: cores)
        assert tree._probe(split, rel) == SIZES
    monkeypatch.setattr(tree, "PROCESS_MIN", 7)
    monkeypatch.setattr(tree, "_cores", lambda: 2)
    assert tree._probe(split, rel) == SIZES
    assert shares == [2]  # 6 files of PROCESS_MIN=6 on 2 cores; not on 1 core, nor 6 files of 7


def test_header_processes_are_at_most_those_asked_each_a_contiguous_share(tmp_path, monkeypatch):
    split = _tree(tmp_path / "data") / "validation"
    paths = [str(split / "a" / f"img{i}.JPEG") for i in range(6)]
    fed, real_popen = [], subprocess.Popen

    class Recording(real_popen):
        def communicate(self, data=None, timeout=None):
            fed.append(data.split(b"\0"))
            return super().communicate(data, timeout)
    monkeypatch.setattr(headers.subprocess, "Popen", Recording)
    assert headers.probe_in_processes(paths[:5], 2) == SIZES[:5]
    assert headers.probe_in_processes(paths[5:], 4) == SIZES[5:]
    assert sorted(fed) == sorted([[os.fsencode(p) for p in paths[:3]], [os.fsencode(p) for p in paths[3:5]],
                                  [os.fsencode(paths[5])]])


def test_a_rank_without_the_cache_gets_every_header_while_one_with_it_reads_its_few(tmp_path, monkeypatch):
    """Caches are per host where DATA is read-only: a machine new to the group reads every header
    (its todo is None) while one with its cache needs only its bad files. The ranks then share out
    every file, and the new machine's rank gets the whole index, not only the other's few."""
    split = str(_tree(tmp_path / "data") / "validation")
    rel = [f"a/img{i}.JPEG" for i in range(6)]
    probed, real_probe = [], headers.probe_image
    monkeypatch.setattr(headers, "probe_image", lambda p: probed.append(p) or real_probe(p))
    monkeypatch.setattr(tree, "_group", lambda: (1, 2))  # rank 1 of 2; rank 0's cache names file 2 bad
    gathered = iter([lambda mine: [("digest", 6, "host0", [2]), mine],
                     lambda mine: [[SIZES[0], SIZES[2], SIZES[4]], mine]])  # rank 0 reads files 0, 2, 4
    monkeypatch.setattr(tree.dist, "gather_objects", lambda mine: next(gathered)(mine))
    assert tree._shared_probe(split, rel, "digest", None) == dict(enumerate(SIZES))
    assert probed == [os.path.join(split, rel[i]) for i in (1, 3, 5)]
