"""Checkpoints and the recipe's failure paths, unit level: atomic writes, keep-last-K, a full disk,
corrupt or truncated files, weights_only loading, resume after an elastic restart, the fault drill;
background writes, the checkpoint cadence, the exit's wait and SIGTERM."""
from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn as nn

from conftest import REPO
from dawn.events import load_run
from dawn.prepare_dawn_tsv import eval_rows
from training import checkpoint, dist, loop, train
from training.config import Config, ConfigError
from training.logs import RunLogger
from training.phases import parse_schedule
from training.recipes import imagenet

PHASES = [{"ep": 0, "sz": 32, "bs": 8}, {"ep": [0, 2], "lr": [0.1, 0.01]}]
TINY = ["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "data.workers=0", "train.print_freq=1"]


def state(epoch: int, arch: str = "resnet18") -> dict:
    torch.manual_seed(epoch)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": 8 * epoch,
            "config": {"phases": PHASES}, "arch": arch, "start_time": 1.0}


def names(logdir: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.checkpoint_dir(logdir).iterdir())


def test_a_checkpoint_is_as_readable_as_the_umask_makes_any_file(tmp_path):
    """mkstemp creates 0600: a run's group (a shared cluster's team) could not read its checkpoints."""
    old = os.umask(0o027)
    try:
        checkpoint.save(state(1), tmp_path, 1, keep=2)
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    mode = checkpoint.path_for(tmp_path, 1).stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o640


def test_save_load_round_trip_and_keep_last_k(tmp_path):
    for e in range(1, 6):
        checkpoint.save(state(e), tmp_path, e, keep=2)
    assert names(tmp_path) == ["epoch_0004.pt", "epoch_0005.pt"]
    ckpt = checkpoint.load(checkpoint.path_for(tmp_path, 5))
    ref = state(5)
    assert ckpt["epoch"] == 5 and ckpt["step"] == 40 and ckpt["arch"] == "resnet18"
    for k, v in ref["model"].items():
        assert torch.equal(ckpt["model"][k], v)


def test_keep_1_keeps_only_the_newest(tmp_path):
    """train.keep_checkpoints=1: each save leaves one checkpoint, the one it wrote."""
    for e in range(1, 4):
        checkpoint.save(state(e), tmp_path, e, keep=1)
        assert names(tmp_path) == [f"epoch_{e:04d}.pt"]


def test_a_flipped_bit_outside_the_tensors_is_refused(tmp_path):
    """The lr, epoch, step and config live in the pickle, not in a tensor: a damaged byte there
    loaded silently (here lr 0.1 -> 0.1000000000000001) before the zip's CRCs were checked."""
    import struct
    path = checkpoint.save(state(1), tmp_path, 1, keep=0)
    raw = bytearray(path.read_bytes())
    at = raw.index(struct.pack(">d", 0.1))  # the pickled lr of the optimizer's group
    raw[at + 7] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match=r"corrupt \(data.pkl fails its CRC\)"):
        checkpoint.load(path)


def test_stale_temp_file_of_a_killed_writer_is_removed(tmp_path):
    checkpoint.save(state(1), tmp_path, 1, keep=3)
    stale = checkpoint.checkpoint_dir(tmp_path) / ".epoch_0002.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")  # what SIGKILL during torch.save leaves
    checkpoint.save(state(2), tmp_path, 2, keep=3)
    assert names(tmp_path) == ["epoch_0001.pt", "epoch_0002.pt"]


class _FullDisk(io.FileIO):
    """A file on a disk with room for ROOM bytes: a write past them fails with ENOSPC."""
    ROOM = 200  # bytes: less than the smallest checkpoint here

    def write(self, b) -> int:
        if self.tell() + len(b) > self.ROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def _disk_full(monkeypatch):
    """The real torch.save writes its first bytes, then the disk is full. Its zip writer then raises
    a RuntimeError ("unexpected pos"), the OSError only as that error's context (as on a full tmpfs)."""
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FullDisk(fd, mode))


def test_disk_full_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    first = checkpoint.save(state(1), tmp_path, 1, keep=1)
    before = first.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as e:
        checkpoint.save(state(2), tmp_path, 2, keep=1)  # keep=1: a failed save must not prune
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert names(tmp_path) == ["epoch_0001.pt"]  # no temp file, no torn epoch_0002.pt
    assert first.read_bytes() == before
    assert checkpoint.latest_good(tmp_path)[1]["epoch"] == 1


