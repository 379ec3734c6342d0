"""Faults, end to end on CPU: a worker SIGKILLed mid-epoch under torchrun --max-restarts, a hung rank
and the collective timeout, non-finite losses, and bad inputs (one line, exit 2, no partial output).

The kill and the hang use the fault drill of docs/OPERATIONS.md (FASTIMAGENET_FAULT), which fires
only in the first attempt of an elastic run."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from conftest import REPO, make_jpeg_tree
from dawn.events import load_run
from dawn.prepare_dawn_tsv import eval_rows
from procs import run_bounded
from training import config as C
from training import dist, logs, loop, train
from training.data import imagefolder
from training.logs import RunLogger
from training.phases import parse_schedule

TINY = ["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "data.workers=0", "train.print_freq=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 24 train images (3 classes x 8), 12 validation: with 2 ranks, 2 steps in epochs 0 and 2, 1 in epoch 1
    return make_jpeg_tree(tmp_path_factory.mktemp("jpeg") / "data")


def run_group(cmd: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_bounded(cmd, cwd=REPO, timeout=timeout, env={**ENV, **(env or {})})


def torchrun(*args: str, nproc: int = 2, restarts: int = 0, env: dict | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """Plain torchrun, as a user would type it (no launcher, no extra environment)."""
    return run_group([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                      f"--max-restarts={restarts}", "training/train.py", *args], env, timeout)


def test_a_refused_logdir_under_torchrun_is_one_line_and_blames_no_rank(data, tmp_path):
    """Rank 0 alone checks the logdir; the others used to wait for it in a collective and report it
    dead or hung (torchrun then named the healthy rank as the failure)."""
    logdir = tmp_path / "run"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "config.yaml").write_text("recipe: imagenet\n")  # a logdir that holds a run
    r = torchrun(str(data), *TINY, f"train.logdir={logdir}", timeout=120)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: logdir {logdir} already holds a run"), r.stderr[-3000:]
    assert "dead or hung" not in r.stderr


def test_bad_data_only_the_ranks_see_is_refused_once_not_by_every_restart(tmp_path):
    """An empty class folder (--check lists folders, not their images) is refused by the ranks as they
    index the data. torchrun restarts a failed group whatever its exit status: each restart used to
    index the data again and refuse again (4 attempts x 2 ranks, ~164 s per first index of ImageNet),
    then exit 1 under torchrun's traceback. The restart now ends the group at once and the launcher
    says the line last and exits 2 (training/refusal.py, launch/common.sh)."""
    data = make_jpeg_tree(tmp_path / "data", classes=2, train_per_class=4, val_per_class=2)
    for f in (data / "validation" / "n00000001").iterdir():
        f.unlink()
    (tmp_path / "tmp").mkdir()
    r = run_group(["bash", "launch/local.sh", str(data), "data.workers=0", f"train.logdir={tmp_path / 'run'}"],
                  {"PYTHON": sys.executable, "NPROC": "2", "CONFIG": "configs/tiny_cpu.yaml", "MAX_RESTARTS": "3",
                   "TMPDIR": str(tmp_path / "tmp")}, timeout=180)
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr[-3000:]
    # each rank that indexed before torchrun stopped the group says it, in the first attempt only;
    # then the launcher, last
    assert 2 <= len(said) <= 3 and r.stderr.splitlines()[-1] == said[-1], r.stderr[-3000:]
    assert all(ln.endswith(f"class folder holds no images: {data}/validation/n00000001") for ln in said)
    assert "ChildFailedError" not in r.stderr and "no usable checkpoint" not in r.stderr  # no restart ran
    assert not list((tmp_path / "tmp").glob("fastimagenet-refused*"))  # the launcher's note is removed


HOLD = ("import sys, time; from training.logs import lock_logdir\n"
        "lock_logdir(sys.argv[1]); print('locked', flush=True); time.sleep(600)")
PROBE = ("import sys; from training.config import ConfigError; from training.logs import check_logdir_free\n"
         "try: check_logdir_free(sys.argv[1])\nexcept ConfigError as e: print(e)")


def lock_probe(logdir: Path) -> str:
    """What another process finds of ``logdir``'s lock: '' (free), or the error naming its holder."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(logdir)], cwd=REPO, capture_output=True, text=True,
                       timeout=60, check=True)
    return r.stdout.strip()


