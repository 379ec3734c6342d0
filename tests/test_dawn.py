"""DAWNBench exporter: the real imagenet18 run, generated runs (resume, restarts that log `first`
again, purge, tensor scalars, run metadata, --ignore-eval arithmetic, targets, the epoch column) and
the one-line errors with exit status 2."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_EVENTS, REPO
from dawn.events import EventsError, Text, load_run, load_scalars, run_metadata
from procs import run_bounded

EXPORTER = "dawn/prepare_dawn_tsv.py"
ACC = ("losses/test_1", "losses/test_5", "times/eval_sec", "epoch")


def export(*args: str) -> subprocess.CompletedProcess:
    return run_bounded([sys.executable, EXPORTER, *args], cwd=REPO, timeout=120)


def tsv_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    assert rows[0] == ["epoch", "hours", "top1Accuracy", "top5Accuracy"]
    return rows[1:]


def write_run(logdir: Path, evals, first: float | None = 1000.0, purge_step: int | None = None,
              extra=(), first_step: int = 0) -> Path:
    """One SummaryWriter file: `first` at wall time ``first`` (unless None) and step ``first_step``,
    as imagenet18's trainer logs it at every launch, then for each
    (step, wall, top1, top5, eval_sec, epoch) the four evaluation tags at that wall time; ``extra``
    is (tag, value, step) logged after. Returns the new event file."""
    from torch.utils.tensorboard import SummaryWriter

    before = set(logdir.glob("events.out.tfevents.*")) if logdir.exists() else set()
    w = SummaryWriter(str(logdir), purge_step=purge_step)
    if first is not None:
        w.add_scalar("first", first, first_step, walltime=first)
    for step, wall, top1, top5, eval_sec, epoch in evals:
        for tag, v in zip(ACC, (top1, top5, eval_sec, epoch)):
            w.add_scalar(tag, v, step, walltime=wall)
    for tag, v, step in extra:
        w.add_scalar(tag, v, step, walltime=1000.0)
    w.close()
    (new,) = set(logdir.glob("events.out.tfevents.*")) - before
    return new


# ------------------------------------------------------------------------------- the real run

def test_fixture_tsv_matches_submitted_entry():
    r = export("--events_path", str(FIXTURE_EVENTS))
    assert r.returncode == 0, r.stderr
    rows = tsv_rows(r.stdout)
    submitted = tsv_rows((FIXTURE_EVENTS / "dawnbench_entry.tsv").read_text())
    assert len(rows) == 36
    assert [x[0] for x in rows] == [str(i) for i in range(36)]
    assert [(x[2], x[3]) for x in rows] == [(x[2], x[3]) for x in submitted]
    assert rows[-1][1] == "0.44029"
    assert rows[29][1] == "0.32206"  # hours from `first`, 26 s more than the submitted (from train start)
    (summary,) = r.stderr.strip().splitlines()
    assert "epoch 29" in summary and "0.32206" in summary and "93%" in summary


def test_fixture_json_entry(tmp_path):
    out = tmp_path / "entry.json"
    r = export("--events_path", str(FIXTURE_EVENTS), "--format", "json", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    entry = json.loads(out.read_text())
    # a 2018 run that logged no torch version: not the version this exporter happens to run with
    assert entry["framework"] == "PyTorch unknown"
    assert entry["misc"]["frameworkSource"] == "the run logged no torch version"
    assert entry["model"] == "unknown" and entry["hardware"] == "unknown"
    assert entry["timestamp"] == "2018-09-05"
    assert entry["misc"]["timeToTarget"] == {"top5Accuracy": 93.0, "reached": True, "epoch": 29,
                                             "hours": 0.32206, "evalTimeExcluded": False}
    assert entry["misc"]["worldSize"] == 64
    # The data phases rebuilt from the logged sizes are those of the run's --phases argument.
    from training.phases import parse_schedule

    phases = parse_schedule((FIXTURE_EVENTS / "phases.txt").read_text()).data_phases
    assert [(d["fromEpoch"], d["size"], d["batchSize"]) for d in entry["misc"]["schedule"]["data"]] \
        == [(p.start, p.size, p.batch_size) for p in phases]


def test_fixture_every_scalar_kept():
    scalars = load_scalars(FIXTURE_EVENTS)
    assert len(scalars) == 24
    assert {t: len(scalars[t]) for t in ("sizes/lr", "losses/xent", "losses/test_5", "first")} == \
        {"sizes/lr": 3407, "losses/xent": 865, "losses/test_5": 36, "first": 1}
    for series in scalars.values():
        steps = [s.step for s in series]
        assert steps == sorted(steps)


def test_fixture_ignore_eval_and_stop_at_target():
    r = export("--events_path", str(FIXTURE_EVENTS), "--ignore-eval", "--stop-at-target")
    assert r.returncode == 0, r.stderr
    rows = tsv_rows(r.stdout)
    assert len(rows) == 30 and rows[-1][3] == "93.012"
    # 0.32206 h minus the 30 evaluations' cumulative times/eval_sec (95.5 s) = 0.29410 h
    assert rows[-1][1] == "0.29410"


# ---------------------------------------------------------------------------- generated runs

def test_ignore_eval_subtracts_cumulative_eval_time_including_the_row(tmp_path):
    write_run(tmp_path, [(100, 1000 + 3600, 10.0, 20.0, 360.0, 0),
                         (200, 1000 + 7200, 30.0, 40.0, 720.0, 1)])
    assert [x[1] for x in tsv_rows(export("--events_path", str(tmp_path)).stdout)] == \
        ["1.00000", "2.00000"]
    r = export("--events_path", str(tmp_path), "--ignore-eval")
    # row 0: 3600 - 360 s; row 1: 7200 - (360 + 720) s
    assert [x[1] for x in tsv_rows(r.stdout)] == ["0.90000", "1.70000"]


def test_resumed_run_later_file_wins(tmp_path):
    crashed = write_run(tmp_path, [(100, 1360, 10.0, 20.0, 1.0, 0), (200, 1720, 30.0, 50.0, 1.0, 1)])
    resumed = write_run(tmp_path, [(200, 2080, 31.0, 60.0, 1.0, 1), (300, 2440, 40.0, 70.0, 1.0, 2)],
                        first=None)
    # Names sorting against creation order: files must be ordered by wall time, not by name.
    crashed = crashed.rename(tmp_path / "events.out.tfevents.9999999999.z")
    resumed = resumed.rename(tmp_path / "events.out.tfevents.0000000001.a")
    run = load_run(tmp_path)
    assert run.files == (crashed, resumed)
    assert [(s.step, s.value) for s in run.scalars["losses/test_5"]] == [(100, 20.0), (200, 60.0),
                                                                         (300, 70.0)]
    rows = tsv_rows(export("--events_path", str(tmp_path)).stdout)
    assert rows == [["0", "0.10000", "10.000", "20.000"], ["1", "0.30000", "31.000", "60.000"],
                    ["2", "0.40000", "40.000", "70.000"]]


def test_purge_step_drops_the_crashed_attempts_tail(tmp_path):
    write_run(tmp_path, [(100, 1360, 10.0, 20.0, 1.0, 0), (200, 1720, 30.0, 50.0, 1.0, 1),
                         (300, 2080, 35.0, 55.0, 1.0, 2)])
    write_run(tmp_path, [(200, 2800, 31.0, 60.0, 1.0, 1)], first=None, purge_step=200)
    steps = [(s.step, s.value) for s in load_scalars(tmp_path)["losses/test_5"]]
    assert steps == [(100, 20.0), (200, 60.0)]


# A run restarted the way imagenet18's trainer restarts: the second launch logs `first` again at
# its own start. The first launch starts at 23:00 UTC, evaluates at steps 100 and 200 (epochs 0 and
# 2: one evaluation every other epoch, so epochs are not row indices) and dies; the second starts at
# 00:30 the next day, repeats step 200 and evaluates step 300 (epoch 4).
T = dt.datetime(2018, 9, 5, 23, 0, tzinfo=dt.timezone.utc).timestamp()


def write_restarted_run(logdir: Path, second_first_step: int = 0) -> tuple[Path, Path]:
    crashed = write_run(logdir, [(100, T + 360, 10.0, 50.0, 36.0, 0),
                                 (200, T + 720, 20.0, 60.0, 72.0, 2)], first=T)
    resumed = write_run(logdir, [(200, T + 5760, 30.0, 70.0, 90.0, 2),
                                 (300, T + 6120, 40.0, 93.5, 18.0, 4)],
                        first=T + 5400, first_step=second_first_step)
    return crashed, resumed


@pytest.mark.parametrize("second_first_step", [0, 200])
def test_restart_that_logs_first_again_counts_from_the_first_start(tmp_path, second_first_step):
    crashed, resumed = write_restarted_run(tmp_path, second_first_step)
    run = load_run(tmp_path)
    assert run.files == (crashed, resumed)
    assert run.earliest["first"].wall_time == T and run.earliest["first"].file == crashed
    r = export("--events_path", str(tmp_path))
    assert r.returncode == 0, r.stderr
    # Step order, the later file's step 200, hours from 23:00 (the restart's 80 min of downtime
    # included), epochs as logged.
    assert tsv_rows(r.stdout) == [["0", "0.10000", "10.000", "50.000"],
                                  ["2", "1.60000", "30.000", "70.000"],
                                  ["4", "1.70000", "40.000", "93.500"]]
    assert r.stderr.strip() == "top-5 first reached 93% at epoch 4 after 1.70000 h " \
                               "(top-5 93.500%, top-1 40.000%)"


def test_restart_ignore_eval_subtracts_the_kept_rows_once(tmp_path):
    write_restarted_run(tmp_path)
    r = export("--events_path", str(tmp_path), "--ignore-eval")
    # Step 200 is subtracted once, with the later file's 90 s (not the crashed file's 72 s too):
    # 360 - 36 s; 5760 - (36 + 90) s; 6120 - (36 + 90 + 18) s.
    assert [x[1] for x in tsv_rows(r.stdout)] == ["0.09000", "1.56500", "1.66000"]
    assert "after 1.66000 h" in r.stderr


@pytest.mark.parametrize("target", ["93", "99"])
def test_restart_json_entry_and_summary_share_the_start(tmp_path, target):
    write_restarted_run(tmp_path)
    r = export("--events_path", str(tmp_path), "--format", "json", "--target-top5", target)
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)
    assert entry["timestamp"] == "2018-09-05"  # the first start's day, not the restart's
    (summary,) = r.stderr.strip().splitlines()
    if target == "93":
        assert entry["misc"]["timeToTarget"] == {"top5Accuracy": 93.0, "reached": True, "epoch": 4,
                                                 "hours": 1.7, "evalTimeExcluded": False}
        assert "at epoch 4 after 1.70000 h" in summary
    else:  # a run that never reaches the target
        assert entry["misc"]["timeToTarget"] == {"top5Accuracy": 99.0, "reached": False,
                                                 "epoch": None, "hours": None,
                                                 "evalTimeExcluded": False}
        assert summary == "top-5 never reached 99% in 3 evaluations (best 93.500% at epoch 4, 1.70000 h)"


def test_a_run_resumed_under_another_world_size_names_each_in_the_order_they_ran(tmp_path):
    """A run without metadata (imagenet18's) logs sizes/world as it starts a data phase, a resume
    included: one resumed on 4 processes after 8 trained at both, so the JSON says [8, 4], not
    either alone; a size logged again unchanged is that one size."""
    from dawn.prepare_dawn_tsv import dawn_entry, eval_rows

    def world(logdir: Path) -> int | list[int]:
        run = load_run(logdir)
        return dawn_entry(run, eval_rows(run), 93.0, False)["misc"]["worldSize"]

    write_run(tmp_path / "resized", [(100, T + 360, 10.0, 50.0, 36.0, 0)], first=T, extra=[("sizes/world", 8, 0)])
    write_run(tmp_path / "resized", [(300, T + 6120, 40.0, 93.5, 18.0, 4)], first=T + 5400,
              extra=[("sizes/world", 4, 200)])
    assert world(tmp_path / "resized") == [8, 4]
    write_run(tmp_path / "same", [(100, T + 360, 10.0, 50.0, 36.0, 0)], first=T,
              extra=[("sizes/world", 8, 0), ("sizes/world", 8, 50)])
    assert world(tmp_path / "same") == 8


def test_the_train_log_row_and_the_exported_evaluation_share_one_clock_reading(tmp_path, monkeypatch):
    """The trainer's logger stamps an evaluation's four events and its train.log `~~` row with one
    reading of the clock, so train.log and the export give the same hours. Here the clock ticks 1 s a
    reading: events stamped as they are written would lag the row by seconds."""
    import itertools
    import time

    from dawn.prepare_dawn_tsv import eval_rows
    from training.logs import RunLogger
    clock = itertools.count(1_000_000)
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    logger = RunLogger(tmp_path, True, stream=io.StringIO())
    logger.log_eval(epoch=0, top1=10.0, top5=20.0, seconds=3.0, step=100)
    logger.close()
    run = load_run(tmp_path)
    assert len({run.scalars[tag][0].wall_time for tag in ACC}) == 1
    (row,) = [line for line in (tmp_path / "train.log").read_text().splitlines() if line.startswith("~~0\t")]
    assert row.split("\t")[1] == f"{eval_rows(run)[0].hours:.5f}" != "0.00000"


def test_summary_of_a_run_short_of_the_target_names_its_best_evaluation_not_its_last():
    """Top-5 can fall at the end (an lr bump, an overfit last phase): the summary's "best" is the
    highest top-5 (epoch 1 here), not the last row."""
    from dawn.prepare_dawn_tsv import EvalRow, summary_line
    rows = [EvalRow(0, 100, 0.5, 40.0, 70.0), EvalRow(1, 200, 1.0, 60.0, 90.5), EvalRow(2, 300, 1.5, 55.0, 88.0)]
    assert summary_line(rows, 93) == "top-5 never reached 93% in 3 evaluations (best 90.500% at epoch 1, 1.00000 h)"


def test_a_run_started_over_counts_from_its_new_start(tmp_path):
    # A writer with purge_step=0 (the trainer restarting a run that had no checkpoint) drops the
    # earlier attempt, its start included.
    write_run(tmp_path, [(100, T + 360, 10.0, 50.0, 36.0, 0)], first=T)
    write_run(tmp_path, [(100, T + 5760, 30.0, 70.0, 36.0, 0)], first=T + 5400, purge_step=0)
    assert load_run(tmp_path).earliest["first"].wall_time == T + 5400
    assert tsv_rows(export("--events_path", str(tmp_path)).stdout) == \
        [["0", "0.10000", "30.000", "70.000"]]


def test_epoch_column_is_the_logged_epoch(tmp_path):
    # A CIFAR-style run: one evaluation, at the end of epoch 9.
    write_run(tmp_path, [(4500, 1360, 60.0, 94.0, 1.0, 9)])
    r = export("--events_path", str(tmp_path))
    assert tsv_rows(r.stdout) == [["9", "0.10000", "60.000", "94.000"]]
    assert "at epoch 9 after" in r.stderr
    entry = json.loads(export("--events_path", str(tmp_path), "--format", "json").stdout)
    assert entry["misc"]["timeToTarget"]["epoch"] == 9


def test_evaluation_before_the_start_is_an_error_naming_its_file(tmp_path):
    run = tmp_path / "run"
    events = write_run(run, [(100, 1360, 10.0, 20.0, 1.0, 0)], first=1420.0)
    out = tmp_path / "dawn.tsv"
    r = export("--events_path", str(run), "--out", str(out))
    assert r.returncode == 2 and r.stdout == "" and not out.exists()
    (line,) = r.stderr.strip().splitlines()
    assert line == f"prepare_dawn_tsv.py: error: {events}: the evaluation at step 100 is 60.0 s " \
                   f"before the start ('first' at step 0 in {events})"


def test_ignore_eval_beyond_the_elapsed_time_is_an_error(tmp_path):
    events = write_run(tmp_path, [(100, 1360, 10.0, 20.0, 400.0, 0)])
    r = export("--events_path", str(tmp_path), "--ignore-eval")
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"prepare_dawn_tsv.py: error: {events}: --ignore-eval: ")
    assert "400.0 s, more than the 360.0 s" in line


def test_the_trainers_run_metadata_names_the_whole_group_and_its_command(monkeypatch):
    """What a rank-1 process of 8 writes: the group's GPU count (one GPU a process), the command as
    typed, and "cpu" on a CPU run, which the exporter reads as CPU hardware."""
    import torch

    from dawn.prepare_dawn_tsv import _hardware
    from training.config import Config
    from training.dist import DistInfo
    from training.recipes import imagenet
    cfg = Config()
    cfg.model.arch, cfg.train.precision = "resnet18", "bf16"
    monkeypatch.setattr(sys, "argv", ["training/train.py", "DATA", "--arch", "resnet18"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    meta = imagenet.run_metadata(cfg, DistInfo(rank=1, world_size=8, local_rank=1, device=torch.device("cuda", 1)))
    assert {k: meta[k] for k in ("arch", "gpu", "gpu_count", "world_size", "precision", "command")} == {
        "arch": "resnet18", "gpu": "NVIDIA H100", "gpu_count": 8, "world_size": 8, "precision": "bf16",
        "command": "training/train.py DATA --arch resnet18"}
    assert _hardware(meta, 8) == "8 x NVIDIA H100"
    cpu = imagenet.run_metadata(cfg, DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu")))
    assert (cpu["gpu"], cpu["gpu_count"], cpu["world_size"], _hardware(cpu, 2)) == ("cpu", 0, 2, "CPU")


def test_run_metadata_is_the_latest_logged(tmp_path):
    """run_metadata reads the metadata at the highest step when a writer logged it at several (this
    trainer logs it at step 0 only, where a later file's value replaces the earlier one)."""
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path))
    for step, arch in ((0, "resnet18"), (5, "resnet50")):
        w.add_text("run/metadata", json.dumps({"arch": arch}), step)
    w.close()
    assert run_metadata(load_run(tmp_path)) == {"arch": "resnet50"}