def _recipe_objects(tmp_path: Path, epoch: int):
    cfg = Config()
    cfg.train.logdir = str(tmp_path)
    cfg.model.arch = "resnet18"
    cfg.phases = PHASES
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    st = loop.TrainState(model, model, opt, None, parse_schedule(PHASES), epoch=epoch, step=8 * epoch)
    info = dist.DistInfo(0, 1, 0, torch.device("cpu"))
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)

    def save() -> None:  # the recipe's end-of-epoch hook, then the wait for its background write
        imagenet._save(st, cfg, info, RunLogger(tmp_path, enabled=False), ckpt, checkpoint.StopGuard())
        ckpt.wait()
    return st, save


def test_recipe_save_on_full_disk_warns_and_training_goes_on(tmp_path, monkeypatch, capsys):
    st, save = _recipe_objects(tmp_path, 1)
    save()
    good = checkpoint.path_for(tmp_path, 1).read_bytes()
    st.epoch, st.step = 2, 16
    _disk_full(monkeypatch)
    save()  # the background write fails; the run continues
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "warning: checkpoint after epoch 2 not written (No space left on device)" in err
    assert "previous checkpoint is kept, training continues" in err
    assert names(tmp_path) == ["epoch_0001.pt"] and checkpoint.path_for(tmp_path, 1).read_bytes() == good
    st.epoch, st.step = 3, 24  # the disk has room again: the next epoch's checkpoint is written
    save()
    assert checkpoint.latest_good(tmp_path)[1]["epoch"] == 3


