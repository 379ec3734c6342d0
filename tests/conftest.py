"""Shared test fixtures: real CIFAR-10 materialised from ../shared into a cache, generated JPEG trees,
and killing the whole tree of processes a test started (torchrun agents and their workers)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from procs import run_bounded

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))
CACHE = Path(os.environ.get("TEST_DATA_CACHE", REPO / ".cache" / "test-data"))
FIXTURE_EVENTS = SHARED / "fixtures" / "imagenet18-events"

# One distinct colour per class, so a test can check a label from the pixels alone.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


def materialize_cifar(fmt: str) -> Path:
    """Write the real CIFAR-10 in ``fmt`` (batches | imagefolder | npz) once into the cache."""
    out = CACHE / f"cifar10-{fmt}"
    done = out / ".done"
    if not done.exists():
        script = SHARED / "datasets" / "cifar10" / "materialize.py"
        if not script.exists():
            pytest.skip(f"real CIFAR-10 not found at {script}")
        args = [sys.executable, str(script), str(out)]
        if fmt != "batches":
            args += ["--format", fmt]
        r = run_bounded(args, cwd=REPO, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        done.touch()
    return out


@pytest.fixture(scope="session")
def cifar_batches() -> Path:
    """A dir holding ``cifar-10-batches-py`` (the torchvision layout) of the real data."""
    return materialize_cifar("batches")


@pytest.fixture(scope="session")
def cifar_imagefolder() -> Path:
    """A dir holding ``train/<class>/*.png`` and ``test/<class>/*.png`` of the real data."""
    return materialize_cifar("imagefolder")


def make_jpeg_tree(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                   seed: int = 0, splits: tuple[str, ...] = ("train", "validation")) -> Path:
    """An ImageNet-style tree ``root/{train,validation}/<class>/*.JPEG`` of varied sizes and aspect
    ratios (wide, tall, square), each image a solid class colour (PALETTE) with mild noise."""
    rng = np.random.default_rng(seed)
    for split in splits:
        n = train_per_class if split == "train" else val_per_class
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
                if i % 3 == 0:
                    w = int(h * rng.uniform(1.5, 2.2))  # wide
                elif i % 3 == 1:
                    h = int(w * rng.uniform(1.5, 2.2))  # tall
                px = np.empty((h, w, 3), np.int16)
                px[:] = PALETTE[c]
                px += rng.integers(-8, 9, size=px.shape, dtype=np.int16)
                Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(d / f"img_{i:04d}.JPEG", quality=92)
    return root


@pytest.fixture
def jpeg_tree(tmp_path: Path) -> Path:
    return make_jpeg_tree(tmp_path / "data")


@pytest.fixture
def one_thread():
    """For a training run inside the test process: one thread, as the subprocess runs get
    (OMP_NUM_THREADS=1), so the shared 2-core machine is not oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: torchrun starts each worker in a session of its own, so killing
    the agent's process group alone would leave the workers running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found += (kids := children.get(todo.pop(), []))
        todo += kids
    return found


def alive(pid: int) -> bool:
    """Running (a zombie left for an init that does not reap counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_tree(pid: int) -> None:
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p, signal.SIGKILL)  # the group p leads, if any (a worker's data loaders)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