def test_tensor_scalars_and_run_metadata_text(tmp_path):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.util.tensor_util import make_tensor_proto
    from torch.utils.tensorboard import SummaryWriter

    phases = [{"ep": 0, "sz": 128, "bs": 256}, {"ep": [0, 2], "lr": [1.0, 2.0]},
              {"ep": 2, "sz": 224, "bs": 128}, {"ep": [2, 4], "lr": [2.0, 0.1]}]
    meta = {"torch": "9.9.9", "arch": "resnet50", "gpu": "NVIDIA H100", "gpu_count": 8,
            "world_size": 8, "phases": phases, "command": "train.py --arch resnet50"}
    w = SummaryWriter(str(tmp_path))
    w.add_text("run/metadata", json.dumps(meta), 0)  # as training/logs.py does
    scalars_plugin = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    seen = set()
    # TF2-style tensor scalars: plugin metadata only on each tag's first value.
    for tag, value, step, wall in [("first", 0.0, 0, 1000.0), ("losses/test_1", 50.0, 10, 1360.0),
                                   ("losses/test_5", 80.0, 10, 1360.0),
                                   ("losses/test_1", 70.0, 20, 1720.0),
                                   ("losses/test_5", 93.5, 20, 1720.0)]:
        v = Summary.Value(tag=tag, tensor=make_tensor_proto(np.float32(value)))
        if tag not in seen:
            v.metadata.CopyFrom(scalars_plugin)
            seen.add(tag)
        w.file_writer.add_summary(Summary(value=[v]), step, wall)
    w.close()

    run = load_run(tmp_path)
    assert [(s.step, s.value) for s in run.scalars["losses/test_5"]] == [(10, 80.0), (20, 93.5)]
    assert run_metadata(run) == meta
    r = export("--events_path", str(tmp_path), "--format", "json")
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)
    assert entry["framework"] == "PyTorch 9.9.9"
    assert entry["misc"]["frameworkSource"].startswith("run metadata")
    assert entry["model"] == "resnet50"
    assert entry["hardware"] == "8 x NVIDIA H100"
    assert entry["timestamp"] == "1970-01-01"
    assert entry["misc"]["worldSize"] == 8 and entry["misc"]["command"] == meta["command"]
    sched = entry["misc"]["schedule"]
    assert sched["source"] == "run metadata phases" and sched["epochs"] == 4
    assert [(d["fromEpoch"], d["size"], d["batchSize"]) for d in sched["data"]] == \
        [(0, 128, 256), (2, 224, 128)]

    # resumed on 4 GPUs: one GPU per process, so the hardware follows the world sizes the run logged
    w = SummaryWriter(str(tmp_path))
    w.add_scalar("sizes/world", 8, 0, walltime=1001.0)
    w.add_scalar("sizes/world", 4, 15, walltime=1500.0)
    w.close()
    entry = json.loads(export("--events_path", str(tmp_path), "--format", "json").stdout)
    assert entry["misc"]["worldSize"] == [8, 4] and entry["hardware"] == "8 x NVIDIA H100, then 4 x NVIDIA H100"
    assert sched["lr"] == [{"epochs": [0, 2], "lr": [1.0, 2.0]}, {"epochs": [2, 4], "lr": [2.0, 0.1]}]
    assert entry["misc"]["timeToTarget"] == {"top5Accuracy": 93.0, "reached": True, "epoch": 1,
                                             "hours": 0.2, "evalTimeExcluded": False}