def test_a_logdir_in_use_refuses_a_second_run_until_its_holder_dies(
        data, tmp_path, capsys, monkeypatch, one_thread):
    """Two jobs on one logdir (--resume auto included) would write into one run, each one's keep-last-K
    deleting the other's checkpoints. A run holds the logdir's lock for its whole life; the kernel drops
    it when the holder dies, however it dies (here SIGKILL), so a crash never blocks the next run."""
    logdir = tmp_path / "run"
    logdir.mkdir()
    args = [str(data), *TINY, f"train.logdir={logdir}", "--resume", "auto", "train.max_epochs=1",
            "train.short_epoch=true", "train.short_epoch_steps=1"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(logdir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        in_use = (f"error: logdir {logdir} is in use by another run (pid {holder.pid} on host {socket.gethostname()}): "
                  "wait for it to end, or start this one with another --logdir")
        assert train.main([*args, "--check"]) == 2  # what the launchers run before torchrun
        assert capsys.readouterr().err.splitlines() == [in_use]
        cifar = ["--config", str(REPO / "configs" / "cifar10_cpu.yaml"), f"train.logdir={logdir}", "--check"]
        assert train.main(cifar) == 2
        assert capsys.readouterr().err.splitlines() == [in_use]
        assert train.main(args) == 2
        assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")] == [in_use]
        assert train.main([*args, "--evaluate", "--check"]) == 0  # evaluating the live run's checkpoints writes nothing
        assert sorted(p.name for p in logdir.iterdir()) == ["run.lock"]  # nothing of the refused run
        (logdir / "config.yaml").write_text("{}\n")  # what the holder has written: a fresh job is told it is in use,
        fresh = [a for a in args if a not in ("--resume", "auto")]  # not to continue it with --resume auto
        assert train.main(fresh) == 2
        assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")] == [in_use]
        assert train.main(cifar[:-1]) == 2  # the cifar recipe too, before it reads its data
        assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")] == [in_use]
        (logdir / "config.yaml").unlink()
    finally:
        holder.kill()
        holder.wait()
    seen = []
    run = loop.run

    def probing_run(*a, **kw):
        seen.append(lock_probe(logdir))
        return run(*a, **kw)

    monkeypatch.setattr(loop, "run", probing_run)
    assert train.main(args) == 0
    assert seen == [in_use[len("error: "):].replace(str(holder.pid), str(os.getpid()))]  # held while it trains
    assert lock_probe(logdir) == "" and not (logdir / "run.lock").exists()  # free, and gone, once it is done


def test_a_lock_file_that_cannot_be_written_is_a_config_error_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk or quota while naming the holder: rank 0 sends every rank a ConfigError (an OSError
    only it raised left the others waiting for its broadcast), and the lock file goes with the lock."""
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logs.os, "fsync", full)
    with pytest.raises(C.ConfigError, match=rf"logdir {tmp_path} is not writable \(No space left on device\)"):
        logs.lock_logdir(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    logs.lock_logdir(str(tmp_path)).release()  # free: nothing held


def _lockf_failing(errnos: list[int]):
    """fcntl.lockf that raises OSError(errno) for each of ``errnos`` in turn, then locks."""
    real = logs.fcntl.lockf

    def lockf(fd, how):
        if errnos:
            code = errnos.pop(0)
            raise OSError(code, os.strerror(code))
        return real(fd, how)
    return lockf


def test_a_filesystem_that_cannot_lock_warns_and_leaves_no_lock_file(tmp_path, monkeypatch, capsys):
    """NFS without lockd (ENOLCK): the run goes on unguarded, said once, and the empty file it made goes."""
    monkeypatch.setattr(logs.fcntl, "lockf", _lockf_failing([errno.ENOLCK]))
    assert logs.lock_logdir(str(tmp_path)) is None
    assert f"warning: cannot lock logdir {tmp_path} (No locks available)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_gone_stale_on_nfs_is_locked_anew(tmp_path, monkeypatch):
    """ESTALE: the holder deleted the file between our open and lockf (its release); lock the new one."""
    monkeypatch.setattr(logs.fcntl, "lockf", _lockf_failing([errno.ESTALE]))
    lock = logs.lock_logdir(str(tmp_path))
    assert lock is not None and json.loads((tmp_path / logs.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def final_checkpoint(logdir: Path) -> dict:
    return torch.load(sorted((logdir / "checkpoints").glob("epoch_*.pt"))[-1], weights_only=True)


def series(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar the DAWN exporter's reader sees, wall-clock tags left out."""
    return {tag: [(s.step, s.value) for s in values] for tag, values in load_run(logdir).scalars.items()
            if not tag.startswith("times/") and tag != "first"}


def test_sigkill_mid_epoch_elastic_restart_matches_uninterrupted_run(data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    # The uninterrupted run goes through launch/local.sh (torchrun --standalone --max-restarts=2) ...
    r = run_group(["bash", "launch/local.sh", str(data), "data.workers=0", "train.print_freq=1",
                   f"train.logdir={ref}"],
                  {"PYTHON": sys.executable, "NPROC": "2", "CONFIG": "configs/tiny_cpu.yaml", "MAX_RESTARTS": "2"})
    assert r.returncode == 0, r.stderr[-4000:]
    # ... the killed one through plain torchrun: rank 1 SIGKILLs itself after step 0 of epoch 2's two
    # steps (mid-epoch, after the size change), and the restarted group carries on by itself.
    r = torchrun(str(data), *TINY, f"train.logdir={run}", restarts=2, env={dist.FAULT_ENV: "kill:2:0:1"})
    assert r.returncode == 0, r.stderr[-4000:]
    assert "fault drill (FASTIMAGENET_FAULT): rank 1 killed after epoch 2 step 0" in r.stderr
    assert f"resuming from {run / 'checkpoints' / 'epoch_0002.pt'}" in r.stderr  # epoch 2, size 48, bs 8

    a, b = final_checkpoint(ref), final_checkpoint(run)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 72
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # One run in the event log: one start, and every logged value (loss per step, lr, sizes,
    # accuracy) at the same steps as the uninterrupted run's, no orphaned tail, nothing missing.
    assert len(load_run(run).scalars["first"]) == 1
    assert series(run) == series(ref)
    rows = eval_rows(load_run(run))
    assert [(x.epoch, x.step) for x in rows] == [(0, 24), (1, 48), (2, 72)]
    assert [(x.top1, x.top5) for x in rows] == [(x.top1, x.top5) for x in eval_rows(load_run(ref))]
    assert all(0 < x.hours < y.hours for x, y in zip(rows, rows[1:]))
    human = [ln.split("\t")[0] for ln in (run / "train.log").read_text().splitlines() if ln.startswith("~~")]
    assert human == ["~~epoch", "~~0", "~~1", "~~2"]


def test_hung_rank_fails_the_group_after_the_timeout_naming_it(data, tmp_path):
    start = time.time()
    r = torchrun(str(data), *TINY, f"train.logdir={tmp_path / 'run'}", "train.dist_timeout_s=5",
                 env={dist.FAULT_ENV: "hang:0:0:1"}, timeout=120)
    elapsed = time.time() - start
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: rank 0 of 2")]
    assert len(lines) == 1, r.stderr[-4000:]
    assert "at epoch 0" in lines[0] and "collective failed" in lines[0]
    assert "collective timeout 5s (train.dist_timeout_s)" in lines[0]
    assert lines[0].endswith("no word from rank 1: likely dead or hung"), lines[0]
    assert elapsed < 90


def test_resume_purges_what_the_crashed_attempt_logged_after_the_checkpoint(data, tmp_path, one_thread):
    logdir = tmp_path / "run"
    args = [str(data), *TINY, f"train.logdir={logdir}"]
    assert train.main([*args, "train.max_epochs=1"]) == 0  # checkpoint after epoch 0, at step 24
    # The crashed attempt's tail: values at steps the resumed run never logs (it logs every 8 or 16
    # images), so only the purge can remove them, and the `~~` row of an epoch it did not finish.
    crashed = SummaryWriter(str(logdir))
    for tag, step in (("losses/xent", 28), ("losses/test_1", 36), ("losses/test_5", 36), ("epoch", 36)):
        crashed.add_scalar(tag, 99.0, step)
    crashed.close()
    with open(logdir / "train.log", "a") as f:
        f.write("~~1\t0.00100\t\t99.000\t\t99.000\n")
    assert train.main([*args, "--resume", "auto"]) == 0
    scalars = load_run(logdir).scalars
    assert [s.step for s in scalars["losses/xent"]] == [8, 16, 24, 40, 48, 56, 64, 72]
    assert [(x.epoch, x.step) for x in eval_rows(load_run(logdir))] == [(0, 24), (1, 48), (2, 72)]
    assert 99.0 not in [s.value for values in scalars.values() for s in values]
    human = [ln.split("\t")[0] for ln in (logdir / "train.log").read_text().splitlines() if ln.startswith("~~")]
    assert human == ["~~epoch", "~~0", "~~1", "~~2"]


@pytest.mark.parametrize("known_by", ["restart count", "recorded agent"])
def test_restart_before_the_first_checkpoint_starts_the_log_over(data, tmp_path, capsys, monkeypatch, one_thread,
                                                                 known_by):
    logdir = tmp_path / "run"
    # a first attempt of this job that died in epoch 0, having recorded its agents first as the
    # trainer does (so its files are known as this job's): a start, a loss, no checkpoint
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    logdir.mkdir()
    dist.record_attempt(str(logdir), dist.Attempt(False, (dist.agent_id(),)))
    crashed = RunLogger(logdir, True)
    crashed.scalar("losses/xent", 99.0, 8)
    crashed.close()
    if known_by == "restart count":
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    else:  # every agent reports 0 (a membership change), but this one also ran the crashed attempt
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "train.short_epoch=true",
                     "train.short_epoch_steps=1"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"warning: no usable checkpoint in {logdir / 'checkpoints'}; starting from epoch 0" in err
    scalars = load_run(logdir).scalars
    assert len(scalars["first"]) == 1 and scalars["first"][0].wall_time > crashed.start_time
    assert 99.0 not in [x.value for x in scalars["losses/xent"]]
    assert (logdir / "train.log").read_text().count("~~epoch") == 1


# ------------------------------------------------------------------------------ non-finite loss

NAN_AT_EPOCH_1 = "[{'ep':0,'sz':32,'bs':8},{'ep':(0,1),'lr':0.02},{'ep':(1,3),'lr':1e30}]"


def test_nonfinite_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(
        data, tmp_path, capsys, one_thread):
    logdir = tmp_path / "run"
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "--phases", NAN_AT_EPOCH_1])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 1
    assert err == ["error: non-finite loss at epoch 1 step 1; stopping (train.nonfinite=skip skips such steps); "
                   "the last good checkpoint is kept"]
    assert [p.name for p in (logdir / "checkpoints").iterdir()] == ["epoch_0001.pt"]
    assert final_checkpoint(logdir)["epoch"] == 1


def test_a_stalled_loader_stops_the_run_in_one_line_keeping_the_last_checkpoint(
        data, tmp_path, capsys, monkeypatch, one_thread):
    """A worker stuck in epoch 1 (a read that never returns): after data.timeout_s the run exits 1
    saying so, epoch 0's checkpoint is there to resume from, and no worker is left behind."""
    real_item = imagefolder._Samples.__getitem__

    def item(self, key):  # in the worker; a training image's key is (index, epoch)
        if self.train and key[1] >= 1:
            time.sleep(600)
        return real_item(self, key)
    monkeypatch.setattr(imagefolder._Samples, "__getitem__", item)
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.5)
    logdir = tmp_path / "run"
    try:
        rc = train.main([str(data), *TINY, "data.workers=1", "data.timeout_s=2", f"train.logdir={logdir}",
                         "--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':(0,2),'lr':(0.1,0.01)}]"])
        left = multiprocessing.active_children()
    finally:
        for child in multiprocessing.active_children():  # else pytest's exit would wait for it, 600 s
            child.kill()
            child.join()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 1
    assert err == ["error: the training loader's workers sent no batch in 2 s (data.timeout_s): a worker is "
                   "stuck, e.g. on a file system that stopped answering; continue the run with --resume auto"]
    assert [p.name for p in (logdir / "checkpoints").iterdir()] == ["epoch_0001.pt"]
    assert left == []


