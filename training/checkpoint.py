"""Atomic checkpoints: temp file + fsync + rename, keep the last K, fall back past corrupt ones.

A checkpoint holds everything needed to continue a run exactly: the unwrapped model, optimizer,
grad scaler, the next epoch to run, the global step, the resolved config and the schedule, and the
run's start time (so a resumed run's hours continue the original clock). No RNG state: a run
resumes at an epoch boundary, where the loop reseeds from (seed, epoch) anyway.
Loading uses ``weights_only=True``: a checkpoint from an untrusted place cannot run code.
Every member of the zip torch.save writes (the pickle with epoch, step, lr and config, and each
tensor's bytes) carries a CRC-32, checked on load, so a checkpoint damaged after it was written (bit
rot, a bad copy) is refused like a truncated one, not trained on.

During a run, ``Checkpointer`` decides which epochs are saved (``train.checkpoint_every``,
``train.checkpoint_min_interval_s``) and writes them on a background thread from a host copy of the
state, so the step waits only for that copy; ``StopGuard`` turns SIGTERM or SIGINT into a last checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from training.config import ConfigError

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
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and (failed := _write_error(e)) is not e:
            raise failed from None  # the OSError itself, with the write that failed in its traceback
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _file_mode() -> int:
    """0666 less the umask, as open() would make the file: mkstemp's 0600 left checkpoints unreadable
    to the run's group on a shared cluster. Read, not set and reset: the writer is a thread."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = 0o022
    return 0o666 & ~mask


def _write_error(e: BaseException) -> BaseException:
    """The OSError behind ``e`` (a full disk), else ``e``: torch.save reports a write that failed in
    its zip writer as a RuntimeError ("unexpected pos"), the OSError only as that error's context."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return e


def list_checkpoints(logdir: str | os.PathLike) -> list[Path]:
    """Epoch checkpoints in the run's dir, oldest first."""
    d = checkpoint_dir(logdir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def epoch_of(path: Path) -> int:
    """The epochs done in the checkpoint ``path`` (epoch_0012.pt: 12)."""
    return int(_NAME.match(path.name).group(1))


def set_aside_after(logdir: str | os.PathLike, epoch: int) -> list[Path]:
    """Move the run's checkpoints of epochs after ``epoch`` into ``checkpoints/superseded/``: a run
    resumed from an older checkpoint abandons them, so a restart must not resume from them, nor
    keep-last-K count them (it would delete the new ones). Moved, not deleted: they are the user's."""
    later = [p for p in list_checkpoints(logdir) if epoch_of(p) > epoch]
    if not later:
        return []
    aside = checkpoint_dir(logdir) / "superseded"
    aside.mkdir(exist_ok=True)
    for p in later:
        os.replace(p, aside / p.name)
    return [aside / p.name for p in later]


def save(state: dict, logdir: str | os.PathLike, epoch: int, keep: int) -> Path:
    """Save the checkpoint taken after ``epoch`` epochs, then prune all but the newest ``keep``."""
    path = path_for(logdir, epoch)
    atomic_save({"format": FORMAT, **state}, path)
    # Pruning is housekeeping: the new checkpoint is safe, so a failure here only warns. Temp files
    # of a writer killed mid-save (SIGKILL skips atomic_save's cleanup) go too: one writer per logdir.
    stale = [p for p in path.parent.iterdir() if _TEMP.match(p.name)]
    for old in (list_checkpoints(logdir)[:-keep] if keep > 0 else []) + stale:
        try:
            old.unlink(missing_ok=True)
        except OSError as e:
            print(f"warning: could not remove old checkpoint file {old} ({e.strerror or e})", file=sys.stderr)
    return path


def load(path: str | os.PathLike, tensors: bool = True) -> dict:
    """Load and validate one checkpoint; CheckpointError if it is missing, truncated or foreign.
    ``tensors=False``: a quick look at its config (train.py --check): the tensors are mapped, not
    read, and the CRCs are left to the run's own load."""
    try:
        # the CRC-32 of each member (torch.load itself reads the pickle and tensors unchecked)
        with zipfile.ZipFile(path) as z:
            if tensors and (bad := z.testzip()) is not None:
                raise CheckpointError(f"checkpoint {path}: corrupt ({bad.split('/', 1)[-1]} fails its CRC)")
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=not tensors)
    except CheckpointError:
        raise
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
    return ckpt


