"""A newcomer's first hour, as the README and --help lead it: one run per logdir, a config.yaml that
says what trained, plans with the recipe's data set, errors that say where, help that explains.
Short in-process runs of the tiny CPU config (one step per epoch) on a generated JPEG tree."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, make_jpeg_tree
from training import config as C
from training import dist, loop, resize, train
from training.bench import main as bench_main
from training.phases import DEFAULT_MIN_SCALE, DataPhase, parse_schedule
from training.profiling import TraceWindow

TINY = ["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "data.workers=0", "train.print_freq=1",
        "train.short_epoch=true", "train.short_epoch_steps=1"]
ONE_EPOCH = "[{'ep':0,'sz':32,'bs':8},{'ep':(0,1),'lr':0.02}]"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_jpeg_tree(tmp_path_factory.mktemp("jpeg") / "data", classes=2, train_per_class=4, val_per_class=2)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished one-epoch run; tests copy it before touching it."""
    logdir = tmp_path_factory.mktemp("finished") / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "--phases", ONE_EPOCH]) == 0
    return logdir


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def snapshot(d: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``d`` with its content hash and mtime: what 'nothing changed' means."""
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------- 1. one run per logdir

def test_a_fresh_run_refuses_a_logdir_holding_a_run_and_changes_nothing(data, finished, tmp_path, capsys):
    logdir = copy_of(finished, tmp_path)
    before = snapshot(logdir)
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "--phases", ONE_EPOCH])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert line.startswith(f"error: logdir {logdir} already holds a run (checkpoints/epoch_0001.pt, config.yaml, ")
    assert line.endswith("continue it with --resume auto, or start a new run with --logdir NEW_DIR")
    assert snapshot(logdir) == before


def test_a_restart_does_not_resume_a_run_another_launch_started(data, finished, tmp_path, capsys, monkeypatch):
    """torchrun restarts a group whose first attempt was refused: the restart must be refused too."""
    logdir = copy_of(finished, tmp_path)
    dist.record_attempt(str(logdir), dist.Attempt(False, ("otherhost:4242:123456",)))  # the older job's agent
    before = snapshot(logdir)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a-later-job")
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "--phases", ONE_EPOCH])
    assert rc == 2 and "already holds a run" in one_error_line(capsys.readouterr().err)
    assert snapshot(logdir) == before


def test_the_cifar_recipe_refuses_a_used_logdir(tmp_path, capsys):
    (tmp_path / "cifar-10-batches-py").mkdir()  # found, and never read: the refusal comes first
    logdir = tmp_path / "run"
    (logdir / "run_000").mkdir(parents=True)
    (logdir / "config.yaml").write_text("recipe: cifar\n")
    rc = train.main(["--config", str(REPO / "configs" / "cifar10_cpu.yaml"), "--data", str(tmp_path),
                     "cifar.download=false", f"train.logdir={logdir}"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.endswith("start a new run with --logdir NEW_DIR (this recipe keeps no checkpoints "
                                     "to resume)"), line
    assert sorted(p.name for p in logdir.iterdir()) == ["config.yaml", "run_000"]


def test_resume_auto_on_a_finished_run_says_so_and_touches_nothing(data, finished, tmp_path, capsys):
    logdir = copy_of(finished, tmp_path)
    before = snapshot(logdir)
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "--resume", "auto"])
    assert rc == 0
    assert f"{logdir}: the run is already complete (1 of 1 epochs); nothing to do" in capsys.readouterr().err
    assert snapshot(logdir) == before


# ------------------------------------------------------------- 2. config.yaml says what trains

def test_resume_with_other_phases_warns_and_config_yaml_keeps_the_schedule_that_trains(data, tmp_path, capsys):
    logdir = tmp_path / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1"]) == 0
    trained = yaml.safe_load((logdir / "config.yaml").read_text())["phases"]
    capsys.readouterr()
    rc = train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--resume", "auto",
                     "--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':(0,3),'lr':0.5}]"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: the phases given differ from the checkpoint's; the run goes on with the checkpoint's " \
           "schedule" in err
    assert yaml.safe_load((logdir / "config.yaml").read_text())["phases"] == trained
    assert torch.load(logdir / "checkpoints" / "epoch_0002.pt", weights_only=True)["config"]["phases"] == trained


def test_resume_checks_the_data_of_the_phases_it_trains(tmp_path, capsys):
    """A resumed run trains its checkpoint's phases: the data check before it (and --check's) reads
    their dirs, not those of the phases given, which it ignores."""
    data = make_jpeg_tree(tmp_path / "d", classes=2, train_per_class=4, val_per_class=2)
    copy = shutil.copytree(data, tmp_path / "d-copy")  # DATA-copy, read from epoch 1
    logdir = tmp_path / "run"
    first = "[{'ep':0,'sz':32,'bs':8},{'ep':1,'sz':32,'bs':8,'trndir':'-copy'},{'ep':(0,3),'lr':0.02}]"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--phases", first]) == 0
    resume = [str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--resume", "auto", "--phases"]
    plain = "[{'ep':0,'sz':32,'bs':8},{'ep':(0,3),'lr':0.02}]"  # its data is all there
    copy.rename(tmp_path / "away")
    before = snapshot(logdir)
    capsys.readouterr()
    refusal = f"error: data dir {copy}/train does not exist (phase at epoch 1)"
    assert train.main([*resume, plain, "--check"]) == 2
    assert one_error_line(capsys.readouterr().err) == refusal
    assert train.main([*resume, plain]) == 2  # once the checkpoint is read: the line saying which one, then this
    assert capsys.readouterr().err.splitlines() == [f"resuming from {logdir}/checkpoints/epoch_0001.pt", refusal]
    (tmp_path / "away").rename(copy)
    for split in ("train", "validation"):  # a copy whose classes would relabel the images
        (copy / split / "n00000001").rename(copy / split / "n00000009")
    assert train.main([*resume, plain]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: class folders differ between {data}/train (2) and {copy}/train (2): 1 only in the first "
        "phase's train (first n00000001)")
    assert snapshot(logdir) == before
    for split in ("train", "validation"):
        (copy / split / "n00000009").rename(copy / split / "n00000001")
    elsewhere = "[{'ep':0,'sz':32,'bs':8,'trndir':'-nowhere'},{'ep':(0,3),'lr':0.02}]"  # ignored: no such data
    assert train.main([*resume, elsewhere, "--check"]) == 0
    assert train.main([*resume, elsewhere]) == 0
    assert "the run goes on with the checkpoint's schedule" in capsys.readouterr().err
    assert (logdir / "checkpoints" / "epoch_0002.pt").exists()


def test_a_checkpoints_schedule_is_resumed_as_it_was_written(data, finished, tmp_path, capsys):
    """A data phase past the end is refused in a new schedule, not in one a run already trains."""
    logdir = copy_of(finished, tmp_path)
    path = logdir / "checkpoints" / "epoch_0001.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["phases"].append({"ep": 5, "sz": 32, "bs": 8})  # as written before the refusal
    torch.save(ckpt, path)
    argv = [str(data), *TINY, f"train.logdir={logdir}", "--resume", "auto", "--phases", ONE_EPOCH]
    assert train.main([*argv, "--check"]) == 0
    assert train.main(argv) == 0
    assert "the run is already complete (1 of 1 epochs)" in capsys.readouterr().err


def test_a_run_is_resumed_with_the_config_it_began_with(data, finished, tmp_path, capsys):
    """The config a run began with (before a data phase past the end was refused) still resumes it:
    the checkpoint's phases train, and they are the config's; only a new run refuses them."""
    logdir = copy_of(finished, tmp_path)
    path = logdir / "checkpoints" / "epoch_0001.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["phases"].append({"ep": 5, "sz": 32, "bs": 8})
    torch.save(ckpt, path)
    began = str(ckpt["config"]["phases"])
    argv = [str(data), *TINY, f"train.logdir={logdir}", "--phases", began]
    for extra in (["--check"], [], ["--dry-run"]):
        assert train.main([*argv, "--resume", "auto", *extra]) == 0, capsys.readouterr().err
    capsys.readouterr()
    fresh = [str(data), *TINY, f"train.logdir={tmp_path / 'new'}", "--phases", began, "--dry-run"]
    assert train.main(fresh) == 2
    assert "the data phase at epoch 5 never runs" in capsys.readouterr().err


def test_resume_with_other_settings_names_them(data, tmp_path, capsys):
    logdir = tmp_path / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1"]) == 0
    capsys.readouterr()
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--resume", "auto"]) == 0
    assert "differ from the checkpoint's" not in capsys.readouterr().err  # the same settings: nothing to say
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--resume", "auto",
                       "optim.weight_decay=0.001", "train.seed=7", "train.print_freq=3"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "differ from the checkpoint's" in line]
    assert err == ["warning: resuming with settings that differ from the checkpoint's: optim.weight_decay "
                   "5e-05 -> 0.001; train.seed 0 -> 7 (the run goes on with the new ones; config.yaml records them)"]
    assert yaml.safe_load((logdir / "config.yaml").read_text())["train"]["seed"] == 7


def test_resuming_an_older_checkpoint_sets_the_later_ones_aside(data, tmp_path, capsys):
    """They belong to the abandoned continuation: a restart (--resume auto) must resume the new run's
    own epoch 2, not the old epoch 3 (it did, and called the run complete)."""
    logdir = tmp_path / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}"]) == 0  # epochs 1-3
    ckpts = logdir / "checkpoints"
    capsys.readouterr()
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1",
                       "--resume", str(ckpts / "epoch_0001.pt")]) == 0
    assert f"note: this run resumes at epoch 1: 2 checkpoint(s) of later epochs moved to {ckpts / 'superseded'}" \
        in capsys.readouterr().err
    assert sorted(p.name for p in ckpts.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert sorted(p.name for p in (ckpts / "superseded").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt"]
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {ckpts / 'epoch_0002.pt'}" in err and "already complete" not in err
    assert sorted(p.name for p in ckpts.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]


def test_a_requeued_slurm_job_continues_the_logdir_not_its_first_resume_path(data, tmp_path, capsys, monkeypatch):
    """Submitted with --resume PATH (an older run's checkpoint), requeued after epoch 2: it must go on
    from epoch 2, not roll back to PATH again (and set the newer checkpoints aside)."""
    logdir = tmp_path / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=2"]) == 0
    first = logdir / "checkpoints" / "epoch_0001.pt"
    capsys.readouterr()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "--resume", str(first)]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {logdir / 'checkpoints' / 'epoch_0002.pt'}" in err and "superseded" not in err


def test_resume_auto_without_a_checkpoint_starts_the_run_over(data, tmp_path, capsys):
    """A requeued job preempted before its first checkpoint: one run, one train.log header."""
    logdir = tmp_path / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1"]) == 0
    for p in (logdir / "checkpoints").iterdir():
        p.unlink()
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--resume", "auto"]) == 0
    assert "no usable checkpoint" in capsys.readouterr().err
    log = (logdir / "train.log").read_text().splitlines()
    assert sum(line.startswith("~~epoch") for line in log) == 1 and sum(line.startswith("~~0\t") for line in log) == 1


def test_a_start_over_past_unusable_checkpoints_keeps_its_own(data, tmp_path, capsys):
    """Every checkpoint corrupt: --resume auto starts over, and the corrupt ones go aside; left in place,
    keep-last-3 counted them as the newest and deleted the new run's own checkpoints as it wrote them."""
    logdir = tmp_path / "run"
    ckpts = logdir / "checkpoints"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}"]) == 0  # epochs 1-3
    for p in ckpts.glob("epoch_*.pt"):
        p.write_bytes(p.read_bytes()[:100])  # truncated
    capsys.readouterr()
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err
    assert f"note: this run starts over at epoch 0: 3 checkpoint(s) of later epochs moved to {ckpts / 'superseded'}" \
        in err
    assert sorted(p.name for p in ckpts.glob("epoch_*.pt")) == ["epoch_0001.pt"]
    assert torch.load(ckpts / "epoch_0001.pt", weights_only=True)["epoch"] == 1