def test_recipe_never_saves_non_finite_weights(tmp_path):
    st, save = _recipe_objects(tmp_path, 1)
    save()
    with torch.no_grad():
        st.raw_model.weight[0, 0] = float("nan")
    st.epoch = 2
    with pytest.raises(loop.NonFiniteLoss, match="weights became non-finite in epoch 1"):
        save()
    assert names(tmp_path) == ["epoch_0001.pt"]


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def flip_a_bit(p: Path) -> None:
    """Damage inside the weights' bytes: the zip still opens and unpickles; only a checksum can tell."""
    b = bytearray(p.read_bytes())
    at = bytes(b).find(torch.load(p, weights_only=True)["model"]["weight"].numpy().tobytes())
    assert at > 0
    b[at + 5] ^= 0x08
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage,reason", [
    (truncate, "unreadable"),
    (lambda p: p.write_bytes(b""), "unreadable"),
    (lambda p: p.write_bytes(os.urandom(4096)), "unreadable"),
    (flip_a_bit, "corrupt (data/0 fails its CRC)"),
])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, capsys, damage, reason):
    for e in (1, 2, 3):
        checkpoint.save(state(e), tmp_path, e, keep=3)
    latest = checkpoint.path_for(tmp_path, 3)
    damage(latest)
    path, ckpt = checkpoint.latest_good(tmp_path)
    assert path == checkpoint.path_for(tmp_path, 2) and ckpt["epoch"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: checkpoint {latest}: {reason}"), err
    assert err[0].endswith("falling back to an older checkpoint")


def test_no_good_checkpoint_left(tmp_path, capsys):
    checkpoint.save(state(1), tmp_path, 1, keep=3)
    truncate(checkpoint.path_for(tmp_path, 1))
    assert checkpoint.latest_good(tmp_path) is None
    assert checkpoint.latest_good(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("edit,message", [
    (lambda s: {**s, "format": checkpoint.FORMAT + 1}, f"format {checkpoint.FORMAT + 1}, expected {checkpoint.FORMAT}"),
    (lambda s: {k: v for k, v in s.items() if k != "optimizer"}, "not a checkpoint of this trainer"),
    (lambda s: {k: v for k, v in s.items() if k != "step"}, "not a checkpoint of this trainer"),
    (lambda s: {k: v for k, v in s.items() if k != "arch"}, "not a checkpoint of this trainer"),
])
def test_a_checkpoint_of_another_format_or_missing_a_key_is_refused_by_name(tmp_path, edit, message):
    """A file torch loads but this trainer cannot resume from (another format version; a dict without
    the optimizer, step or arch a resume reads) is refused at load in one line, not a KeyError later."""
    path = tmp_path / "epoch_0001.pt"
    torch.save(edit({**state(1), "format": checkpoint.FORMAT}), path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert str(e.value) == f"checkpoint {path}: {message}"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_load_is_weights_only_nothing_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    bad = tmp_path / "evil.pt"
    torch.save({**state(1), "format": checkpoint.FORMAT, "payload": Evil()}, bad)
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(bad)
    assert not marker.exists()
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint of this trainer"):
        checkpoint.load(other)


def test_elastic_restart_resumes_from_the_logdir_even_with_an_explicit_resume(tmp_path, monkeypatch):
    cfg = Config()
    cfg.train.logdir = str(tmp_path / "run")
    assert imagenet.find_resume(cfg, restarted=False) == ""
    assert imagenet.find_resume(cfg, restarted=True) == "auto"
    cfg.train.resume = "/somewhere/epoch_0010.pt"  # where the first attempt started from
    assert imagenet.find_resume(cfg, restarted=True) == "/somewhere/epoch_0010.pt"  # the run has written nothing yet
    checkpoint.save(state(11), cfg.train.logdir, 11, keep=3)
    assert imagenet.find_resume(cfg, restarted=True) == "auto"  # its own progress wins
    assert imagenet.find_resume(cfg, restarted=False) == "/somewhere/epoch_0010.pt"  # a new job: as told


def test_human_log_keeps_one_run(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("~~epoch\thours\ttop1\ttop5\nphase at epoch 0: size 32\n~~0\t0.1\t\t1.0\t\t2.0\n"
                   "~~1\t0.2\t\t3.0\t\t4.0\n~~2\t0.3\t\t5.0\t\t6.0\n")
    imagenet._trim_human_log(str(tmp_path), 2)  # resuming at epoch 2: the crashed attempt's row 2 goes
    assert log.read_text().splitlines()[-1].startswith("~~1\t") and log.read_text().count("~~") == 3
    imagenet._trim_human_log(str(tmp_path), None)  # starting over
    assert not log.exists()


def test_fault_drill_spec(monkeypatch):
    group = {"world_size": 2, "num_epochs": 3}
    monkeypatch.delenv(dist.FAULT_ENV, raising=False)
    assert dist.fault_injector(0, restarted=False, **group) is None
    for bad in ("kill", "kill:1:2", "explode:1:2:0", "kill:a:2:0", "kill:1:2:0:0"):
        monkeypatch.setenv(dist.FAULT_ENV, bad)
        with pytest.raises(ConfigError, match="expected kill|hang:EPOCH:STEP:RANK"):
            dist.fault_injector(0, restarted=False, **group)
    # a drill that could never fire would pass for a working restart
    for never, why in (("kill:1:2:2", "no rank 2 in a group of 2"), ("kill:3:0:0", "no epoch 3 in a run of 3")):
        monkeypatch.setenv(dist.FAULT_ENV, never)
        for restarted in (False, True):  # a restart after the refused first attempt is refused too
            with pytest.raises(ConfigError, match=why):
                dist.fault_injector(0, restarted=restarted, **group)
    monkeypatch.setenv(dist.FAULT_ENV, "kill:1:2:1")
    assert dist.fault_injector(0, restarted=False, **group) is None  # another rank's fault
    fire = dist.fault_injector(1, restarted=False, **group)
    fire(0, 2), fire(1, 1), fire(2, 2)  # not the step: nothing happens
    assert dist.fault_injector(1, restarted=True, **group) is None  # a restarted group runs clean


def test_a_rank_beyond_the_visible_gpus_is_one_line(monkeypatch):
    """8 processes on a machine where CUDA_VISIBLE_DEVICES shows 2 GPUs: ranks 2-7 used to crash in
    torch.cuda.set_device with a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local_rank in (2, 3):  # local ranks count from 0: 2 is the first without a GPU
        with pytest.raises(ConfigError, match=f"local rank {local_rank} has no GPU: 2 visible"):
            dist.pick_device("auto", local_rank)


def test_peer_failure_is_recognised_only_in_a_process_group():
    err = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv")
    assert not dist.is_peer_failure(err)  # no process group here: an ordinary error


def test_a_collective_error_from_either_backend_in_a_group_is_a_peer_failure(monkeypatch):
    """In a group of 2, a collective's RuntimeError from gloo (CPU) or NCCL (GPUs: the only backend a
    GPU run has) is a peer failure, which the recipe says in one line naming the silent ranks; other
    errors are not."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    for peer in (RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv"),
                 RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:29500"),
                 RuntimeError("NCCL communicator was aborted on rank 1. Original reason for failure was: ..."),
                 RuntimeError("NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, remote "
                              "process exited or there was a network error, NCCL version 2.21.5"),
                 torch.distributed.DistError("any backend's error type")):
        assert dist.is_peer_failure(peer), peer
    for own in (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), ValueError("gloo"), KeyError("nccl")):
        assert not dist.is_peer_failure(own), own