def test_nonfinite_weights_with_skipped_steps_stop_in_one_line(data, tmp_path, capsys, one_thread):
    """train.nonfinite=skip: the loss stays finite while lr 1e30 drives the weights to inf; the epoch's
    checkpoint is refused, the last good one kept, said once."""
    logdir = tmp_path / "run"
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "train.nonfinite=skip", "--phases", NAN_AT_EPOCH_1])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 1
    assert err == ["error: weights became non-finite in epoch 1; not checkpointed; the last good checkpoint is kept"]
    assert [p.name for p in (logdir / "checkpoints").iterdir()] == ["epoch_0001.pt"]


class Batches:
    """A loader of fixed batches; the second one is poisoned with a NaN."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(2, 3, 4, 4, generator=g), torch.tensor([0, 1])) for _ in range(4)]
        self.batches[1][0][0, 0, 0, 0] = float("nan")
        self.num_images = 8

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _epoch(tmp_path: Path, nonfinite: str, loader, print_freq: int = 1) -> loop.TrainState:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = parse_schedule([{"ep": 0, "sz": 4, "bs": 2}, {"ep": [0, 1], "lr": 0.1}])
    state = loop.TrainState(model, model, opt, None, sched)
    ctx = loop.RunContext(dist=dist.DistInfo(0, 1, 0, torch.device("cpu")), logger=RunLogger(tmp_path, True),
                          num_train=8, nonfinite=nonfinite, print_freq=print_freq)
    try:
        loop.train_epoch(state, loader, loop.Hooks(loss_fn=nn.CrossEntropyLoss()), ctx, epoch=0)
    finally:
        ctx.logger.close()
    return state


def test_nonfinite_skip_skips_only_that_step(tmp_path, capsys):
    state = _epoch(tmp_path / "a", "skip", Batches())
    assert "warning: non-finite loss at epoch 0 step 1: step skipped" in capsys.readouterr().err
    clean = Batches()
    clean.batches.pop(1)  # the same run without the poisoned batch (constant lr, no momentum)
    ref = _epoch(tmp_path / "b", "skip", clean)
    for p, q in zip(state.model.parameters(), ref.model.parameters()):
        assert torch.isfinite(p).all() and torch.equal(p, q)
    # the step axis counts the images seen, the skipped batch's too: the epoch ends where a clean one does
    assert (state.step, ref.step) == (8, 6)


@pytest.mark.parametrize("print_freq", [1, 3, 100])
def test_nonfinite_stop_names_epoch_and_first_bad_step(tmp_path, print_freq):
    """Steps 1-3 are all non-finite (the NaN poisons the weights); checked at every step, after the
    third, or only at the epoch's end, the message names the first of them."""
    with pytest.raises(loop.NonFiniteLoss, match=r"^non-finite loss at epoch 0 step 1; stopping"):
        _epoch(tmp_path, "stop", Batches(), print_freq)