def test_each_launchs_command_and_torch_where_they_changed(tmp_path):
    """The metadata is the first launch's; a run resumed with another command (and here another
    torch) names each, in the order they ran; launches that changed nothing are one."""
    from dawn.prepare_dawn_tsv import dawn_entry, eval_rows
    from torch.utils.tensorboard import SummaryWriter

    write_run(tmp_path, [(10, 1360.0, 60.0, 85.0, 3.0, 0), (20, 1720.0, 70.0, 93.5, 3.0, 1)])
    w = SummaryWriter(str(tmp_path))
    w.add_text("run/metadata", json.dumps({"torch": "2.11.0", "command": "train.py A"}), 0)
    for step, torch_version, command in ((0, "2.11.0", "train.py A"), (10, "2.11.0", "train.py A --resume auto"),
                                         (15, "2.12.0", "train.py A --resume auto")):
        w.add_text("run/launch", json.dumps({"torch": torch_version, "command": command}), step)
    w.close()
    run = load_run(tmp_path)
    entry = dawn_entry(run, eval_rows(run), 93.0, False)
    assert entry["framework"] == "PyTorch 2.11.0, then 2.12.0"
    assert entry["misc"]["frameworkSource"] == "each launch's run/launch"
    assert entry["misc"]["command"] == ["train.py A", "train.py A --resume auto"]


