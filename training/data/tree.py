"""The ImageFolder tree index every file-based backend (torchvision, DALI) shares.

Class discovery (labels in sorted class order, like torchvision's ImageFolder), the file index,
bad-image detection at index time, and the per-epoch shard of a rank. Bad images are found by
reading each file's header and tail once, the ranks of a group sharing the work, then cached beside
the data (numpy, never pickle), so every rank drops the same files before sharding and batch counts
stay equal across ranks. The cache holds each file's (size, mtime_ns): a file replaced in place since
is read again, not served stale.
"""
from __future__ import annotations

import hashlib
import math
import os
import socket
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from training import dist, files, headers
from training.data import DataError, LoaderSpec
from training.phases import DataPhase, rank_train_images

INDEX_VERSION = 3  # 2: a JPEG or PNG with bytes after its end marker is kept if it decodes; 3: file stats
STAT_CHUNK = 4096  # files per stat task: few tasks, so the pool costs little on a local disk
PROCESS_MIN = 10_000  # headers to read before processes pay for their start (~0.2 s each)


def log(msg: str) -> None:
    print(f"loader: {msg}", file=sys.stderr, flush=True)


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


def check_same_classes(train_dir: str, train: list[str], val_dir: str, val: list[str],
                       names: tuple[str, str] = ("train", "validation")) -> None:
    """Labels are indices into the sorted class list, so every split (and every phase's copy of the
    data) must hold the same class folders; ``names`` say which two are compared."""
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        what = (f"{len(only_train)} only in {names[0]} (first {only_train[0]})" if only_train
                else f"{len(only_val)} only in {names[1]} (first {only_val[0]})")
        raise DataError(f"class folders differ between {train_dir} ({len(train)}) and "
                        f"{val_dir} ({len(val)}): {what}")