NEVER = torch.iinfo(torch.long).max  # a rank whose losses were all finite


@pytest.mark.parametrize("own_nan, others, first_bad", [
    (True, [NEVER, 2], 1),  # this rank's step 1 is the earliest: a rank with none must not hide it
    (True, [NEVER, 0], 0),  # another rank's earlier step
    (False, [3, NEVER], 3),  # only another rank saw one: this rank, all finite, stops as well
])
def test_a_nonfinite_loss_on_any_rank_stops_every_rank_at_the_first_bad_step_of_any(
        tmp_path, monkeypatch, own_nan, others, first_bad):
    """In a group of 3, each rank's own losses differ (its own batches): the check after the epoch's
    last step is one all-reduce of each rank's first bad step, and every rank stops naming the
    earliest of them, whichever rank saw it. Here the two other ranks' first bad steps are given (an
    all_reduce that reduces this rank's value with theirs by the op asked for)."""
    def all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=None, async_op=False):
        values = [int(t.item()), *others]
        t.fill_(min(values) if op == torch.distributed.ReduceOp.MIN else
                max(values) if op == torch.distributed.ReduceOp.MAX else sum(values))

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 3)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    batches = Batches()
    if not own_nan:
        batches.batches[1][0][0, 0, 0, 0] = 0.0
    with pytest.raises(loop.NonFiniteLoss, match=rf"^non-finite loss at epoch 0 step {first_bad}; stopping"):
        _epoch(tmp_path, "stop", batches, print_freq=100)  # checked after the last step only