def test_a_run_whose_phases_predate_the_end_of_schedule_check_still_exports(tmp_path):
    """A run begun before phases refused a data phase at the schedule's end (it never trains) logged
    such phases in its metadata: the exporter reads them as the run trained them, not as a new
    command line, so the entry is written with the phases that did train."""
    from torch.utils.tensorboard import SummaryWriter

    write_run(tmp_path, [(10, 1360.0, 60.0, 85.0, 3.0, 0), (20, 1720.0, 70.0, 93.5, 3.0, 1)])
    phases = [{"ep": 0, "sz": 128, "bs": 256}, {"ep": [0, 2], "lr": [1.0, 0.1]}, {"ep": 2, "sz": 224, "bs": 128}]
    w = SummaryWriter(str(tmp_path))
    w.add_text("run/metadata", json.dumps({"phases": phases}), 0)
    w.close()
    r = export("--events_path", str(tmp_path), "--format", "json")
    assert r.returncode == 0, r.stderr
    sched = json.loads(r.stdout)["misc"]["schedule"]
    assert sched["epochs"] == 2 and [(d["fromEpoch"], d["size"]) for d in sched["data"]] == [(0, 128), (2, 224)]


@pytest.mark.parametrize("dtype, fields, plugin, message", [
    # no numpy type: another writer's tensor is skipped; one that says it is a scalar is an error
    ("DT_BFLOAT16", {"half_val": [16256]}, None, None),
    ("DT_VARIANT", {}, None, None),
    ("DT_BFLOAT16", {"half_val": [16256]}, "scalars", "x at step 5: unreadable DT_BFLOAT16 tensor"),
    # content that does not fit its dtype: corrupt, whoever wrote it
    ("DT_FLOAT", {"tensor_content": b"\0\0"}, None, "x at step 5: unreadable DT_FLOAT tensor"),
], ids=["bf16-skipped", "variant-skipped", "bf16-scalar", "torn-content"])
def test_a_tensor_that_cannot_be_read_is_skipped_or_one_line(tmp_path, dtype, fields, plugin, message):
    from tensorboard.compat.proto import types_pb2
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from torch.utils.tensorboard import SummaryWriter

    events = write_run(tmp_path, [(100, 1360, 10.0, 20.0, 1.0, 0)])
    w = SummaryWriter(str(tmp_path))
    v = Summary.Value(tag="x", tensor=TensorProto(dtype=types_pb2.DataType.Value(dtype), **fields))
    if plugin:
        v.metadata.CopyFrom(SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=plugin)))
    w.file_writer.add_summary(Summary(value=[v]), 5, 2000.0)
    w.close()
    (extra,) = set(tmp_path.glob("events.out.tfevents.*")) - {events}
    r = export("--events_path", str(tmp_path))
    if message is None:  # was a traceback (TypeError, KeyError from tensorboard's make_ndarray)
        assert r.returncode == 0, r.stderr
        assert tsv_rows(r.stdout) == [["0", "0.10000", "10.000", "20.000"]]
        assert "x" not in load_run(tmp_path).scalars
    else:
        assert r.returncode == 2 and r.stdout == ""
        (line,) = r.stderr.strip().splitlines()
        assert line == f"prepare_dawn_tsv.py: error: {extra}: {message}"


