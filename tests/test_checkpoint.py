"""Checkpoints and the recipe's failure paths, unit level: atomic writes, keep-last-K, a full disk,
corrupt or truncated files, weights_only loading, resume after an elastic restart, the fault drill."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from training import checkpoint, dist, loop
from training.config import Config, ConfigError
from training.logs import RunLogger
from training.phases import parse_schedule
from training.recipes import imagenet

PHASES = [{"ep": 0, "sz": 32, "bs": 8}, {"ep": [0, 2], "lr": [0.1, 0.01]}]


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


def test_save_load_round_trip_and_keep_last_k(tmp_path):
    for e in range(1, 6):
        checkpoint.save(state(e), tmp_path, e, keep=2)
    assert names(tmp_path) == ["epoch_0004.pt", "epoch_0005.pt"]
    ckpt = checkpoint.load(checkpoint.path_for(tmp_path, 5))
    ref = state(5)
    assert ckpt["epoch"] == 5 and ckpt["step"] == 40 and ckpt["arch"] == "resnet18"
    for k, v in ref["model"].items():
        assert torch.equal(ckpt["model"][k], v)
    assert isinstance(ckpt["checksum"], int)


def test_stale_temp_file_of_a_killed_writer_is_removed(tmp_path):
    checkpoint.save(state(1), tmp_path, 1, keep=3)
    stale = checkpoint.checkpoint_dir(tmp_path) / ".epoch_0002.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")  # what SIGKILL during torch.save leaves
    checkpoint.save(state(2), tmp_path, 2, keep=3)
    assert names(tmp_path) == ["epoch_0001.pt", "epoch_0002.pt"]


def _disk_full(monkeypatch):
    """torch.save writes some bytes, then the disk is full (as a real ENOSPC does mid-write)."""
    def save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.torch, "save", save)


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
    return cfg, st, info, RunLogger(tmp_path, enabled=False)


def test_recipe_save_on_full_disk_warns_and_training_goes_on(tmp_path, monkeypatch, capsys):
    cfg, st, info, logger = _recipe_objects(tmp_path, 1)
    imagenet._save(st, cfg, info, logger)
    good = checkpoint.path_for(tmp_path, 1).read_bytes()
    st.epoch, st.step = 2, 16
    _disk_full(monkeypatch)
    imagenet._save(st, cfg, info, logger)  # returns: the run continues
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "warning: checkpoint after epoch 2 not written (No space left on device)" in err
    assert "previous checkpoint is kept, training continues" in err
    assert names(tmp_path) == ["epoch_0001.pt"] and checkpoint.path_for(tmp_path, 1).read_bytes() == good
    st.epoch, st.step = 3, 24  # the disk has room again: the next epoch's checkpoint is written
    imagenet._save(st, cfg, info, logger)
    assert checkpoint.latest_good(tmp_path)[1]["epoch"] == 3


def test_recipe_never_saves_non_finite_weights(tmp_path):
    cfg, st, info, logger = _recipe_objects(tmp_path, 1)
    imagenet._save(st, cfg, info, logger)
    with torch.no_grad():
        st.raw_model.weight[0, 0] = float("nan")
    st.epoch = 2
    with pytest.raises(loop.NonFiniteLoss, match="weights became non-finite in epoch 1"):
        imagenet._save(st, cfg, info, logger)
    assert names(tmp_path) == ["epoch_0001.pt"]


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def flip_a_bit(p: Path) -> None:
    """Damage inside the weights' bytes: the zip still opens and unpickles; only the checksum can tell."""
    b = bytearray(p.read_bytes())
    at = bytes(b).find(torch.load(p, weights_only=True)["model"]["weight"].numpy().tobytes())
    assert at > 0
    b[at + 5] ^= 0x08
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage,reason", [
    (truncate, "unreadable"),
    (lambda p: p.write_bytes(b""), "unreadable"),
    (lambda p: p.write_bytes(os.urandom(4096)), "unreadable"),
    (flip_a_bit, "corrupt (tensor checksum mismatch)"),
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
    monkeypatch.delenv(dist.FAULT_ENV, raising=False)
    assert dist.fault_injector(0, restarted=False) is None
    for bad in ("kill", "kill:1:2", "explode:1:2:0", "kill:a:2:0", "kill:1:2:0:0"):
        monkeypatch.setenv(dist.FAULT_ENV, bad)
        with pytest.raises(ConfigError, match="expected kill|hang:EPOCH:STEP:RANK"):
            dist.fault_injector(0, restarted=False)
    monkeypatch.setenv(dist.FAULT_ENV, "kill:1:2:1")
    assert dist.fault_injector(0, restarted=False) is None  # another rank's fault
    fire = dist.fault_injector(1, restarted=False)
    fire(0, 2), fire(1, 1), fire(2, 2)  # not the step: nothing happens
    assert dist.fault_injector(1, restarted=True) is None  # a restarted group runs clean


def test_peer_failure_is_recognised_only_in_a_process_group():
    err = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv")
    assert not dist.is_peer_failure(err)  # no process group here: an ordinary error
