"""Rank-0 run logging: TensorBoard events with imagenet18's tags, the `~~` human log, a progress line.

Event steps are global training images seen, as in imagenet18, so the DAWN exporter and
TensorBoard plots line up across batch-size changes. Other ranks get a logger that writes nothing.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

from training.cli import output_problem
from training.config import ConfigError


def check_logdir(logdir: str) -> list[Path]:
    """Fail before any training if the run's files cannot be written. Returns the dirs it created,
    so a run stopped by bad input before it wrote anything leaves nothing behind."""
    created = [p for p in (Path(logdir), *Path(logdir).parents) if not p.exists()]
    try:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        probe = Path(logdir) / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"logdir {logdir} is not writable ({e.strerror})") from None
    return created


def check_logdir_writable(logdir: str) -> None:
    """check_logdir's verdict without creating anything (train.py --check): ConfigError unless the
    logdir is, or can be made, a writable directory."""
    if (problem := output_problem(os.path.join(logdir, "train.log"))) is not None:
        raise ConfigError(f"logdir {logdir}: {problem}")


# What a run leaves in its logdir (both recipes; run_NNN/ are the cifar recipe's per-run dirs).
RUN_FILES = ("config.yaml", "metadata.json", "train.log", "events.out.tfevents.*", "checkpoints/epoch_*.pt",
             "run_[0-9][0-9][0-9]")


def run_files(logdir: str) -> list[str]:
    """The files of an earlier run in ``logdir``, relative and sorted; [] for a new or empty dir."""
    d = Path(logdir)
    return sorted({str(p.relative_to(d)) for pattern in RUN_FILES for p in d.glob(pattern)})


def refuse_reuse(logdir: str, resumable: bool = True) -> None:
    """A fresh run never writes into a logdir that holds a run: the two would mix (a second
    train.log header, new checkpoints beside old ones, events a resume or the DAWN exporter reads
    as one run). ConfigError naming the ways on; nothing is changed."""
    found = run_files(logdir)
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        ways = ("continue it with --resume auto, or start a new run with --logdir NEW_DIR" if resumable else
                "start a new run with --logdir NEW_DIR (this recipe keeps no checkpoints to resume)")
        raise ConfigError(f"logdir {logdir} already holds a run ({shown}): {ways}")


LOCK_FILE = "run.lock"  # in the logdir: held by the process that writes the run (rank 0)


class LogdirLock:
    """The exclusive lock ``lock_logdir`` took: held until ``release`` or the process's end."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Delete the lock file, then drop the lock: a logdir at rest holds no lock file (and one this
        run created can go again). Deleted while still held, so it is never another run's file."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def lock_logdir(logdir: str) -> LogdirLock | None:
    """Lock ``logdir`` for this process's run, so no second run writes into it (checkpoints, events,
    keep-last-K pruning of the other's files). ConfigError naming the holder when another process holds
    it; None, with a warning, where the filesystem cannot lock (the run goes on unguarded).

    lockf (a POSIX record lock), not flock: the kernel drops it when the process ends, however it ends,
    so a crash leaves no stale lock and a restarted group's rank 0, on any machine, finds it free; it
    belongs to this process alone, so forked loader workers that outlive a killed rank 0 for a while do
    not keep the restart out (a flock would be theirs too); and it is the lock NFS implements (Linux
    emulates flock with it there). Closing any descriptor of the file in this process drops it: only
    this object opens it."""
    path = Path(logdir) / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return _unlocked(logdir, e)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            held = e.errno in (errno.EACCES, errno.EAGAIN)
            holder = _holder(fd) if held else ""
            empty = not held and os.fstat(fd).st_size == 0
            os.close(fd)
            if held:
                raise _in_use(logdir, holder) from None
            if e.errno == errno.ESTALE:  # NFS: the holder deleted it as it let go (release): try the new one
                continue
            if empty:  # made just now (a holder writes its name): a run that cannot lock leaves no lock file
                path.unlink(missing_ok=True)
            return _unlocked(logdir, e)
        try:  # the holder deleted this file as it let go (release): lock the one now there
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    lock = LogdirLock(path, fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode())
        os.fsync(fd)  # another NFS client reads it to name the holder
    except OSError as e:  # a full disk or quota: as a ConfigError rank 0 sends it to every rank (an OSError hung them)
        lock.release()
        raise ConfigError(f"logdir {logdir} is not writable ({e.strerror or e})") from None
    return lock