def write_tensors(logdir: Path, values) -> None:
    """One file of TF2-style tensor summaries: for each (tag, numpy value, plugin name or None), at
    step 5, wall time 2000; the plugin is named on the value, as a writer names it on a tag's first."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.util.tensor_util import make_tensor_proto
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for tag, value, plugin in values:
        v = Summary.Value(tag=tag, tensor=make_tensor_proto(value))
        if plugin:
            v.metadata.CopyFrom(SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=plugin)))
        w.file_writer.add_summary(Summary(value=[v]), 5, 2000.0)
    w.close()


def test_one_element_tensors_of_every_number_kind_are_scalars(tmp_path):
    """A one-element tensor of floats, signed or unsigned integers or booleans, of any shape, is a
    scalar whether or not a plugin claims it: its value as a float."""
    write_tensors(tmp_path, [("f64", np.array([[0.25]]), "scalars"), ("i64", np.int64(-3), None),
                             ("u8", np.uint8(200), "scalars"), ("u16", np.array([7], np.uint16), None),
                             ("bool", np.bool_(True), "scalars"), ("false", np.array([False]), None)])
    run = load_run(tmp_path)
    assert {tag: [(s.step, s.value) for s in v] for tag, v in run.scalars.items()} == {
        "f64": [(5, 0.25)], "i64": [(5, -3.0)], "u8": [(5, 200.0)], "u16": [(5, 7.0)],
        "bool": [(5, 1.0)], "false": [(5, 0.0)]}
    assert run.texts == {}


def test_tensors_that_are_neither_scalar_nor_text_are_left_out(tmp_path):
    """Only a one-element number is a scalar, only strings are text, and a tag's plugin rules out the
    other: a vector (a histogram's buckets, an embedding), strings a writer calls scalars, a number it
    calls text, and any tensor of another plugin (an image's width, height and PNG bytes, an hparams
    value) are left out, not read as a scalar or a text nor an error."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    write_tensors(tmp_path, [("vector", np.array([1.0, 2.0, 3.0], np.float32), None),
                             ("empty", np.zeros(0, np.float32), "scalars"),
                             ("string scalar", np.array([b"0.5"]), "scalars"),
                             ("number text", np.float32(0.5), "text"),
                             ("image", np.array([b"2", b"2", png]), "images"),
                             ("hparam", np.float32(0.1), "hparams"),
                             ("kept", np.float32(1.5), None), ("note", np.array([b"hello"]), "text")])
    run = load_run(tmp_path)
    assert {tag: [(s.step, s.value) for s in v] for tag, v in run.scalars.items()} == {"kept": [(5, 1.5)]}
    assert run.texts == {"note": [Text(5, 2000.0, "hello")]}


