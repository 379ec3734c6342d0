"""Atomic checkpoints: temp file + fsync + rename, keep the last K, fall back past corrupt ones.

A checkpoint holds everything needed to continue a run exactly: the unwrapped model, optimizer,
grad scaler, the next epoch to run, the global step, the resolved config and the schedule, and the
run's start time (so a resumed run's hours continue the original clock). No RNG state: a run
resumes at an epoch boundary, where the loop reseeds from (seed, epoch) anyway.
Loading uses ``weights_only=True``: a checkpoint from an untrusted place cannot run code.
A CRC-32 of every tensor's bytes is stored inside and checked on load, so a checkpoint damaged
after it was written (bit rot, a bad copy) is refused like a truncated one, not trained on.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")
_TEMP = re.compile(r"^\.epoch_\d{4,}\.pt\..*\.tmp$")  # atomic_save's temp files


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, wrong architecture, missing); one line."""


def checkpoint_dir(logdir: str | os.PathLike) -> Path:
    return Path(logdir) / "checkpoints"


def path_for(logdir: str | os.PathLike, epoch: int) -> Path:
    return checkpoint_dir(logdir) / f"epoch_{epoch:04d}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same dir, fsync, then rename: a crash or a full disk leaves
    either the old file set or the new one, never a torn file under a checkpoint name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def list_checkpoints(logdir: str | os.PathLike) -> list[Path]:
    """Epoch checkpoints in the run's dir, oldest first."""
    d = checkpoint_dir(logdir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save(state: dict, logdir: str | os.PathLike, epoch: int, keep: int) -> Path:
    """Save the checkpoint taken after ``epoch`` epochs, then prune all but the newest ``keep``."""
    path = path_for(logdir, epoch)
    payload = {"format": FORMAT, **state}
    payload["checksum"] = tensor_checksum(payload)
    atomic_save(payload, path)
    # Pruning is housekeeping: the new checkpoint is safe, so a failure here only warns. Temp files
    # of a writer killed mid-save (SIGKILL skips atomic_save's cleanup) go too: one writer per logdir.
    stale = [p for p in path.parent.iterdir() if _TEMP.match(p.name)]
    for old in (list_checkpoints(logdir)[:-keep] if keep > 0 else []) + stale:
        try:
            old.unlink(missing_ok=True)
        except OSError as e:
            print(f"warning: could not remove old checkpoint file {old} ({e.strerror or e})", file=sys.stderr)
    return path


def tensor_checksum(obj: Any) -> int:
    """CRC-32 of the bytes of every tensor in ``obj`` (nested dicts/lists), in traversal order;
    the ``checksum`` entry itself is left out."""
    crc = 0

    def walk(x: Any) -> None:
        nonlocal crc
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            crc = zlib.crc32(t.view(torch.uint8).numpy() if t.numel() else b"", crc)
        elif isinstance(x, dict):
            for k, v in x.items():
                if k != "checksum":
                    walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return crc


def load(path: str | os.PathLike) -> dict:
    """Load and validate one checkpoint; CheckpointError if it is missing, truncated or foreign."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except Exception as e:  # truncated zip, bad pickle, disallowed global: all mean unusable
        raise CheckpointError(f"checkpoint {path}: unreadable ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None
    required = ("format", "model", "optimizer", "epoch", "step", "config", "arch")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in required):
        raise CheckpointError(f"checkpoint {path}: not a checkpoint of this trainer")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {ckpt['format']}, expected {FORMAT}")
    if "checksum" in ckpt and tensor_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointError(f"checkpoint {path}: corrupt (tensor checksum mismatch)")
    return ckpt


def latest_good(logdir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; corrupt newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(logdir)):
        try:
            return path, load(path)
        except CheckpointError as e:
            print(f"warning: {e}; falling back to an older checkpoint", file=sys.stderr)
    return None