# ---------------------------------------------------------------------------------- bad inputs

def tree(tmp_path: Path, **kw) -> Path:
    return make_jpeg_tree(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1, **kw)


def _empty_dir(tmp_path):
    (tmp_path / "data").mkdir()
    return tmp_path / "data", "data dir {data}/train does not exist"


def _no_class_folders(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / "data" / split).mkdir(parents=True)
    return tmp_path / "data", "no class folders in {data}/train"


def _empty_class(tmp_path):
    data = tree(tmp_path)
    (data / "train" / "n00000009").mkdir()
    (data / "validation" / "n00000009").mkdir()
    return data, "class folder holds no images: {data}/train/n00000009"


def _classes_differ(tmp_path):
    data = tree(tmp_path)
    (data / "validation" / "n00000001").rename(data / "validation" / "n00000007")
    return data, ("class folders differ between {data}/train (2) and {data}/validation (2): "
                  "1 only in train (first n00000001)")


PHASE_COPY = "[{'ep':0,'sz':32,'bs':8},{'ep':1,'sz':32,'bs':8,'trndir':'-c'},{'ep':(0,2),'lr':0.02}]"


def _phase_copy_classes_differ(tmp_path):
    data = tree(tmp_path)
    copy = make_jpeg_tree(tmp_path / "data-c", classes=2, train_per_class=2, val_per_class=1)
    for split in ("train", "validation"):  # as many classes, one named otherwise: labels would shift
        (copy / split / "n00000000").rename(copy / split / "n00000005")
    return data, ("class folders differ between {data}/train (2) and {data}-c/train (2): "
                  "1 only in the first phase's train (first n00000000)")