def test_a_text_of_several_strings_is_their_lines_in_order(tmp_path):
    """A text summary holding several strings (a writer's list of lines) reads as those lines, each
    on its own line, in the tensor's order."""
    write_tensors(tmp_path, [("log", np.array([[b"first line", b"second"], [b"third", "fourth \u00e9".encode()]]),
                              "text")])
    assert load_run(tmp_path).texts == {"log": [Text(5, 2000.0, "first line\nsecond\nthird\nfourth \u00e9")]}


def test_a_directory_named_like_an_event_file_is_not_read_as_one(tmp_path):
    """Only files are a run directory's event files: a subdirectory whose name matches the pattern
    (another run logged into a folder named after an event file) is neither read nor an error."""
    events = write_run(tmp_path, [(100, 1360, 10.0, 20.0, 1.0, 0)])
    write_run(tmp_path / "events.out.tfevents.1.host", [(100, 1360, 50.0, 60.0, 1.0, 0)])
    run = load_run(tmp_path)
    assert run.files == (events,) and run.skipped == ()
    assert [s.value for s in run.scalars["losses/test_1"]] == [10.0]


def test_epoch_column_is_the_logged_epoch_not_the_row_index(tmp_path):
    # Evaluations every 5 epochs, then a final one after epoch 17 (a CIFAR run evaluates only then):
    # the row index (0, 1, 2) is never the epoch.
    write_run(tmp_path, [(500, 1360, 10.0, 80.0, 1.0, 4), (1000, 1720, 30.0, 94.0, 1.0, 9),
                         (1800, 2080, 35.0, 95.0, 1.0, 17)])
    r = export("--events_path", str(tmp_path))
    assert [x[0] for x in tsv_rows(r.stdout)] == ["4", "9", "17"]
    assert "reached 93% at epoch 9 after 0.20000 h" in r.stderr
    final = tmp_path / "final"
    write_run(final, [(1800, 2080, 35.0, 95.0, 1.0, 17)])
    entry = json.loads(export("--events_path", str(final), "--format", "json").stdout)
    assert entry["misc"]["timeToTarget"]["epoch"] == 17


def test_never_reaches_target(tmp_path):
    write_run(tmp_path, [(100, 1360, 10.0, 80.0, 1.0, 0), (200, 1720, 30.0, 92.9, 1.0, 1)])
    r = export("--events_path", str(tmp_path), "--stop-at-target")
    assert r.returncode == 0
    assert len(tsv_rows(r.stdout)) == 2
    (summary,) = r.stderr.strip().splitlines()
    assert "never reached 93%" in summary and "92.900" in summary


def test_stop_at_target_counts_the_value_as_written(tmp_path):
    # 92.9996 is written as 93.000, and DAWNBench reads the TSV: it reaches 93.
    write_run(tmp_path, [(100, 1360, 10.0, 80.0, 1.0, 0), (200, 1720, 30.0, 92.9996, 1.0, 1),
                         (300, 2080, 35.0, 94.0, 1.0, 2)])
    r = export("--events_path", str(tmp_path), "--stop-at-target")
    assert [x[3] for x in tsv_rows(r.stdout)] == ["80.000", "93.000"]
    assert "epoch 1 after 0.20000 h" in r.stderr
    r = export("--events_path", str(tmp_path), "--target-top5", "50")
    assert len(tsv_rows(r.stdout)) == 3 and "reached 50% at epoch 0" in r.stderr


def test_empty_file_in_a_run_dir_is_skipped(tmp_path):
    write_run(tmp_path, [(100, 1360, 10.0, 20.0, 1.0, 0)])
    (tmp_path / "events.out.tfevents.2000000000.crashed").write_bytes(b"")
    r = export("--events_path", str(tmp_path))
    assert r.returncode == 0 and len(tsv_rows(r.stdout)) == 1
    assert "skipped empty event file" in r.stderr


def test_out_is_written_whole_and_kept_on_error(tmp_path):
    run = tmp_path / "run"
    write_run(run, [(100, 1360, 10.0, 20.0, 1.0, 0), (200, 1720, 30.0, 50.0, 1.0, 1)])
    out = tmp_path / "dawn.tsv"
    assert export("--events_path", str(run), "--out", str(out)).returncode == 0
    assert len(tsv_rows(out.read_text())) == 2
    assert export("--events_path", str(tmp_path / "missing"), "--out", str(out)).returncode == 2
    assert len(tsv_rows(out.read_text())) == 2  # the previous output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dawn.tsv", "run"]  # no temp files left


@pytest.mark.parametrize("given", ["folder", "file"])
def test_out_over_the_events_it_reads_is_refused_and_they_are_kept(tmp_path, given):
    events = write_run(tmp_path / "run", [(100, 1360, 10.0, 20.0, 1.0, 0)])
    events.chmod(0o444)  # read-only: the atomic rename replaced it all the same
    data = events.read_bytes()
    source = events.parent if given == "folder" else events
    r = export("--events_path", str(source), "--out", str(events))
    assert (r.returncode, r.stdout) == (2, "")
    where = f"lies inside an input (the --events_path folder {source})" if given == "folder" \
        else "is an input (the --events_path file)"
    assert r.stderr == f"prepare_dawn_tsv.py: error: --out {events} {where}: choose another path\n"
    assert events.read_bytes() == data
    beside = export("--events_path", str(source), "--out", str(events.parent / "dawn.tsv"))  # a new file: fine
    assert beside.returncode == 0 and len(tsv_rows((events.parent / "dawn.tsv").read_text())) == 1, beside.stderr