def latest_good(logdir: str | os.PathLike, tensors: bool = True, warn: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads (``tensors``: as ``load``); corrupt newer ones are skipped,
    with a warning unless not ``warn`` (train.py --check, which says one line or nothing)."""
    for path in reversed(list_checkpoints(logdir)):
        try:
            return path, load(path, tensors)
        except CheckpointError as e:
            if warn:
                print(f"warning: {e}; falling back to an older checkpoint", file=sys.stderr)
    return None


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts/lists/tuples) whose tensors live in host memory, pinned when
    they come from CUDA so the copy runs at full bus speed, taken now: the next step's in-place
    updates do not reach it. Container types (a state_dict's OrderedDict and its ``_metadata``) and
    strides are kept, so ``save`` writes the same bytes as from the live state."""
    on_cuda = False

    def copy_of(x: Any) -> Any:
        nonlocal on_cuda
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.device.type != "cuda":
                return x.to("cpu", copy=True)
            on_cuda = True
            host = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="cpu", pin_memory=True)
            return host.copy_(x, non_blocking=True)
        if isinstance(x, dict):
            out = copy.copy(x)
            for k, v in x.items():
                out[k] = copy_of(v)
            return out
        if isinstance(x, (list, tuple)):
            return type(x)(copy_of(v) for v in x)
        return x  # numbers, strings, None: immutable

    out = copy_of(obj)
    if on_cuda:
        torch.cuda.synchronize()  # the copies above are asynchronous; the writer reads them
    return out


def check_cadence(every: int, min_interval_s: float) -> None:
    """ConfigError unless train.checkpoint_every >= 1 and train.checkpoint_min_interval_s >= 0."""
    if every < 1:
        raise ConfigError(f"train.checkpoint_every must be >= 1 (epochs), got {every}")
    if min_interval_s < 0:
        raise ConfigError(f"train.checkpoint_min_interval_s must be >= 0 (seconds), got {min_interval_s}")