def _fewer_outputs_than_classes(tmp_path):
    return tree(tmp_path), "model.num_classes=1 is fewer than the 2 class folders of the data"


def _corrupt_image(tmp_path):
    data = tree(tmp_path)
    bad = data / "train" / "n00000001" / "img_0001.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: no end-of-image marker
    return data, "unreadable image {data}/train/n00000001/img_0001.JPEG: "


def _corrupt_image_in_a_later_phase_copy(tmp_path):
    """Found when the epoch-1 phase's loaders were built: a logdir with a trained epoch was left
    (imagenet18's -sz copies give way to DATA at epoch 14), though the index reads every header first."""
    tree(tmp_path)
    copy = make_jpeg_tree(tmp_path / "data-c", classes=2, train_per_class=2, val_per_class=1)
    bad = copy / "validation" / "n00000001" / "img_0000.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    return tmp_path / "data", "unreadable image {data}-c/validation/n00000001/img_0000.JPEG: "


@pytest.mark.parametrize("make,extra", [
    (_empty_dir, []),
    (_no_class_folders, []),
    (_empty_class, []),
    (_classes_differ, []),
    (_phase_copy_classes_differ, ["--phases", PHASE_COPY]),
    (_fewer_outputs_than_classes, ["model.num_classes=1"]),
    (_corrupt_image, ["data.bad_images=error"]),
    (_corrupt_image_in_a_later_phase_copy, ["--phases", PHASE_COPY, "data.bad_images=error"]),
])
def test_bad_data_one_line_exit_2_no_partial_output(tmp_path, capsys, make, extra):
    data, message = make(tmp_path)
    logdir = tmp_path / "out" / "run"
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message.format(data=data) in err, err
    assert not (tmp_path / "out").exists()  # the logdir it created for the run is gone again


def test_corrupt_image_is_skipped_with_a_named_warning(tmp_path, capsys, one_thread):
    data, _ = _corrupt_image(tmp_path)
    rc = train.main([str(data), *TINY, f"train.logdir={tmp_path / 'run'}", "train.max_epochs=1",
                     "train.short_epoch=true", "train.short_epoch_steps=1"])
    err = capsys.readouterr().err
    assert rc == 0
    assert f"loader: skipping unreadable image {data}/train/n00000001/img_0001.JPEG: " in err