def test_the_clock_starts_before_the_set_up_as_imagenet18s(data, tmp_path, monkeypatch):
    """imagenet18 logged `first` before indexing its data and building its model; hours counted from
    after the set-up would flatter a time-to-accuracy."""
    from dawn.events import load_run
    from training.recipes import imagenet
    checked = []
    real = imagenet.check_data_root
    monkeypatch.setattr(imagenet, "check_data_root", lambda *a: (real(*a), checked.append(time.time())))
    logdir = tmp_path / "run"
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1"]) == 0
    (first,) = load_run(logdir).scalars["first"]
    assert first.wall_time < checked[0]  # (its value is the same time, in float32)


def test_a_run_resumed_into_a_new_logdir_exports_with_the_original_clock(data, tmp_path):
    from dawn.events import load_run
    from dawn.prepare_dawn_tsv import eval_rows
    old, new = tmp_path / "old", tmp_path / "new"
    assert train.main([str(data), *TINY, f"train.logdir={old}", "train.max_epochs=1"]) == 0
    assert train.main([str(data), *TINY, f"train.logdir={new}", "train.max_epochs=1",
                       "--resume", str(old / "checkpoints" / "epoch_0001.pt")]) == 0
    (first_old,) = load_run(old).scalars["first"]
    (first_new,) = load_run(new).scalars["first"]  # there was none: "no start tag", no export
    assert first_new.wall_time == first_old.wall_time
    rows = eval_rows(load_run(new))
    assert [r.epoch for r in rows] == [1] and rows[0].hours > eval_rows(load_run(old))[0].hours
    assert (new / "train.log").read_text().startswith("~~epoch")
    # its JSON entry too: the run's metadata (torch, arch, the whole schedule), not "unknown" and a
    # schedule rebuilt from this logdir's sizes alone (the resumed phase's size "from epoch 0")
    from dawn.prepare_dawn_tsv import dawn_entry
    entry = dawn_entry(load_run(new), rows, 93.0, False)
    assert entry["model"] == "resnet18" and entry["framework"] == f"PyTorch {torch.__version__}"
    assert entry["misc"]["schedule"]["source"] == "run metadata phases"
    assert json.loads((new / "metadata.json").read_text())["arch"] == "resnet18"
    # a resume into the run's own logdir logs it once, with the run's start
    assert train.main([str(data), *TINY, f"train.logdir={old}", "--resume", "auto"]) == 0
    assert len(load_run(old).texts["run/metadata/text_summary"]) == 1