class Checkpointer:
    """Rank 0's checkpoints during a run: which epochs are saved, and one background writer.

    ``epoch_done`` copies the state to host memory after every epoch (``snapshot``); that copy, and
    the wait for the previous write when it is still going, are all the step waits. A due snapshot
    goes to a writer thread that runs ``save`` (atomic, CRC, keep-last-K), never two at once. The
    newest snapshot that was not due is kept, so ``save_latest`` (the end of a run, SIGTERM) can
    write the last finished epoch. A write that fails with an OSError prints the warning a
    synchronous save printed and the previous checkpoint stays; any other error is raised by the
    next ``wait``. Ranks that never call ``epoch_done`` have nothing to wait for."""

    def __init__(self, logdir: str | os.PathLike, keep: int, every: int = 1, min_interval_s: float = 0.0,
                 on_written: Callable[[int, int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``on_written(epoch, step, seconds)`` runs on the caller's thread for each finished write."""
        check_cadence(every, min_interval_s)
        self.logdir, self.keep, self.every, self.min_interval_s = logdir, keep, every, min_interval_s
        self.on_written, self.clock = on_written, clock
        self.last_written: int | None = None  # epoch of the newest checkpoint this process wrote
        self.write_s = 0.0  # seconds of finished background writes not yet taken by take_write_s
        self._last_start = clock()  # the run's start counts as a checkpoint for the interval
        self._thread: threading.Thread | None = None
        self._result: tuple[int, int, float] | BaseException | None = None
        self._unwritten: tuple[int, dict] | None = None  # (epoch, snapshot) of the last epoch, not due

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0 and self.clock() - self._last_start >= self.min_interval_s

    def epoch_done(self, epoch: int, state: dict) -> None:
        """``state`` (live tensors) after ``epoch`` epochs: snapshot it, and write it if it is due."""
        self._collect(block=False)
        snap = snapshot(state)
        if self.due(epoch):
            self._unwritten = None
            self._submit(epoch, snap)
        else:
            self._unwritten = (epoch, snap)

    def save_latest(self) -> None:
        """Write the last finished epoch unless it is written or being written, then wait."""
        if self._unwritten is not None:
            self._submit(*self._unwritten)
            self._unwritten = None
        self.wait()

    def wait(self) -> None:
        """Block until the write in flight, if any, is finished."""
        self._collect(block=True)

    def take_write_s(self) -> float:
        """Seconds of background writes finished since the last call (for --profile)."""
        self._collect(block=False)
        seconds, self.write_s = self.write_s, 0.0
        return seconds

    def _submit(self, epoch: int, snap: dict) -> None:
        self.wait()  # never two writes in flight
        self._last_start = self.clock()
        self._thread = threading.Thread(target=self._write, args=(epoch, snap), name=f"checkpoint-{epoch}")
        self._thread.start()

    def _write(self, epoch: int, snap: dict) -> None:
        t0 = time.perf_counter()
        try:
            save(snap, self.logdir, epoch, self.keep)
            self._result = (epoch, snap["step"], time.perf_counter() - t0)
        except OSError as e:
            # A full disk must not kill a long run: the previous checkpoint is intact; say so loudly.
            print(f"warning: checkpoint after epoch {epoch} not written ({e.strerror or e}); "
                  "the previous checkpoint is kept, training continues", file=sys.stderr, flush=True)
        except BaseException as e:  # anything else: raised on the training thread by _collect
            self._result = e

    def _collect(self, block: bool) -> None:
        if self._thread is None or (not block and self._thread.is_alive()):
            return
        self._thread.join()
        self._thread = None
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            raise result
        if result is not None:
            epoch, step, seconds = result
            self.last_written = epoch
            self.write_s += seconds
            if self.on_written is not None:
                self.on_written(epoch, step, seconds)


class Preempted(BaseException):
    """SIGTERM or SIGINT during training (preemption, Slurm's warning signal, torchrun stopping the
    group, Ctrl-C). A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way
    swallows it."""


class StopGuard:
    """While entered, the first SIGTERM or SIGINT raises Preempted in the main thread: at once, or at
    the end of a ``holding()`` section, or where that raise was lost, at the next ``check()``;
    ``received`` is that signal. Later ones are only noted, so an
    impatient second Ctrl-C (plain torchrun passes it on as TERM) still ends in one last checkpoint. After
    ``quiet()`` (the way out, its last checkpoint being written) a signal is only noted. Processes
    forked meanwhile (loader workers) keep the defaults: the signal ends them. A signal ignored at
    the start stays ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._holding = False
        self._quiet = False
        self._raised = False
        self._pid = os.getpid()
        self._old: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopGuard:
        # one ignored at the start stays so, as shells ask of a background job's SIGINT
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                     if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received is None:
            self.received = signal.Signals(signum)
        if not self._holding:
            self._raise()

    def _raise(self) -> None:
        if self.received is not None and not (self._raised or self._quiet):
            self._raised = True
            raise Preempted(self.received.name)

    def check(self) -> None:
        """Where the run may stop (after a step): Preempted for a signal it has not stopped for. The
        handler's own raise is lost where Python only prints exceptions: in an at-fork hook (a signal
        landing while a loader forks its workers; seen in 2 of 8 stop drills) or in a finalizer."""
        if self.received is not None and not self._quiet:
            self._raised = True
            raise Preempted(self.received.name)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A section a signal must not cut (taking a snapshot): Preempted comes at its end instead."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        self._raise()

    def quiet(self) -> None:
        self._quiet = True