def check_logdir_free(logdir: str) -> None:
    """ConfigError if a live process holds ``logdir``'s lock (train.py --check); creates nothing.
    Not in a process that holds it itself: closing the probe would drop its lock (lock_logdir)."""
    try:
        fd = os.open(Path(logdir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none readable): no run holds it
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts only with a holder's exclusive lock
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise _in_use(logdir, _holder(fd)) from None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(who['pid'])} on host {who['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # not written yet, or not ours


def _in_use(logdir: str, holder: str) -> ConfigError:
    return ConfigError(f"logdir {logdir} is in use by another run{f' ({holder})' if holder else ''}: wait for it "
                       "to end, or start this one with another --logdir")


def _unlocked(logdir: str, e: OSError) -> None:
    print(f"warning: cannot lock logdir {logdir} ({e.strerror or e}); a second run on it would not be "
          "kept out", file=sys.stderr)
    return None


class RunLogger:
    def __init__(self, logdir: str | os.PathLike, enabled: bool, start_time: float | None = None,
                 purge_step: int | None = None, stream: TextIO = sys.stdout, started: float | None = None):
        """``start_time`` is the original run's start when resuming: the `first` event is then not
        written again (unless this logdir holds no events yet) and hours continue from the first
        start, so a resumed run exports as one run.
        ``started``: a fresh run's start (default now), written as its `first` event."""
        self.enabled = enabled
        self.stream = stream
        self.logdir = Path(logdir)
        self.writer = None
        self.start_time = start_time if start_time is not None else (started or time.time())
        self.new_events = False  # this logger wrote the `first` event: the logdir's events begin here
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        self.logdir.mkdir(parents=True, exist_ok=True)
        # a run resumed into a new logdir: its events there need their own `first` (the original start)
        new_dir = not any(self.logdir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge_step)
        self._human = open(self.logdir / "train.log", "a", encoding="utf-8")
        if start_time is None or new_dir:
            self.new_events = True
            self.writer.add_scalar("first", self.start_time, 0, walltime=self.start_time)
            self.human("~~epoch\thours\ttop1\ttop5")

    def hours(self, now: float | None = None) -> float:
        return ((now if now is not None else time.time()) - self.start_time) / 3600

    def scalar(self, tag: str, value: float, step: int, walltime: float | None = None) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step, walltime=walltime)

    def metadata(self, meta: dict) -> None:
        """Run facts (torch version, GPU, world size, phases) for the DAWN JSON exporter."""
        if self.writer is not None:
            self.writer.add_text("run/metadata", json.dumps(meta), 0)
            (self.logdir / "metadata.json").write_text(json.dumps(meta, indent=1))

    def launch(self, facts: dict, step: int) -> None:
        """This launch's command and torch, at the step it starts from (``run/launch``): the DAWN
        JSON names each launch's where they changed. A launch that a restart redoes started from
        the same step, where the event reader keeps the later record."""
        if self.writer is not None:
            self.writer.add_text("run/launch", json.dumps(facts), step)

    def log_eval(self, epoch: int, top1: float, top5: float, seconds: float, step: int) -> None:
        """One evaluation: events, then the `~~` row with the same wall clock as the events."""
        now = time.time()
        for tag, v in (("losses/test_1", top1), ("losses/test_5", top5), ("times/eval_sec", seconds),
                       ("epoch", epoch)):
            self.scalar(tag, v, step, walltime=now)
        self.human(f"~~{epoch}\t{self.hours(now):.5f}\t\t{top1:.3f}\t\t{top5:.3f}")
        if self.writer is not None:
            self.writer.flush()

    def human(self, line: str) -> None:
        if self.enabled:
            _say(line, self.stream)
            self._human.write(line + "\n")
            self._human.flush()

    def progress(self, line: str) -> None:
        if self.enabled:
            _say(line, sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._human.close()
            self.writer = None


def _say(line: str, stream: TextIO) -> None:
    """The line and its newline in one write: print's two writes let a stop signal's Preempted land
    between them, and the run's last words then ran into the line."""
    stream.write(line + "\n")
    stream.flush()