@pytest.mark.parametrize("phases,message", [
    ("[{'ep':0,'bs':2}]", "error: phase 0: "),
    ("[{'ep': 0, 'sz': 32, 'bs': 8}, {'ep': (0, 2), 'lr': 0.1}", "error: phases: not a Python literal, JSON or YAML"),
    ("[{'ep': 0, 'sz': __import__('os').system('touch {marker}'), 'bs': 8}]", "error: phases: not a literal"),
    ("{}", "error: phases: expected a non-empty list of dicts"),
])
def test_bad_phases_in_a_real_run(tmp_path, capsys, phases, message):
    marker = tmp_path / "pwned"
    logdir = tmp_path / "run"
    rc = train.main([str(tree(tmp_path)), *TINY, f"train.logdir={logdir}",
                     "--phases", phases.replace("{marker}", str(marker))])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(message), err
    assert not marker.exists() and not logdir.exists()


# ------------------------------------------------------------------------ resuming, found by audit

def test_resume_with_changed_optimizer_settings_trains_with_the_new_ones(data, tmp_path, capsys, one_thread):
    """The warning and config.yaml say a resumed run goes on with the new optim.* values; the
    optimizer's load_state_dict used to put the checkpoint's weight decay and momentum back, so the
    run silently trained with the old ones (bit for bit the unchanged run)."""
    logdir = tmp_path / "run"
    args = [str(data), *TINY, f"train.logdir={logdir}", "train.short_epoch=true", "train.short_epoch_steps=1"]
    assert train.main([*args, "train.max_epochs=1"]) == 0
    assert train.main([*args, "--resume", "auto", "optim.weight_decay=0.5", "optim.momentum=0.5",
                       "optim.nesterov=true"]) == 0
    assert "optim.weight_decay 5e-05 -> 0.5" in capsys.readouterr().err
    groups = final_checkpoint(logdir)["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["momentum"], g["nesterov"]) for g in groups] == [(0.5, 0.5, True), (0.0, 0.5, True)]


def test_resume_under_another_world_size_says_so(data, tmp_path, capsys, one_thread):
    """An elastic restart on fewer machines goes on with the same per-process batches: another global
    batch and other steps per epoch, which the user is told once; the checkpoint records its world size."""
    logdir = tmp_path / "run"
    args = [str(data), *TINY, f"train.logdir={logdir}", "train.short_epoch=true", "train.short_epoch_steps=1"]
    assert train.main([*args, "train.max_epochs=1"]) == 0
    path = sorted((logdir / "checkpoints").glob("epoch_*.pt"))[-1]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["world_size"] == 1
    torch.save({**ckpt, "world_size": 2}, path)  # as if two processes had written it
    capsys.readouterr()
    assert train.main([*args, "--resume", "auto"]) == 0
    assert capsys.readouterr().err.count("warning: the checkpoint was written by 2 processes, this run has 1: "
                                         "the schedule's batch sizes are per process") == 1


def test_a_phase_on_a_data_copy_with_more_images_trains_them_all_and_resumes_exactly(tmp_path, one_thread):
    """A phase's trndir copy may hold another number of images (a bad file skipped in one copy): its
    epochs used to be cut to the first phase's step count (12 of the copy's 36 images never trained,
    the lr ramp cut short), while a run resumed in that phase ran them all: not the same weights."""
    data = make_jpeg_tree(tmp_path / "data", train_per_class=8, val_per_class=1)  # 24 images
    make_jpeg_tree(tmp_path / "data-big", train_per_class=12, val_per_class=1, seed=1)  # 36 images
    phases = "[{'ep':0,'sz':32,'bs':8},{'ep':1,'sz':32,'bs':8,'trndir':'-big'},{'ep':(0,2),'lr':(0.02,0.002)}]"
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = [str(data), *TINY, "--phases", phases]
    assert train.main([*args, f"train.logdir={ref}"]) == 0
    assert train.main([*args, f"train.logdir={run}", "train.max_epochs=1"]) == 0
    assert train.main([*args, f"train.logdir={run}", "--resume", "auto"]) == 0
    a, b = final_checkpoint(ref), final_checkpoint(run)
    assert a["step"] == b["step"] == 24 + 36
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