def test_out_through_a_symlink_or_into_a_pipe_keeps_what_out_names(tmp_path):
    """The atomic rename replaced what --out named: a symlink became a file beside its stale target,
    and --out /dev/stdout, run as root, put a regular file in place of /dev/stdout. A link's target is
    written now, and a pipe (what /dev/stdout is under a shell's |) straight, left a pipe."""
    import stat
    import threading

    run = tmp_path / "run"
    write_run(run, [(100, 1360, 10.0, 20.0, 1.0, 0), (200, 1720, 30.0, 50.0, 1.0, 1)])
    target, link = tmp_path / "target.tsv", tmp_path / "link.tsv"
    target.write_text("stale")
    link.symlink_to(target)
    assert export("--events_path", str(run), "--out", str(link)).returncode == 0
    assert link.is_symlink() and len(tsv_rows(target.read_text())) == 2
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert export("--events_path", str(run), "--out", str(fifo)).returncode == 0
    reader.join(30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and len(tsv_rows(got[0].decode())) == 2


@pytest.mark.parametrize("fds", ["1", "1, 2"], ids=["stdout", "stdout-and-stderr"])
def test_a_reader_that_stops_early_ends_the_export_quietly(fds):
    # `prepare_dawn_tsv.py ... | head -1` (and `2>&1 | head -1`) whose reader is gone before the export
    # writes: was a BrokenPipeError traceback, exit 1. The exporter runs with those fds on a pipe whose
    # read end is closed.
    code = (f"import os, runpy, sys; r, w = os.pipe(); os.close(r)\n"
            f"for fd in ({fds},): os.dup2(w, fd)\n"
            f"sys.argv = [{EXPORTER!r}, '--events_path', {str(FIXTURE_EVENTS)!r}]\n"
            f"runpy.run_path({EXPORTER!r}, run_name='__main__')\n")
    r = run_bounded([sys.executable, "-c", code], cwd=REPO, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


# ------------------------------------------------------------------------------------ errors

def _no_accuracy(d: Path) -> Path:
    write_run(d, [], extra=[("losses/xent", 1.0, 10)])
    return d


def _empty_file(d: Path) -> Path:
    (d / "events.out.tfevents.1.host").write_bytes(b"")
    return d / "events.out.tfevents.1.host"


def _cifar_summary(d: Path) -> Path:
    """A cifar logdir: the runs' summary at the top (no per-epoch accuracy), each run beneath it."""
    write_run(d, [], extra=[("cifar/accuracy", 87.6, 0)])
    write_run(d / "run_000", [(100, 1360, 10.0, 20.0, 1.0, 0)])
    return d


def _nested(d: Path) -> Path:
    write_run(d / "run1", [(100, 1360, 10.0, 20.0, 1.0, 0)])
    return d


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such file or directory"),
    (lambda d: d, "no event files"),
    (_empty_file, "empty event file"),
    (lambda d: _empty_file(d).parent, "only empty event files"),
    (_no_accuracy, "no accuracy tags"),
    (_cifar_summary, "first); its runs' events are in "),
    (_nested, "in subdirectories"),
])
def test_errors_are_one_line_exit_2(tmp_path, make, message):
    r = export("--events_path", str(make(tmp_path)))
    assert r.returncode == 2
    assert r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("prepare_dawn_tsv.py: error: ") and message in line