def list_files(split_dir: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Relative paths of every non-hidden file under each class folder, as ImageFolder orders them."""
    rel, labels = [], []
    seen: dict[tuple[int, int], str] = {}  # every folder of the split, each read once
    for label, name in enumerate(classes):
        found = []
        try:
            # folders sorted by whole path, as ImageFolder's sorted(os.walk()): the walk goes depth
            # first, which puts a/b/ before a-c/ ('-' < '/'), and index i must be ImageFolder's
            # sample i for shard_indices to deal DistributedSampler's (imagenet18's) order
            for dirpath, filenames in sorted(files.walk(os.path.join(split_dir, name), seen)):
                rel_dir = os.path.relpath(dirpath, split_dir)
                found += [os.path.join(rel_dir, f) for f in filenames]
        except ValueError as e:  # a folder reached twice
            raise DataError(str(e)) from None
        if not found:
            raise DataError(f"class folder holds no images: {os.path.join(split_dir, name)}")
        rel += found
        labels += [label] * len(found)
    return rel, labels


def _cache_files(split_dir: str) -> list[str]:
    """Where the header index may live: beside the split (like imagenet18's sorted_idxar.p), else in
    the user cache when DATA is read-only, one per host: a home shared by nodes that each hold their own
    copy of DATA (other mtimes) would otherwise have every node find every file changed, every start."""
    split_dir = os.path.abspath(split_dir)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha1(os.fsencode(f"{socket.gethostname()}:{split_dir}")).hexdigest()[:20]
    return [os.path.join(os.path.dirname(split_dir), f".{os.path.basename(split_dir)}-index.npz"),
            os.path.join(home, "training-data-index", f"{key}.npz")]


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1)))  # I/O-bound: a network file system's latency


def _cores() -> int:
    """The cores this rank may use: those it may run on, shared with the other ranks of its machine."""
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, mine // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _probe(split_dir: str, rel: Sequence[str]) -> list[tuple[int, int] | str]:
    """Each file's probe_image. Reading a header is Python work under the GIL, so threads overlap
    only the waits of a network file system; many files are shared among processes, one per core."""
    paths = [os.path.join(split_dir, p) for p in rel]
    if len(paths) >= PROCESS_MIN and (cores := _cores()) > 1:
        return headers.probe_in_processes(paths, cores)
    with _pool() as pool:
        return list(pool.map(headers.probe_image, paths))


def _group() -> tuple[int, int]:
    """(rank, world size) of the process group whose ranks index together; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shared_probe(split_dir: str, rel: list[str], digest: str,
                  todo: list[int] | None) -> dict[int, tuple[int, int] | str]:
    """Probe the files ``todo`` names (None: every file), the work shared out among the ranks of the
    process group: each probes a slice of what any rank needs and they exchange the results, so a
    first index costs each of W ranks 1/W of the headers where every rank read them all. The exchange
    also checks that every rank lists the same files: a machine whose copy of DATA differs would deal
    other samples and another number of batches, and hang the group at the end of its first epoch."""
    rank, world = _group()
    if world == 1:
        need: Sequence[int] = range(len(rel)) if todo is None else todo
    else:
        everyone = dist.gather_objects((digest, len(rel), socket.gethostname(), todo))
        for r, (their_digest, n, host, _) in enumerate(everyone):
            if their_digest != everyone[0][0]:
                n0, host0 = everyone[0][1], everyone[0][2]
                raise DataError(f"ranks list different files in {split_dir}: rank {r} ({host}) {n}, rank 0 "
                                f"({host0}) {n0}{' of other names' if n == n0 else ''}: every machine's copy of "
                                "the data must hold the same files")
        wanted = [t for *_, t in everyone]
        need = range(len(rel)) if None in wanted else sorted(set().union(*wanted))
    if not need:
        return {}
    loud = rank == 0 and len(need) >= PROCESS_MIN  # minutes for ImageNet: say what the wait is
    if loud:
        shared = f" ({world} ranks share it)" if world > 1 else ""
        log(f"reading the headers of {len(need)} images in {split_dir}{shared}; the index is cached for later starts")
    start = time.perf_counter()
    mine = _probe(split_dir, [rel[i] for i in need[rank::world]])
    parts = dist.gather_objects(mine) if world > 1 else [mine]
    if loud:
        log(f"read {len(need)} headers in {time.perf_counter() - start:.1f} s")
    found = {i: probe for r, part in enumerate(parts) for i, probe in zip(need[r::world], part)}
    return found if todo is None else {i: found[i] for i in todo}


def file_stats(split_dir: str, rel: Sequence[str]) -> np.ndarray:
    """(size, mtime_ns) of each file, int64 (n, 2); (-1, -1) for one gone since the listing. The walk
    lists names only (os.walk reads no inode), so this is one stat per file: threads, because on a
    network file system each may be a round trip."""
    def chunk(start: int) -> list[tuple[int, int]]:
        out = []
        for p in rel[start:start + STAT_CHUNK]:
            try:
                st = os.stat(os.path.join(split_dir, p))
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1))
        return out
    with _pool() as pool:
        rows = [r for part in pool.map(chunk, range(0, len(rel), STAT_CHUNK)) for r in part]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _load_cache(files: list[str], digest: str, n: int) -> tuple[np.ndarray, dict[int, str], np.ndarray] | None:
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as z:  # never pickle: the cache may be shared
                if int(z["version"]) != INDEX_VERSION or str(z["digest"]) != digest or z["stat"].shape != (n, 2):
                    continue
                return z["wh"], {int(i): str(w) for i, w in zip(z["bad_idx"], z["bad_why"])}, z["stat"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return None


def _save_cache(files: list[str], digest: str, wh: np.ndarray, bad: dict[int, str], stat: np.ndarray) -> None:
    """Atomic (temp + rename, so concurrent ranks never read half a file); never fails."""
    for path in files:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, version=np.array(INDEX_VERSION), digest=np.array(digest), wh=wh, stat=stat,
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
    """Index a split: list files, probe each header once (cached, keyed by the file list; a file whose
    size or mtime changed is probed again), then stop on the first bad image ('error') or drop every
    bad one with a warning line ('skip')."""
    rel, labels = list_files(split_dir, classes)
    digest = hashlib.sha1(b"\n".join(os.fsencode(p) for p in rel)).hexdigest()
    stat = file_stats(split_dir, rel)
    files = _cache_files(split_dir)
    cached = _load_cache(files, digest, len(rel))
    if cached is None:
        wh, bad, todo, changed = np.zeros((len(rel), 2), dtype=np.int32), {}, None, []
    else:
        wh, bad, cached_stat = cached
        # A file replaced in place (same name, new size or mtime) may have another size, which
        # rect_val and DALI's crops read from here: probe it again. So are the files named
        # unreadable (the warning invites replacing them), even with an unchanged stat.
        changed = np.flatnonzero((cached_stat != stat).any(axis=1)).tolist()
        todo = sorted(set(changed) | set(bad))
    fixed = False
    for i, probe in _shared_probe(split_dir, rel, digest, todo).items():
        if isinstance(probe, tuple):
            fixed |= bad.pop(i, None) is not None
            wh[i] = probe
        else:
            bad[i], wh[i] = probe, (0, 0)
    if cached is None or changed or fixed:
        _save_cache(files, digest, wh, bad, stat)
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


def index_later_phases(spec: LoaderSpec, phases: Sequence[DataPhase]) -> dict[str, int]:
    """Read now the image headers of the data copies that phases after ``spec.phase`` read
    (DATA-sz/352, DATA, ...): with data.bad_images=error a corrupt image there, or a copy with no
    readable image, stops the run before anything is written, not at the epoch its phase starts.
    The index is cached, so the phase's loaders read it back then; quiet, as they name what they skip.
    Returns the usable images of each training copy it read."""
    seen = {spec.train_dir, spec.val_dir}  # spec's own loaders are built: indexed already
    counts = {}
    for ph in phases:
        if ph.keep_dl or ph.start <= spec.phase.start:
            continue
        later = replace(spec, phase=ph)
        for d in (later.train_dir, later.val_dir):
            if d not in seen:
                seen.add(d)
                index = index_tree(d, find_classes(d), spec.bad_images, verbose=False)
                if d == later.train_dir:
                    counts[d] = len(index.paths)
    return counts


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
    """Batches per rank per epoch: ceil(rank_train_images / bs), on every rank."""
    return math.ceil(rank_train_images(n, world_size, batch_size) / batch_size)


def shard_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's training batches of an epoch: its ``shard_indices`` up to ``rank_train_images``."""
    order = shard_indices(n, seed, epoch, rank, world_size)[:rank_train_images(n, world_size, batch_size)]
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