# ---------------------------------------------------------- 3. plans with the recipe's data set

def test_dry_run_of_a_cifar_config_plans_cifars_images(capsys):
    assert train.main(["--config", str(REPO / "configs" / "cifar10_cpu.yaml"), "--dry-run"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["iters"] for r in rows] == [97] * 4  # 50,000 images / bs 512, the last partial batch dropped
    assert [r["size"] for r in rows] == [16, 24, 32, 32]  # the training images scaled down in epochs 0-1
    # the GPU config too, whose last epoch is cut short: the steps the recipe runs, and their lr
    assert train.main(["--config", str(REPO / "configs" / "cifar10.yaml"), "--dry-run"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    schedule = parse_schedule(C.load_yaml(str(REPO / "configs" / "cifar10.yaml"))["phases"], step_start=True)
    assert [r["iters"] for r in rows] == [schedule.iters_per_epoch(e, 50_000, 1, True) for e in range(10)]
    assert rows[-1]["lr_last"] == schedule.lr(9, rows[-1]["iters"] - 1, 50_000 // 1024)


KEEP_DL = ("[{'ep':0,'sz':128,'bs':256},{'ep':1,'sz':224,'bs':128},{'ep':2,'sz':224,'bs':512,'keep_dl':True},"
           "{'ep':3,'sz':288,'bs':64},{'ep':(0,4),'lr':0.1}]")


@pytest.mark.parametrize("args, val_batches", [
    ([], [512, 256, 256, 128]),  # imagenet18's rule; keep_dl keeps the 224 px loaders, and their batch
    (["data.val_batch_size=100"], [100] * 4),
    (["--config", str(REPO / "configs" / "cifar10_cpu.yaml")], [500] * 4),  # cifar.eval_batch_size
])
def test_dry_run_shows_the_validation_batch(capsys, args, val_batches):
    phases = [] if "--config" in args else ["--phases", KEEP_DL]
    assert train.main([*args, *phases, "--dry-run"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["val_batch_size"] for r in rows] == val_batches


def test_plot_schedule_plans_the_recipes_images(monkeypatch, tmp_path):
    import dawn.plot
    seen = []
    monkeypatch.setattr(dawn.plot, "plot_schedule", lambda schedule, path, **kw: seen.append(kw))
    for config, images, drop_last in (("cifar10_cpu.yaml", 50_000, True), ("tiny_cpu.yaml", 1_281_167, False)):
        assert train.main(["--config", str(REPO / "configs" / config), "--plot-schedule",
                           str(tmp_path / "s.png")]) == 0
        assert seen.pop() == {"num_images": images, "world_size": 1, "drop_last": drop_last}
    assert train.main(["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--loader", "synthetic",
                       "--plot-schedule", str(tmp_path / "s.png")]) == 0
    assert seen.pop()["num_images"] == 1024  # data.synthetic_images


# ---------------------------------------------------------------------- 4. errors that say where

@pytest.mark.parametrize("phases,message", [
    ("[{'ep':0 'sz':32,'bs':8},{'ep':(0,2),'lr':0.1}]",
     "phases: not a Python literal, JSON or YAML list of dicts: line 1, column 8: invalid syntax. "
     "Perhaps you forgot a comma? (near \"0 'sz':32,'bs':8},{'\")"),
    ("[{'ep':0,'sz':32,'bs':8},{'ep':(0,2),'lr':(0.02 0.08)}]",
     "line 1, column 44: invalid syntax. Perhaps you forgot a comma? (near '0.02 0.08)}]')"),
    ("- {ep: 0, sz: 32, bs: 8}\n- {ep: [0, 2] lr: 0.1}\n", "line 2, column 15: expected ',' or '}'"),
    ("phases.txt", "error: phases: no such file: phases.txt"),
    ("schedules/imagenet18", "error: phases: no such file: schedules/imagenet18"),
])
def test_phase_errors_say_where(capsys, phases, message):
    rc = train.main(["--phases", phases, "--dry-run"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and message in line, line
    assert "unknown key" not in line


def test_config_yaml_errors_give_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: imagenet\ntrain:\n  seed: 1\n   logdir: x\n")
    rc = train.main(["--config", str(bad), "--dry-run"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith(f"error: config file {bad}: not valid YAML: line 4, column 10: "), line


# ----------------------------------------------------------------- 5. -e needs a checkpoint

def test_evaluate_without_a_checkpoint_is_refused(data, tmp_path, capsys):
    rc = train.main([str(data), *TINY, f"train.logdir={tmp_path / 'run'}", "-e"])
    assert rc == 2 and "--evaluate (-e) evaluates a checkpoint: give --resume PATH" in \
        one_error_line(capsys.readouterr().err)
    rc = train.main([str(data), *TINY, f"train.logdir={tmp_path / 'run'}", "-e", "--resume", "auto"])
    assert rc == 2 and "nothing to evaluate: no usable checkpoint in" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_evaluate_writes_nothing(data, finished, tmp_path, capsys):
    logdir = copy_of(finished, tmp_path)
    before = snapshot(logdir)
    assert train.main([str(data), *TINY, f"train.logdir={logdir}", "-e", "--resume", "auto"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epoch"] == 1
    assert snapshot(logdir) == before


# ------------------------------------------------------- 6. a profile trace that records nothing

def test_profile_trace_shorter_than_its_window_says_so(tmp_path, capsys):
    with TraceWindow(str(tmp_path / "trace"), torch.device("cpu")) as trace:
        for i in range(3):
            torch.ones(4).sum()
            trace.hook(None, i)
    err = capsys.readouterr().err
    assert f"warning: --profile-trace {tmp_path / 'trace'}: training stopped after 3 step(s); the trace " \
           "records steps 5-8 of this invocation, so it holds none of them" in err


# ------------------------------------------------------------------------------ 7. help, config

def test_every_flag_says_what_it_means_and_its_default():
    for action in train.make_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = action.help or ""
        assert len(text) > 20 and not re.fullmatch(r"[\w.]+=\S+", text), (action.option_strings, text)
        if action.dest in train.VALUED:
            assert re.search(r"\(\w+\.\w+; default .+\)$", text), (action.option_strings, text)
    helps = {a.dest: a.help for a in train.make_parser()._actions}
    assert "more epochs in this invocation" in helps["max_epochs"]
    assert "(data.workers; default 8)" in helps["workers"]


def test_numbers_read_as_python_reads_them(tmp_path):
    """The README's own override example, and exponent floats in a config file and a YAML schedule
    (PyYAML's YAML 1.1 read 5e-5 as text, refused as 'expected float')."""
    (tmp_path / "c.yaml").write_text("optim:\n  weight_decay: 1e-4\n  momentum: .9\n"
                                     "phases:\n  - {ep: 0, sz: 32, bs: 8}\n  - {ep: [0, 2], lr: [2.5e-2, 1E-3]}\n")
    _, cfg = train.resolve(["--config", str(tmp_path / "c.yaml")])
    assert (cfg.optim.weight_decay, cfg.optim.momentum) == (1e-4, 0.9)
    assert parse_schedule(cfg.phases).lr(1, 0, 10) == pytest.approx(2.5e-2 + (1e-3 - 2.5e-2) * 11 / 20)
    _, cfg = train.resolve(["--config", str(tmp_path / "c.yaml"), "optim.weight_decay=5e-5", "train.seed=3"])
    assert (cfg.optim.weight_decay, cfg.train.seed) == (5e-5, 3)
    for seed in ("010", "1:30"):  # YAML 1.1's octal 8 and base-60 90: refused, not trained quietly
        with pytest.raises(C.ConfigError, match=f"expected int, got '{seed}'"):
            train.resolve(["--config", str(tmp_path / "c.yaml"), "--seed", seed])


def test_print_config_prints_every_key_with_its_value_and_meaning(capsys):
    argv = ["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--workers", "3", "optim.momentum=0.8",
            "--print-config"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    resolved = train.resolve(argv)[1]
    assert yaml.safe_load(out) == C.to_dict(resolved)  # loads back as a config file
    assert "  workers: 3  # loader worker processes (threads for DALI) per rank" in out.splitlines()
    assert "  momentum: 0.8  # SGD momentum" in out.splitlines()
    keys = [ln for ln in out.splitlines() if re.match(r"^ *\w+: \S", ln)]  # every key line holding a value
    assert len(keys) == sum(len(v) if isinstance(v, dict) else 1 for v in C.to_dict(resolved).values()) - 1
    assert all("  # " in ln for ln in keys), [ln for ln in keys if "  # " not in ln]


def test_the_readmes_tiny_data_command_makes_a_tree(tmp_path):
    cmd = next(ln for ln in (REPO / "README.md").read_text().splitlines() if "make_tree(" in ln)
    r = subprocess.run(shlex.split(cmd.replace("python ", f"{sys.executable} ", 1)), cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    train_dir = tmp_path / "data" / "tiny" / "train"
    assert len(list(train_dir.iterdir())) == 4 and len(list(train_dir.rglob("*.JPEG"))) == 100
    assert "python training/train.py data/tiny --config configs/tiny_cpu.yaml" in (REPO / "README.md").read_text()


# --------------------------------------------------------------------------------- 8. smaller

def test_fp16_and_bf16_together_are_refused(capsys):
    rc = train.main(["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--fp16", "--bf16", "--dry-run"])
    assert rc == 2 and "--fp16 and --bf16 both given" in one_error_line(capsys.readouterr().err)


def test_phase_line_prints_only_what_the_phase_sets():
    plain = DataPhase(0, 32, 500, "", "", DEFAULT_MIN_SCALE, False, False)  # every CIFAR phase
    assert loop._phase_extras(plain) == ""
    imagenet = DataPhase(0, 224, 128, "-sz/352", "-sz/352", 0.087, True, False)
    assert loop._phase_extras(imagenet) == " min_scale 0.087 rect_val train_dir '-sz/352'"


def test_cifar_run_stopped_early_logs_its_evaluation_row(cifar_batches, tmp_path, capsys):
    logdir = tmp_path / "run"
    rc = train.main(["--config", str(REPO / "configs" / "cifar10_cpu.yaml"), "--data", str(cifar_batches),
                     "cifar.download=false", f"train.logdir={logdir}", "--max-epochs", "1", "train.short_epoch=true",
                     "train.short_epoch_steps=1", "cifar.tta_level=0"])
    assert rc == 0
    rows = (logdir / "run_000" / "train.log").read_text().splitlines()
    assert rows[0] == "~~epoch\thours\ttop1\ttop5"
    assert rows[1] == "phase at epoch 0: size 16 batch 512 val_batch 500"  # no ImageNet-only fields
    assert re.fullmatch(r"~~0\t[\d.]+\t\t[\d.]+\t\t[\d.]+", rows[2]) and len(rows) == 3
    # the accuracy it prints is not a whole run's, and there is nothing to resume: said once
    assert capsys.readouterr().err.count("note: --max-epochs stopped run (seed 0) after 1 of 4 epochs: its "
                                         "accuracy is not a whole run's") == 1


def test_resize_help_names_the_configs_dirs(capsys):
    with pytest.raises(SystemExit):
        resize.main(["--help"])
    out = capsys.readouterr().out
    assert "-sz/352" in out and "-sz/320" not in out


def test_launch_dry_run_prints_without_a_gpu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # a machine where nvidia-smi finds no GPU
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "NPROC"}
    r = subprocess.run(["bash", "launch/local.sh", "DATA"], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env={**env, "PATH": f"{bin_dir}:{env['PATH']}", "LAUNCH_DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    assert "--nproc_per_node=8" in r.stdout.splitlines()[-1]
    assert r.stderr == "note: no GPU found (nvidia-smi); printing the command for NPROC=8\n"


def test_bench_project_notes_a_batch_size_mismatch(tmp_path, capsys):
    tp = tmp_path / "tp.json"
    tp.write_text(json.dumps({"meta": {"device": "test GPU", "arch": "resnet18", "batch_size": 256},
                              "results": [{"size": s, "ours": {"img_s": 100.0}} for s in (32, 48)]}))
    assert bench_main(["project", "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--gpus", "1",
                       "--throughput", str(tp)]) == 0
    assert "note: throughput measured at batch 256 per GPU, the config trains batch 8, 16 per GPU in some " \
           "phases" in capsys.readouterr().out


def test_data_given_twice_is_refused(capsys):
    """launch/cifar10.sh passes --data; a positional DATA after it used to be dropped silently."""
    assert train.main(["/datasets/cifar10", "--data", "data", "--dry-run"]) == 2
    assert capsys.readouterr().err == "error: DATA given twice: /datasets/cifar10 and --data data; give one\n"