# ------------------------------------------------------------------------------ background writes

def live_state() -> tuple[Callable[[], None], dict]:
    """A payload as the recipe builds it, over live tensors (a state_dict with BatchNorm, i.e. an
    OrderedDict with _metadata; channels_last conv weights; SGD momentum), and a training step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step() -> None:
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()

    step()
    return step, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "step": 8,
                  "config": {"phases": PHASES}, "arch": "resnet18"}


def test_background_save_writes_the_bytes_a_synchronous_save_writes(tmp_path, monkeypatch):
    step, payload = live_state()
    sync = checkpoint.save(payload, tmp_path / "sync", 1, keep=3)
    go, real_save = threading.Event(), checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *a, **k: go.wait(30) and real_save(*a, **k))
    ckpt = checkpoint.Checkpointer(tmp_path / "bg", keep=3)
    ckpt.epoch_done(1, payload)
    step()  # the next step updates weights and momentum in place before the writer runs
    go.set()
    ckpt.wait()
    assert checkpoint.path_for(tmp_path / "bg", 1).read_bytes() == sync.read_bytes()


def test_the_step_waits_only_for_the_previous_write_and_the_exit_for_the_last(tmp_path, monkeypatch):
    go, real_save, running, peak = threading.Event(), checkpoint.save, [], []

    def held_save(*args, **kwargs):  # each write waits for `go`
        running.append(1)
        peak.append(len(running))
        go.wait(30)
        real_save(*args, **kwargs)
        running.pop()
    monkeypatch.setattr(checkpoint, "save", held_save)
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
    ckpt.epoch_done(1, state(1))
    assert not checkpoint.path_for(tmp_path, 1).exists()  # the step went on; the write is held
    threading.Timer(0.3, go.set).start()
    ckpt.epoch_done(2, state(2))
    assert checkpoint.path_for(tmp_path, 1).exists() and max(peak) == 1  # it waited: never two in flight
    ckpt.save_latest()  # the exit
    assert checkpoint.latest_good(tmp_path)[1]["epoch"] == 2 and ckpt.last_written == 2


def test_a_new_phase_forks_its_loader_workers_only_after_the_checkpoint_write(jpeg_tree, tmp_path, monkeypatch,
                                                                             one_thread):
    """A child forked while the writer thread is inside torch.save inherits its locks held: the phase
    at epoch 1 builds its loaders, whose workers fork, only once epoch 0's checkpoint is written, held
    here for 1 s."""
    real_save, real_fork, forks = checkpoint.save, os.fork, []

    def slow_save(*args, **kwargs):
        time.sleep(1.0)
        return real_save(*args, **kwargs)

    def fork() -> int:
        writing = any(t.name.startswith("checkpoint-") and t.is_alive() for t in threading.enumerate())
        pid = real_fork()
        if pid:
            forks.append(writing)
        return pid
    monkeypatch.setattr(checkpoint, "save", slow_save)
    monkeypatch.setattr(os, "fork", fork)
    phases = "[{'ep':0,'sz':32,'bs':8},{'ep':1,'sz':40,'bs':8},{'ep':(0,2),'lr':(0.1,0.01)}]"
    assert train.main([str(jpeg_tree), *TINY, "data.workers=1", f"train.logdir={tmp_path / 'run'}",
                       "--phases", phases]) == 0
    assert len(forks) == 4 and not any(forks), forks  # train and val workers of each phase


KILLED_WRITER = r"""
import sys, time
import torch
from training import checkpoint

def state(epoch):
    return {"model": {"w": torch.full((1000,), float(epoch))}, "optimizer": {"state": {}, "param_groups": []},
            "epoch": epoch, "step": 8 * epoch, "config": {"phases": []}, "arch": "resnet18"}