@pytest.mark.parametrize("args, message", [
    (["--target-top5", "abc"], "argument --target-top5: 'abc' is not a percentage in (0, 100]"),
    (["--target-top5", "nan"], "'nan' is not a percentage"),
    (["--target-top5", "inf"], "'inf' is not a percentage"),
    (["--target-top5", "0"], "'0' is not a percentage"),
    (["--target-top5", "100.5"], "'100.5' is not a percentage"),
    (["--format", "csv"], "argument --format: invalid choice: 'csv'"),
    (["--events_path", ""], "argument --events_path/--events-path: empty path"),
    (["--out", ""], "argument --out: empty path"),
    ([], "the following arguments are required: --events_path"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, args, message):
    if "--events_path" not in args and args:
        args = ["--events_path", str(FIXTURE_EVENTS), *args]
    out = tmp_path / "dawn.tsv"
    r = export(*args, *(["--out", str(out)] if "--out" not in args else []))
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("prepare_dawn_tsv.py: error: ") and message in line
    assert list(tmp_path.iterdir()) == []


def _io_error(d: Path) -> Path:
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux /proc")
    return Path("/proc/self/mem")  # opens, then fails to read (EIO), even for root


def _mode_0(path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path.chmod(0)
    return path


@pytest.mark.parametrize("make, message", [
    (_io_error, "/proc/self/mem: cannot read (Input/output error)"),
    (lambda d: _mode_0(write_run(d, [(100, 1360, 10.0, 20.0, 1.0, 0)])), "cannot read (Permission denied)"),
    (lambda d: _mode_0(write_run(d / "run", [(100, 1360, 10.0, 20.0, 1.0, 0)]).parent),
     "run: cannot read directory (Permission denied)"),
])
def test_unreadable_path_is_one_line_exit_2(tmp_path, make, message):
    r = export("--events_path", str(make(tmp_path)))
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("prepare_dawn_tsv.py: error: ") and message in line


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("run, args, message", [
    ({"evals": [(100, 1360, 10.0, 20.0, 1.0, NAN)]}, [], "epoch at step 100 is nan, not a finite number"),
    ({"evals": [(100, 1360, 10.0, 20.0, 1.0, INF)]}, [], "epoch at step 100 is inf, not a finite number"),
    ({"evals": [(100, 1360, 10.0, 20.0, NAN, 0)]}, ["--ignore-eval"],
     "times/eval_sec at step 100 is nan, not a finite number >= 0"),
    # Was 0.2 h: 360 s, plus the 360 s that a negative evaluation time "excluded".
    ({"evals": [(100, 1360, 10.0, 20.0, -360.0, 0)]}, ["--ignore-eval"],
     "times/eval_sec at step 100 is -360.0, not a finite number >= 0"),
    ({"evals": [(100, NAN, 10.0, 20.0, 1.0, 0)]}, [], "losses/test_1 at step 100 has wall time nan"),
    ({"evals": [(100, 1360, 10.0, 20.0, 1.0, 0)], "first": NAN}, [], "first at step 0 has wall time nan"),
    ({"evals": [(100, 1360, 10.0, 20.0, 1.0, 0)], "extra": [("sizes/world", NAN, 0)]},
     ["--format", "json"], "sizes/world at step 0 is nan, not a finite number"),
    ({"evals": [(100, 1360, 10.0, 20.0, 1.0, 0)], "extra": [("sizes/image", INF, 0), ("sizes/batch", 8, 0)]},
     ["--format", "json"], "sizes/image at step 0 is inf, not a finite number"),
], ids=["nan-epoch", "inf-epoch", "nan-eval-sec", "negative-eval-sec", "nan-wall-time", "nan-start",
        "nan-world", "inf-image-size"])
def test_value_not_a_finite_number_is_an_error_naming_tag_step_and_file(tmp_path, run, args, message):
    events = write_run(tmp_path / "run", **run)
    out = tmp_path / "dawn.out"
    r = export("--events_path", str(events.parent), "--out", str(out), *args)
    assert r.returncode == 2 and r.stdout == "" and not out.exists()
    (line,) = r.stderr.strip().splitlines()
    assert line == f"prepare_dawn_tsv.py: error: {events}: {message}"


def test_run_metadata_nested_past_the_parsers_depth_is_one_line_exit_2(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    events = write_run(tmp_path / "run", [(100, 1360, 10.0, 20.0, 1.0, 0)])
    w = SummaryWriter(str(events.parent))
    w.add_text("run/metadata", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", 0)
    w.close()
    r = export("--events_path", str(events.parent), "--format", "json")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"prepare_dawn_tsv.py: error: {events.parent}: run/metadata is not valid JSON "
                        "(nested too deeply)\n")


def fixture_copy(tmp_path: Path) -> tuple[Path, bytes, list[int]]:
    """A writable copy of the real run's event file, its bytes, and where each of its records
    starts (walking the TFRecord lengths: uint64 length, 4-byte CRC, data, 4-byte CRC)."""
    (src,) = FIXTURE_EVENTS.glob("events.out.tfevents.*")
    copy = tmp_path / src.name
    shutil.copyfile(src, copy)
    data = copy.read_bytes()
    starts, at = [], 0
    while at < len(data):
        starts.append(at)
        at += 16 + struct.unpack_from("<Q", data, at)[0]
    assert at == len(data) and len(starts) == 19079
    return copy, data, starts


@pytest.mark.parametrize("where, kind", [
    (lambda data, starts: len(data) // 2, "data"),  # the reviewer's repro: 19 rows and exit 0 before
    (lambda data, starts: starts[len(starts) // 2], "length"),
    (lambda data, starts: len(data) - 5, "data"),  # the last record, whole: corrupt, not torn
], ids=["mid-file", "length", "last-record"])
def test_corrupt_record_is_an_error_naming_its_offset(tmp_path, where, kind):
    copy, data, starts = fixture_copy(tmp_path)
    at = where(data, starts)
    copy.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    out = tmp_path / "dawn.tsv"
    r = export("--events_path", str(copy), "--out", str(out))
    assert r.returncode == 2 and r.stdout == "" and not out.exists()
    (line,) = r.stderr.strip().splitlines()
    record = max(s for s in starts if s <= at)
    assert line == f"prepare_dawn_tsv.py: error: {copy}: corrupt record at byte {record} " \
                   f"(bad {kind} checksum)"


@pytest.mark.parametrize("into_last", [5, 14, -2])  # its header, its data, its data's CRC
def test_torn_last_record_ends_the_file_quietly(tmp_path, into_last):
    copy, data, starts = fixture_copy(tmp_path)
    cut = starts[-1] + into_last if into_last > 0 else len(data) + into_last
    copy.write_bytes(data[:cut])
    whole = {t: len(v) for t, v in load_scalars(FIXTURE_EVENTS).items()}
    torn = {t: len(v) for t, v in load_scalars(copy).items()}
    assert torn == whole | {"sizes/momentum": whole["sizes/momentum"] - 1}  # the last event, lost


def test_missing_start_tag_and_another_start_tag(tmp_path):
    write_run(tmp_path, [(100, 1360, 10.0, 20.0, 1.0, 0)], first=None, extra=[("start", 0.0, 0)])
    r = export("--events_path", str(tmp_path))
    assert r.returncode == 2 and "no start tag 'first'" in r.stderr
    r = export("--events_path", str(tmp_path), "--start-tag", "start")
    assert r.returncode == 0 and tsv_rows(r.stdout)[0][1] == "0.10000"


def test_library_errors_are_value_errors(tmp_path):
    assert issubclass(EventsError, ValueError)
    with pytest.raises(EventsError, match="no event files"):
        load_scalars(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    """Nothing half-written: when the rename onto ``--out`` fails (a full or read-only disk), the old
    file is intact and the temp file beside it is gone."""
    from dawn import prepare_dawn_tsv
    out = tmp_path / "dawn.tsv"
    out.write_text("old\n")

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(prepare_dawn_tsv.os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        prepare_dawn_tsv.write_atomic("new\n", out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["dawn.tsv"]