checkpoint.save(state(1), sys.argv[1], 1, keep=1)

def stuck(obj, f, *args, **kwargs):  # the process is killed with part of the file written
    f.write(b"PK\x03\x04 part of a checkpoint")
    f.flush()
    open(sys.argv[2], "w").close()
    time.sleep(120)

torch.save = stuck
checkpoint.Checkpointer(sys.argv[1], keep=1).epoch_done(2, state(2))
time.sleep(120)  # training goes on meanwhile
"""


def test_sigkill_during_a_background_write_leaves_the_previous_checkpoint_resumable(tmp_path):
    logdir, marker = tmp_path / "run", tmp_path / "writing"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(logdir), str(marker)], cwd=REPO,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    err = p.communicate(timeout=30)[1]
    assert marker.exists(), f"the writer never started\n{err[-3000:]}"
    temp, kept = names(logdir)  # the killed write's temp file, and the previous checkpoint
    assert temp.startswith(".epoch_0002.pt.") and kept == "epoch_0001.pt", (temp, kept)
    cfg = Config()
    cfg.train.logdir, cfg.model.arch = str(logdir), "resnet18"
    resumed = imagenet.load_resume("auto", cfg, dist.DistInfo(0, 1, 0, torch.device("cpu")))
    assert resumed["epoch"] == 1 and torch.equal(resumed["model"]["w"], torch.full((1000,), 1.0))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("every,min_interval_s,written", [
    (1, 0, [1, 2, 3, 4, 5, 6, 7]),
    (3, 0, [3, 6, 7]),  # the run's last epoch is always saved
    (1, 100, [3, 6, 7]),  # 40 s epochs: 120 s since the previous checkpoint at epochs 3 and 6
    (2, 100, [4, 7]),  # even epochs only: 80 s after the start at 2, 160 s at 4, 80 s after that at 6
    (1, 80, [2, 4, 6, 7]),  # "at least": exactly 80 s since the previous one is enough
])
def test_checkpoint_every_and_min_interval(tmp_path, monkeypatch, every, min_interval_s, written):
    done = []
    monkeypatch.setattr(checkpoint, "save", lambda snap, logdir, epoch, keep: done.append(epoch))
    clock = Clock()
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3, every=every, min_interval_s=min_interval_s, clock=clock)
    for epoch in range(1, 8):
        clock.t += 40
        ckpt.epoch_done(epoch, state(epoch))
    ckpt.save_latest()
    assert done == written


def test_the_exit_writes_nothing_older_than_the_last_written_epoch(tmp_path, monkeypatch):
    """checkpoint_every=3 over 6 epochs: epochs 3 and 6 are due and written; at the exit nothing is left
    to write (epoch 5, not due, must not be written after epoch 6, nor be the last written)."""
    done = []
    monkeypatch.setattr(checkpoint, "save", lambda snap, logdir, epoch, keep: done.append(epoch))
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3, every=3)
    for epoch in range(1, 7):
        ckpt.epoch_done(epoch, state(epoch))
    ckpt.save_latest()
    assert done == [3, 6] and ckpt.last_written == 6


@pytest.mark.parametrize("override,message", [
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1 (epochs), got 0"),
    ("train.checkpoint_min_interval_s=-5", "train.checkpoint_min_interval_s must be >= 0 (seconds), got -5.0"),
])
def test_bad_cadence_is_one_line_exit_2(jpeg_tree, tmp_path, capsys, override, message):
    logdir = tmp_path / "run"
    assert train.main([str(jpeg_tree), *TINY, f"train.logdir={logdir}", override]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not logdir.exists()


def test_profile_lists_background_work_outside_the_total():
    timer = loop.StageTimer(True, torch.device("cpu"))
    timer.totals.update({"forward": 3.0, "checkpoint wait": 1.0})
    rows = timer.table(0, {"checkpoint write": 6.0}).splitlines()
    assert rows[-2].split() == ["total", "4.000", "100.0%"]
    assert rows[-1].split()[:3] == ["checkpoint", "write", "6.000"] and "not in the total" in rows[-1]


@pytest.fixture
def terminal_sigint():
    """SIGINT as Python sets it in a terminal, whatever this test process started with (a CI
    runner or nohup may start it ignored, and the guard leaves an ignored signal alone)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_waits_for_a_snapshot_in_progress_and_spares_the_way_out(sig, terminal_sigint):
    steps = []
    with checkpoint.StopGuard() as guard:
        with pytest.raises(checkpoint.Preempted):
            with guard.holding():  # an end-of-epoch snapshot: the signal must not cut it in half
                os.kill(os.getpid(), sig)
                time.sleep(0.05)
                steps.append("snapshot complete")
    with checkpoint.StopGuard() as guard:
        guard.quiet()  # the run is over and its last write under way: the signal is only noted
        os.kill(os.getpid(), sig)
        time.sleep(0.05)
        steps.append("written")
    assert steps == ["snapshot complete", "written"] and guard.received == sig
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_signal_ignored_at_the_start_stays_ignored():
    """A shell starts a background job (`python train.py ... &` in a script) with SIGINT ignored, so
    a Ctrl-C meant for the foreground does not stop it; the run keeps that."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with checkpoint.StopGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert guard.received is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_the_first_stop_signal_is_the_one_said_and_later_ones_cut_nothing(terminal_sigint):
    """Ctrl-C twice in a terminal running plain torchrun: the rank gets SIGINT from torchrun, then
    SIGTERM as torchrun's shutdown starts over. One Preempted, for the first; the way out is not cut."""
    with checkpoint.StopGuard() as guard:
        with pytest.raises(checkpoint.Preempted, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with guard.holding():
            pass
    assert guard.received == signal.SIGINT


LOST_IN_A_FORK = r"""
import os, signal
from training import checkpoint

armed = []
os.register_at_fork(after_in_parent=lambda: armed and armed.pop() and signal.raise_signal(signal.SIGTERM))
with checkpoint.StopGuard() as stop:
    armed.append(True)
    pid = os.fork()  # the signal lands in the parent's at-fork hook, whose caller only prints what it raises
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("received", stop.received.name)
    try:
        stop.check()
        print("check raised nothing")
    except checkpoint.Preempted as e:
        print("check raised", e)
    stop.quiet()  # the run has stopped for it: its way out is not cut
    stop.check()
    print("then nothing")
"""


def test_a_stop_signal_whose_raise_a_fork_swallowed_is_raised_at_the_next_check():
    """A loader forking its workers runs the at-fork hooks; a signal landing then raises Preempted
    inside one, where Python prints it and goes on: the run must still stop, at its next step."""
    r = subprocess.run([sys.executable, "-c", LOST_IN_A_FORK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["received SIGTERM", "check raised SIGTERM", "then nothing"], r.stdout
    assert "Preempted: SIGTERM" in r.stderr  # the hook's raise, printed and dropped


SIGNAL_IN_THE_FIRST_FORK = r"""
import os, runpy, signal, sys
from training import checkpoint

def land_in_the_fork():  # once the run's StopGuard is in place: a stop signal as the loader forks its worker
    guard = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if isinstance(guard, checkpoint.StopGuard) and guard.received is None:
        signal.raise_signal(signal.SIGTERM)

os.register_at_fork(after_in_parent=land_in_the_fork)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_run_signalled_while_its_loader_forks_stops_at_the_next_step(jpeg_tree, tmp_path):
    """SIGTERM lands as epoch 0's loader forks its worker (2 of 8 stop drills hit such a moment): the
    run stops in its first step, with no epoch finished to save, instead of training to the end."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", SIGNAL_IN_THE_FIRST_FORK, "training/train.py", str(jpeg_tree), *TINY,
                        "data.workers=1", f"train.logdir={run}"], cwd=REPO, capture_output=True, text=True,
                       timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert "Preempted: SIGTERM" in r.stderr  # the raise the fork's hook swallowed
    assert r.stderr.rstrip().endswith("stopped by SIGTERM; last checkpoint this process wrote: none written")
    assert "epoch 0 [" not in r.stderr, r.stderr[-2000:]  # stopped in the first step, before its log line
    assert [ln for ln in (run / "train.log").read_text().splitlines() if ln.startswith("~~")] == ["~~epoch\thours\ttop1\ttop5"]
    assert not checkpoint.checkpoint_dir(run).exists() or names(run) == []


class Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_a_log_line_reaches_its_stream_in_one_write(tmp_path, monkeypatch):
    """A stop signal's Preempted can land between two writes: print's line-then-newline let the
    run's last words run into a `phase at epoch` line."""
    out, err = Writes(), Writes()
    monkeypatch.setattr(sys, "stderr", err)
    logger = RunLogger(tmp_path, enabled=True, stream=out)
    logger.human("phase at epoch 1: size 32 batch 16 val_batch 128")
    logger.progress("epoch 1 [3/12]")
    logger.close()
    assert out.calls == ["~~epoch\thours\ttop1\ttop5\n", "phase at epoch 1: size 32 batch 16 val_batch 128\n"]
    assert err.calls == ["epoch 1 [3/12]\n"]


FORKED_WORKER = r"""
import os, signal, time
from training import checkpoint

with checkpoint.StopGuard():
    pid = os.fork()
    if pid == 0:  # a loader worker forked during training
        time.sleep(30)
        os._exit(0)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
"""


def test_sigterm_ends_a_forked_worker_as_before():
    r = subprocess.run([sys.executable, "-c", FORKED_WORKER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stdout + r.stderr[-2000:]


def signal_in_epoch(args: list[str], log: Path, epoch: int, group: bool = False,
                    sig: signal.Signals = signal.SIGTERM) -> int:
    """Run ``args`` (stderr to ``log``) held by the fault drill at ``epoch``'s first step, send it
    ``sig`` there (its whole process group with ``group``) and return its exit status."""
    with open(log, "w") as err:
        # with a terminal's SIGINT, whatever this process started with (the run leaves an ignored one)
        p = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                             env={**os.environ, "OMP_NUM_THREADS": "1", dist.FAULT_ENV: f"hang:{epoch}:0:0"})
        try:
            deadline = time.time() + 240
            while "fault drill" not in log.read_text() and time.time() < deadline and p.poll() is None:
                time.sleep(0.05)
            if group:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
            return p.wait(timeout=60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_to_the_process_group_with_loader_workers_still_saves(jpeg_tree, tmp_path, sig):
    """Slurm's preemption (SIGTERM) and a terminal's Ctrl-C (SIGINT) signal every process of the
    job: the loader workers ignore it, so the main process saves the last finished epoch (not due:
    every 100 epochs) and exits 128 + the signal, rather than die on the DataLoader's dead-worker
    error (or a KeyboardInterrupt) with nothing saved."""
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    args = [sys.executable, "training/train.py", str(jpeg_tree), *TINY, "data.workers=2", f"train.logdir={run}",
            "train.checkpoint_every=100"]
    rc = signal_in_epoch(args, log, 1, group=True, sig=sig)  # the main process and its workers
    text = log.read_text()
    assert rc == 128 + sig and "Traceback" not in text, text[-3000:]
    assert f"stopped by {sig.name}; last checkpoint this process wrote: after epoch 1" in text
    assert names(run) == ["epoch_0001.pt"]


def test_sigterm_saves_the_last_finished_epoch_then_exits(jpeg_tree, tmp_path):
    """No checkpoint is due (every 100 epochs) when SIGTERM comes in epoch 2, after its first step:
    the state after epoch 2, kept in host memory, is written, then the exit (143). The profile has
    the step's wait and the background write as separate rows. Resumed, the run logs as one run."""
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    args = [sys.executable, "training/train.py", str(jpeg_tree), *TINY, f"train.logdir={run}",
            "train.checkpoint_every=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rc = signal_in_epoch([*args, "--profile"], log, 2)
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "stopped by SIGTERM; last checkpoint this process wrote: after epoch 2" in text
    assert names(run) == ["epoch_0002.pt"]
    ckpt = checkpoint.load(checkpoint.path_for(run, 2))
    assert (ckpt["epoch"], ckpt["step"]) == (2, 48)  # 24 images per epoch
    assert text.count("  checkpoint wait ") == 2 and text.count("  checkpoint write ") == 2
    r = subprocess.run([*args, "--resume", "auto"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert names(run) == ["epoch_0002.pt", "epoch_0003.pt"]  # the last epoch is always saved
    scalars = load_run(run).scalars
    assert [(x.epoch, x.step) for x in eval_rows(load_run(run))] == [(0, 24), (1, 48), (2, 72)]
    assert [x.step for x in scalars["times/checkpoint_sec"]] == [48, 72]
    human = [ln.split("\t")[0] for ln in (run / "train.log").read_text().splitlines() if ln.startswith("~~")]
    assert human == ["~~epoch", "~~0", "~~1", "~~2"]
