"""Hostile and malformed command lines: each is one line on stderr naming what is wrong, exit
status 2, no traceback and no file written, within a second. In-process calls of each tool's
main(), so the group runs in seconds; hang-prone cases also run as bounded subprocesses."""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from training import bench, resize, train
from training import config as C

TINY = str(REPO / "configs" / "tiny_cpu.yaml")
CIFAR = str(REPO / "configs" / "cifar10_cpu.yaml")
DEEP_LIST = "[" * 5000 + "]" * 5000
HUGE_EPOCHS = "[{'ep':0,'sz':128,'bs':8},{'ep':(0,1e18),'lr':0.1}]"


def call(main, argv: list[str]) -> int:
    """A tool's exit status, whether main returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory: relative outputs (the configs' logdirs) would land here."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def assert_refused(rc: int, err: str, message: str, workdir: Path, inputs: tuple[str, ...] = ()) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert sorted(p.name for p in workdir.iterdir()) == sorted(inputs)  # nothing written


def write(workdir: Path, name: str, text: str | bytes) -> str:
    (workdir / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(workdir / name)


TRAIN_CASES = [
    (["--phases", DEEP_LIST, "--dry-run"], "phases: nested more than 16 levels deep"),
    (["--phases", "{'ep': " * 3000 + "}" * 3000, "--dry-run"], "phases: nested more than 16 levels deep"),
    (["--phases", "[" + "1," * 40000 + "]", "--dry-run"], "phases: longer than 65,536 characters"),
    (["--phases", HUGE_EPOCHS, "--dry-run"], "phase 1: key 'ep': epoch 1e+18 is past the maximum of 1000 epochs"),
    (["--phases", "[{'ep':0,'sz':100000,'bs':8},{'ep':(0,1),'lr':0.1}]", "--dry-run"],
     "phase 0: key 'sz': expected a positive integer <= 4096"),
    (["--phases", "[{'ep':0,'sz':32,'bs':100000},{'ep':(0,1),'lr':0.1}]", "--dry-run"],
     "phase 0: key 'bs': expected a positive integer <= 65536"),
    (["--phases", str([{"ep": 0, "sz": 32, "bs": 8}] * 101 + [{"ep": [0, 1], "lr": 0.1}]), "--dry-run"],
     "phases: 102 phases; at most 100"),
    (["--config", TINY, "--dry-run", "--num-train-images", "0"], "argument --num-train-images: must be positive, got 0"),
    (["--config", TINY, "--dry-run", "--num-train-images", "-5"], "argument --num-train-images: must be positive"),
    (["--config", TINY, "--dry-run", "--world-size", "0"], "argument --world-size: must be positive, got 0"),
    (["--config", TINY, "--dry-run", "--world-size", "-1"], "argument --world-size: must be positive, got -1"),
    (["--config", TINY, "--plot-schedule", "no/such/folder/s.png"], "--plot-schedule no/such/folder/s.png: no such directory"),
    (["--config", TINY, "--plot-schedule", "s.xyz"], "--plot-schedule s.xyz: Format 'xyz' is not supported"),
    (["--config", TINY, "--workers", "-1"], "--workers: config key 'data.workers': must be >= 0, got -1"),
    (["--config", TINY, "data.synthetic_images=0"], "config key 'data.synthetic_images': must be >= 1, got 0"),
    (["--config", TINY, "--print-freq", "0"], "--print-freq: config key 'train.print_freq': must be >= 1, got 0"),
    (["--config", TINY, "--seed", "1e30"], "--seed: config key 'train.seed': expected int"),
    (["--config", TINY, "--dist-timeout", "10**12"], "--dist-timeout: config key 'train.dist_timeout_s': expected int"),
    (["--config", TINY, "--dist-timeout", "999999999999"], "--dist-timeout: config key 'train.dist_timeout_s': must be in"),
    (["--config", TINY, "train.seed=" + DEEP_LIST], "train.seed: nested more than 16 levels deep"),
    (["--config", CIFAR, "cifar.download=false", "--results", f"{TINY}/r.json"],  # beneath a file: not even root
     f"--results {TINY}/r.json: cannot be written ({TINY} is not a writable directory)"),
    (["--config", CIFAR, "cifar.download=false", "--results", "."], "--results .: is a directory"),
    (["--config", CIFAR, "--dry-run", "--num-train-images", "100"],
     "epoch 0: batch size 512 is more than the 100 images per process, and a partial batch is dropped"),
    # values torch would reject at the first step (a traceback and a half-written logdir) or use quietly
    (["--config", TINY, "optim.label_smoothing=1.5"], "config key 'optim.label_smoothing': must be in 0..1, got 1.5"),
    (["--config", TINY, "optim.momentum=.nan"], "config key 'optim.momentum': must be a finite number, got nan"),
    (["--config", TINY, "optim.weight_decay=-1"], "config key 'optim.weight_decay': must be >= 0, got -1.0"),
    (["--config", TINY, "optim.weight_decay=1" + "0" * 400], "'optim.weight_decay': must be a finite number, got inf"),
    (["--config", TINY, "train.seed=1" + "0" * 5000], "config key 'train.seed': expected int"),
    (["--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':(0,2),'lr':1" + "0" * 400 + "}]", "--dry-run"],
     "phase 1: key 'lr': expected a number"),
    (["--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':(0,2),'lr':1" + "0" * 5000 + "}]", "--dry-run"],
     "Exceeds the limit (4300 digits)"),
    (["--phases", "- {ep: 0, sz: 32, bs: 8}\n- {ep: [0, 2], lr: 1" + "0" * 5000 + "}\n", "--dry-run"],
     "Exceeds the limit (4300 digits) for integer string conversion"),
    (["--config", CIFAR, "cifar.label_smoothing=1.5"], "cifar.label_smoothing must be in [0, 1], got 1.5"),
    (["--config", CIFAR, "cifar.whiten_eps=-1"], "cifar.whiten_eps must be > 0, got -1"),
    (["--config", CIFAR, "cifar.whiten_bias_epochs=-1"], "cifar.whiten_bias_epochs must be >= 0, got -1"),
    (["--config", CIFAR, "cifar.tta_fraction=1.5"], "cifar.tta_fraction must be in [0, 1], got 1.5"),
    (["--config", CIFAR, "cifar.contrast=1"], "cifar.contrast must be in [0, 1), got 1"),
    # --check: what a run would refuse before it reads data, said without data or devices
    (["--config", TINY, "--arch", "resnt50", "--check"], "unknown --arch 'resnt50': not a torchvision"),
    (["--config", CIFAR, "cifar.tta_level=5", "--check"], "cifar.tta_level must be 0, 1 or 2, got 5"),
    (["--config", TINY, "train.checkpoint_every=0", "--check"], "train.checkpoint_every must be >= 1"),
    (["--config", CIFAR, "--profile-trace", "t"], "train.profile_trace (--profile-trace) is the imagenet recipe's"),
    # an empty logdir scattered the run over the current dir and runs/DATE_HOST (SummaryWriter's default)
    (["--config", CIFAR, "--logdir", "", "--check"], "--logdir: config key 'train.logdir': must not be empty"),
    (["--config", TINY, "train.logdir=", "--check"], "config key 'train.logdir': must not be empty"),
    # --check builds the model: a bool width was a torch TypeError, a huge one an 86 GB allocation
    (["--config", CIFAR, "cifar.widths=[true,16,16]", "--check"], "cifar.widths: expected 3 integers in 1..4096"),
    (["--config", CIFAR, "cifar.widths=[100000000,16,16]", "--check"], "cifar.widths: expected 3 integers in 1..4096"),
    # accepted, then trained to chance: gradient ascent, growing weights, every image blanked
    (["--config", CIFAR, "cifar.lr=-1", "--check"], "cifar.lr must be >= 0, got -1.0"),
    (["--config", CIFAR, "cifar.weight_decay=-0.1", "--check"], "cifar.weight_decay must be >= 0, got -0.1"),
    (["--config", CIFAR, "data.workers=3", "--check"], "data.workers is not used by the cifar recipe"),
    (["--config", CIFAR, "cifar.cutout=17", "--check"], "cifar.cutout must be at most each phase's sz (16 px at epoch 0)"),
    (["--config", CIFAR, "cifar.bn_eps=0", "--check"], "cifar.bn_eps must be > 0, got 0.0"),
    (["--config", CIFAR, "cifar.muon_momentum=1.5", "--check"], "cifar.muon_momentum must be in [0, 1)"),
    (["--config", CIFAR, "cifar.lookahead_pow=-1", "--check"], "cifar.lookahead_pow must be >= 0, got -1.0"),
    # accepted and ignored: a keep_dl given as text was true whatever it said; a key given twice kept the last
    (["--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':1,'sz':32,'bs':16,'keep_dl':'false'},{'ep':(0,2),'lr':0.1}]",
      "--dry-run"], "phase 1: key 'keep_dl': expected true or false, got 'false'"),
    (["--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':1,'bs':16,'keep_dl':1},{'ep':(0,2),'lr':0.1}]", "--dry-run"],
     "phase 1: key 'keep_dl': expected true or false, got 1"),
    (["--phases", "[{'ep':0,'sz':32,'bs':8},{'ep':(0,2),'lr':0.1,'lr':0.5}]", "--dry-run"],
     "phases: line 1, column 47: duplicate key 'lr'"),
    (["--phases", "- {ep: 0, sz: 32, bs: 8}\n- {ep: [0, 2], lr: 0.1, lr: 0.5}\n", "--dry-run"],
     "phases: line 2, column 25: duplicate key 'lr'"),
    # the imagenet recipe reads no cifar.* key: --runs 5, or a cifar config under an imagenet one, did nothing
    (["--config", TINY, "--runs", "5", "--check"], "cifar.runs is not used by the imagenet recipe"),
    (["--config", CIFAR, "--config", TINY, "--check"], "is not used by the imagenet recipe"),
    (["--config", TINY, "--runs", "0"], "--runs: config key 'cifar.runs': must be >= 1, got 0"),
    # a misspelt key was taken for DATA
    (["--config", TINY, "train.print-freq=3"], "unknown config key 'train.print-freq'"),
    # momentum past 1 grows each step's velocity without bound
    (["--config", TINY, "optim.momentum=1.5"], "config key 'optim.momentum': must be in 0..1, got 1.5"),
    # a name of undecodable bytes (argv's surrogateescape) passed --check, then broke the event writer
    (["--config", TINY, "--loader", "synthetic", "--logdir", "runs/bad\udcff", "--check"],
     "--logdir: config key 'train.logdir': not valid UTF-8: b'runs/bad\\xff'"),
    # appended, so that the mutants' ids of the cases above stay
    (["--config", TINY, "data.val_batch_size=-1", "--check"], "config key 'data.val_batch_size': must be in 0..65536, got -1"),
    (["--config", TINY, "model.num_classes=1000000000000", "--check"],
     "config key 'model.num_classes': must be in 0..100000, got 1000000000000"),
]


@pytest.mark.parametrize("config", ["tiny_cpu.yaml", "cifar10_cpu.yaml", "cifar10.yaml", "imagenet18/8x8.yaml"])
def test_check_passes_the_shipped_configs_silently(workdir, capsys, config):
    """A config alone (no DATA) is checkable; nothing is written."""
    assert call(train.main, ["--config", str(REPO / "configs" / config), "--check"]) == 0
    assert capsys.readouterr() == ("", "")
    assert not any(workdir.iterdir())


def _phase_dirs(config: str, root: Path) -> list[Path]:
    from training.data import split_dir
    from training.phases import parse_schedule
    cfg = train.resolve(["--config", config])[1]
    return sorted({Path(split_dir(str(root), d, split)) for ph in parse_schedule(cfg.phases).data_phases
                   for d, split in ((ph.train_dir, "train"), (ph.val_dir, "validation"))})


@pytest.mark.parametrize("config", ["tiny_cpu.yaml", "imagenet18/1x8.yaml"])
def test_check_reads_every_phase_data_dir(tmp_path, workdir, capsys, config):
    """imagenet18 reads DATA-sz/160 and DATA-sz/352 copies in its early phases: each must exist, with the
    same class folders, before torchrun starts 8 ranks."""
    config = str(REPO / "configs" / config)
    dirs = _phase_dirs(config, tmp_path / "imagenet")
    for d in dirs:
        for c in ("n01", "n02"):
            (d / c).mkdir(parents=True)
    argv = [str(tmp_path / "imagenet"), "--config", config, "--check"]
    assert call(train.main, argv) == 0 and capsys.readouterr() == ("", "")
    (dirs[-1] / "n02").rmdir()
    assert call(train.main, argv) == 2
    assert f"{dirs[-1]}" in capsys.readouterr().err
    dirs[0].rename(tmp_path / "moved")
    assert call(train.main, argv) == 2
    assert capsys.readouterr().err.startswith(f"error: data dir {dirs[0]} does not exist (phase at epoch ")
    assert call(train.main, [*argv, "data.loader=synthetic"]) == 0  # reads no dir, as its run does not
    assert not any(workdir.iterdir())


def test_check_refuses_a_logdir_holding_a_run_unless_resuming(workdir, capsys):
    (workdir / "old").mkdir()
    (workdir / "old" / "config.yaml").write_text("an earlier run\n")
    assert call(train.main, ["--config", TINY, "--logdir", "old", "--check"]) == 2
    assert capsys.readouterr().err == ("error: logdir old already holds a run (config.yaml): continue it with "
                                       "--resume auto, or start a new run with --logdir NEW_DIR\n")
    assert call(train.main, ["--config", CIFAR, "--logdir", "old", "--check"]) == 2
    assert "(this recipe keeps no checkpoints to resume)" in capsys.readouterr().err
    assert call(train.main, ["--config", TINY, "--logdir", "old", "--resume", "auto", "--check"]) == 0
    assert call(train.main, ["--config", TINY, "--logdir", "old", "--resume", "old/no.pt", "--check"]) == 2
    assert capsys.readouterr().err == "error: checkpoint old/no.pt: no such file\n"
    assert call(train.main, ["--config", TINY, "--logdir", "old", "--resume", "old", "--check"]) == 2
    assert capsys.readouterr().err == "error: checkpoint old: not a file\n"
    (workdir / "afile").write_text("")
    for config in (TINY, CIFAR):
        assert call(train.main, ["--config", config, "--logdir", "afile/run", "--check"]) == 2
        assert capsys.readouterr().err == "error: logdir afile/run: cannot be written (afile is not a writable directory)\n"
    assert call(train.main, ["--config", CIFAR, "--results", "old", "--check"]) == 2
    assert capsys.readouterr().err == "error: --results old: is a directory\n"
    # a machine rejoining its group (launch/multinode.sh): the logdir and resume file are the ranks' to judge
    assert call(train.main, ["--config", TINY, "--logdir", "old", "--resume", "old/no.pt", "--check", "--rejoin"]) == 0
    assert call(train.main, ["--config", TINY, "--logdir", "old", "--check", "--rejoin"]) == 0  # its own run's logdir
    assert call(train.main, ["--config", TINY, "--rejoin"]) == 2
    assert capsys.readouterr().err == "error: --rejoin qualifies --check only\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["afile", "old"]  # nothing written


@pytest.mark.parametrize("argv,message", TRAIN_CASES, ids=range(len(TRAIN_CASES)))
def test_train_bad_command_line(workdir, capsys, argv, message):
    start = time.perf_counter()
    rc = call(train.main, argv)
    assert_refused(rc, capsys.readouterr().err, message, workdir)
    assert time.perf_counter() - start < 10  # an answer, not a plan of 1e18 epochs (generous: shared CPUs)


def test_a_plot_that_fails_midway_leaves_no_file(workdir, capsys, monkeypatch):
    real_write = Path.write_bytes

    def half_written(self, data):
        real_write(self, data[:4])  # a disk that fills up after the first bytes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    rc = call(train.main, ["--config", TINY, "--plot-schedule", "s.png"])
    assert_refused(rc, capsys.readouterr().err, "--plot-schedule s.png: No space left on device", workdir)


@pytest.mark.parametrize("name,text,message", [
    ("deep.yaml", "- " * 5000 + "1\n", "phases: line 1, column 33: nested more than 16 levels deep"),
    ("deep_map.yaml", "".join(" " * i + f"k{i}:\n" for i in range(40)) + " " * 40 + "1\n",
     "phases: line 17, column 17: nested more than 16 levels deep"),
    ("alias.yaml", "a: &x [1, 2]\nb: [*x, *x]\n", "phases: line 2, column 5: YAML aliases (*x) are not accepted"),
    ("big.yaml", "#" * 70000, "longer than 65,536 characters"),
    ("binary.yaml", b"\xff\xfe\x00garbage", "phases file"),
], ids=lambda v: v if isinstance(v, str) and v.endswith(".yaml") else "")
def test_phases_file_bounds(workdir, capsys, name, text, message):
    path = write(workdir, name, text)
    rc = call(train.main, ["--phases", path, "--dry-run"])
    assert_refused(rc, capsys.readouterr().err, message, workdir, (name,))


@pytest.mark.parametrize("text,message", [
    ("phases:\n" + "- " * 5000 + "1\n", "config file {path}: line 2, column 31: nested more than 16 levels deep"),
    ("phases: " + DEEP_LIST, "config file {path}: nested more than 16 levels deep"),
    ("a: &x [1]\nb: *x\n", "config file {path}: line 2, column 4: YAML aliases (*x) are not accepted"),
    # PyYAML keeps the last silently: the first section's seed was dropped
    ("train:\n  seed: 1\ntrain:\n  print_freq: 7\n", "config file {path}: not valid YAML: line 3, column 1: "
     "duplicate key 'train'"),
], ids=["block", "flow", "alias", "duplicate"])
def test_config_file_bounds(workdir, capsys, text, message):
    path = write(workdir, "c.yaml", text)
    rc = call(train.main, ["--config", path, "--dry-run"])
    assert_refused(rc, capsys.readouterr().err, message.format(path=path), workdir, ("c.yaml",))


@pytest.mark.parametrize("argv", [
    ["--config", str(REPO / "configs" / name)] for name in
    ("tiny_cpu.yaml", "cifar10.yaml", "cifar10_cpu.yaml", "cifar10_ci.yaml", "imagenet18/1x8.yaml", "imagenet18/4x8.yaml",
     "imagenet18/8x8.yaml", "imagenet18/16x8.yaml")] + [
    # strings YAML 1.1 writes plain that our YAML 1.2 numbers read back as numbers
    ["--config", TINY, "/data/1e3", "--logdir", "0o17", "--resume", "1.5e5", "--arch", "-.5"],
    ["--phases", "[{'ep':0,'sz':32,'bs':8,'trndir':'1e5'},{'ep':(0,2.5),'lr':(0.30000000000000004,5e-324)}]"],
], ids=["tiny_cpu", "cifar10", "cifar10_cpu", "cifar10_ci", "1x8", "4x8", "8x8", "16x8", "number-like-strings",
        "phases-floats"])
def test_the_resolved_config_loads_back_as_itself(workdir, argv):
    """LOGDIR/config.yaml (and --print-config's output) given back as --config: every value and type."""
    cfg = train.resolve(argv)[1]
    for name, text in (("config.yaml", C.dump(cfg)), ("printed.yaml", C.annotated(cfg))):
        again = train.resolve(["--config", write(workdir, name, text)])[1]
        assert repr(C.to_dict(again)) == repr(C.to_dict(cfg)), name


def test_a_text_override_is_taken_whole_and_numbers_still_read(workdir):
    """A text setting takes its value as typed, as its --flag does: YAML read 'runs/exp #3' as
    'runs/exp' and a comment, and '2024' as a number (refused as 'expected str')."""
    cfg = train.resolve(["--config", TINY, "train.logdir=runs/exp #3", "data.dir=/data/#1", "train.resume=2024",
                         "train.seed=5", "optim.weight_decay=1e-3", "optim.momentum=0.1", "train.compile=true",
                         "train.print_freq=1_000"])[1]
    assert (cfg.train.logdir, cfg.data.dir, cfg.train.resume) == ("runs/exp #3", "/data/#1", "2024")
    # blanks around it and a YAML string's quotes are not part of the text (an argv list no shell unquoted)
    quoted = train.resolve(["--config", TINY, 'train.logdir= "runs/a b" ', "data.dir=' /data/x'",
                            "train.resume='it''s'"])[1]
    assert (quoted.train.logdir, quoted.data.dir, quoted.train.resume) == ("runs/a b", " /data/x", "it's")
    got = (cfg.train.seed, cfg.optim.weight_decay, cfg.optim.momentum, cfg.train.compile, cfg.train.print_freq)
    assert repr(got) == repr((5, 1e-3, 0.1, True, 1000))


def test_the_ends_of_each_range_are_accepted(workdir):
    """A range is inclusive: keep_checkpoints 0 (keep all), workers 0 (load in the main process),
    momentum 1, label smoothing 0, the largest seed and a 1 s collective timeout are settings."""
    cfg = train.resolve(["--config", TINY, "train.keep_checkpoints=0", "data.workers=0", "optim.momentum=1",
                         "optim.label_smoothing=0", "train.seed=2147483647", "train.dist_timeout_s=1"])[1]
    got = (cfg.train.keep_checkpoints, cfg.data.workers, cfg.optim.momentum, cfg.optim.label_smoothing,
           cfg.train.seed, cfg.train.dist_timeout_s)
    assert repr(got) == repr((0, 0, 1.0, 0.0, 2**31 - 1, 1))


def test_an_override_splits_at_its_first_equals_sign(workdir):
    """'train.logdir=runs/lr=0.1': the key is train.logdir, the value all after the first '='."""
    cfg = train.resolve(["--config", TINY, "train.logdir=runs/lr=0.1", "data.dir=/data/a=b"])[1]
    assert (cfg.train.logdir, cfg.data.dir) == ("runs/lr=0.1", "/data/a=b")


def test_config_files_merge_by_key_and_an_empty_one_sets_nothing(workdir):
    """A later --config file overrides the keys it names, section by section, and keeps the rest of
    the earlier file's section; an empty (or all-comment) file is a file of no settings."""
    first = write(workdir, "a.yaml", "train: {seed: 3, print_freq: 7}\noptim: {momentum: 0.5}\n")
    second = write(workdir, "b.yaml", "train: {seed: 5}\n")
    empty = write(workdir, "empty.yaml", "# nothing set yet\n")
    cfg = train.resolve(["--config", TINY, "--config", first, "--config", empty, "--config", second])[1]
    assert (cfg.train.seed, cfg.train.print_freq, cfg.optim.momentum) == (5, 7, 0.5)
    assert C.to_dict(train.resolve(["--config", TINY, "--config", empty])[1]) == C.to_dict(
        train.resolve(["--config", TINY])[1])


def test_numbers_read_as_python_reads_them_and_a_stray_underscore_stays_text():
    """YAML 1.1 took any underscores in a number (1__0 was 10); Python's only between digits."""
    values = ("1e-3", "0.1", "-5", "true", "false", "1_000", "1_000.5", "0x10", "0o7")
    assert repr([C.parse_value(v) for v in values]) == repr([1e-3, 0.1, -5, True, False, 1000, 1000.5, 16, 7])
    for typo in ("1__0", "1_", "1_.5", "0x__1"):
        assert C.parse_value(typo) == typo  # text, which a numeric setting refuses by name


@pytest.mark.parametrize("argv,message", [
    (["train.seed=1__0"], "config key 'train.seed': expected int, got '1__0'"),
    (["--seed", "1__0"], "--seed: config key 'train.seed': expected int, got '1__0'"),
    (["optim.momentum=0.9_"], "config key 'optim.momentum': expected float, got '0.9_'"),
    (["--phases", "- {ep: 0, sz: 32, bs: 1__6}\n- {ep: [0, 2], lr: 0.1}\n"],
     "phase 0: key 'bs': expected a positive integer <= 65536, got '1__6'"),
    # a comment YAML would drop from a number, a bool or a list
    (["train.seed=5 #3"], "train.seed: '5 #3': YAML would read '#3' as a comment and drop it"),
    (["--seed", "#5"], "--seed: '#5': YAML would read '#5' as a comment and drop it"),
    (["train.compile=true # on GPUs"], "train.compile: 'true # on GPUs': YAML would read '# on GPUs' as a comment"),
    # YAML 1.1's booleans, said as what the user typed them as
    (["train.seed=yes"], "config key 'train.seed': expected int, got True (YAML reads yes/no/on/off as true/false)"),
], ids=["1__0", "flag-1__0", "0.9_", "phases-1__6", "comment", "flag-comment", "bool-comment", "yes"])
def test_a_value_yaml_would_read_otherwise_is_refused(workdir, capsys, argv, message):
    rc = call(train.main, ["--config", TINY, *argv, "--dry-run"])
    assert_refused(rc, capsys.readouterr().err, message, workdir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(workdir, capsys):
    rc = call(train.main, ["--config", TINY, "--loader", "synthetic", "--device", "cuda"])
    assert_refused(rc, capsys.readouterr().err, "--device cuda: no CUDA device is visible", workdir)


def test_cifar_batch_larger_than_the_data_trains_nothing_and_says_so(workdir, capsys):
    from test_bench_cifar import write_cifar10
    data = write_cifar10(workdir.parent / "small", n_train=100, n_test=20)
    rc = call(train.main, ["--config", CIFAR, "--data", str(data), "cifar.download=false"])
    assert_refused(rc, capsys.readouterr().err, "phases: batch size 512 at epoch 0 is more than the 100 training "
                   "images (cifar.drop_last drops it whole)", workdir)


def test_tampered_cifar_pickle_runs_nothing(workdir, capsys):
    marker = workdir.parent / "pwned"

    class Payload:  # what a tampered data_batch_1 carries: a call to run at load time
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    d = workdir / "data" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    (d / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1],
                                                   "extra": Payload()}))
    rc = call(train.main, ["--config", CIFAR, "--data", str(workdir / "data"), "cifar.download=false"])
    assert_refused(rc, capsys.readouterr().err,
                   f"{d / 'data_batch_1'}: refused: it names posix.system, which no CIFAR file holds", workdir,
                   ("data",))
    assert not marker.exists()


def test_huge_schedule_dry_run_answers_at_once_as_a_process(tmp_path):
    """It used to plan each of 1e18 epochs: bounded here, and the process group killed on timeout."""
    p = subprocess.Popen([sys.executable, "training/train.py", "--phases", HUGE_EPOCHS, "--dry-run"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"still planning after 30 s\n{err[-2000:]}") from None
    assert p.returncode == 2 and out == "" and err.count("\n") == 1 and "maximum of 1000 epochs" in err, err


def test_dry_run_into_a_closed_pipe_ends_quietly():
    """`train.py --dry-run | head -1`: 1000 rows (~170 KB) into a pipe whose reader left after one."""
    p = subprocess.Popen([sys.executable, "training/train.py", "--phases",
                          "[{'ep':0,'sz':32,'bs':8},{'ep':(0,1000),'lr':0.1}]", "--dry-run"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        first = p.stdout.readline()
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert first.startswith(b'{"epoch": 0')
    assert p.returncode == 0 and err == b"", err.decode()


def test_resize_bad_arguments(workdir, capsys):
    (workdir / "data" / "train" / "a").mkdir(parents=True)
    blocker = write(workdir, "file", "")
    for argv, message in [
        (["data", "out", "--quality", "0"], "argument --quality: must be in 1..100, got 0"),
        (["data", "out", "--workers", "-1"], "argument --workers: must be positive, got -1"),
        (["data", "out", "--size", "big"], "argument --size: expected an integer, got 'big'"),
    ]:
        assert_refused(call(resize.main, argv), capsys.readouterr().err, message, workdir, ("data", "file"))
    rc = call(resize.main, ["data", f"{blocker}/out"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "resize: cannot create the output dir" in err, err


@pytest.mark.parametrize("argv,message", [
    (["throughput", "--steps", "0"], "argument --steps: must be positive, got 0"),
    (["throughput", "--sizes", "128", "-5"], "argument --sizes: must be positive, got -5"),
    (["decode", "--quality", "101"], "argument --quality: must be in 1..100, got 101"),
    (["decode", "--json", "no/such/dir/d.json"], "--json no/such/dir/d.json: no such directory"),
    (["pipeline", "--workers", "0"], "argument --workers: must be positive, got 0"),
    (["project", "--config", TINY, "--gpus", "0", "--throughput", "t.json"], "argument --gpus: must be positive"),
    (["project", "--config", TINY, "--gpus", "8", "--throughput", "t.json", "--eval-every", "-1"],
     "argument --eval-every: must be >= 0"),
    (["decode", "--json", "", "--images", "1", "--repeats", "1"], "error: --json '': an empty path names no file"),
    (["throughput", "--json", "", "--arch", "nosuch"], "error: --json '': an empty path names no file"),
    (["pipeline", "/dev/null", "--json", ""], "error: --json '': an empty path names no file"),
    (["nonsense"], "argument command: invalid choice: 'nonsense'"),
    ([], "the following arguments are required: command"),  # not an AttributeError traceback
])
def test_bench_bad_arguments(workdir, capsys, argv, message):
    assert_refused(call(bench.main, argv), capsys.readouterr().err, message, workdir)


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(workdir, capsys):
    cfg = write(workdir, "cfg.yaml", Path(CIFAR).read_text())
    (workdir / "data" / "train").mkdir(parents=True)  # pipeline: refused, not generated, were --json let through
    (workdir / "data" / "cifar-10-batches-py").mkdir()
    batch = write(workdir / "data" / "cifar-10-batches-py", "test_batch", "keep")
    inside = "lies inside an input (the data folder data/cifar-10-batches-py): choose another path"
    for main, argv, message in [
        (bench.main, ["cifar", "--data", "data", "--config", cfg, "--json", cfg],
         f"--json {cfg} is an input (the --config file): choose another path"),
        (bench.main, ["cifar", "--data", "data", "--config", cfg, "--json", batch], f"--json {batch} {inside}"),
        (train.main, ["--config", cfg, "--data", "data", "--results", cfg],
         f"--results {cfg} is an input (the --config file): choose another path"),
        (train.main, ["--config", cfg, "--data", "data", "--results", batch, "--check"], f"--results {batch} {inside}"),
        (bench.main, ["pipeline", "data", "--json", batch],
         f"--json {batch} lies inside an input (the data folder data): choose another path"),
    ]:
        assert call(main, argv) == 2, argv
        assert capsys.readouterr().err == f"error: {message}\n"
    assert (Path(cfg).read_text(), Path(batch).read_text()) == (Path(CIFAR).read_text(), "keep")
    assert sorted(p.name for p in workdir.iterdir()) == ["cfg.yaml", "data"]


def test_a_failed_cifar_download_removes_the_folders_it_made(workdir, capsys, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("offline")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)  # no test downloads
    (workdir / "keep").mkdir()
    for data in ("nodata/sub", "keep/sub"):
        rc = call(train.main, ["--config", CIFAR, "--data", data, "--logdir", "runs/c4"])
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("data: ")]
        # what it then suggests depends on whether ../shared's materialize.py is there (beside a CI clone)
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: no cifar-10-batches-py in {data} and the download failed (offline): ")
        assert [p.name for p in workdir.iterdir()] == ["keep"] and not any((workdir / "keep").iterdir())


@pytest.mark.parametrize("labels,message", [
    ([2**70] * 2, "'labels' must be a list of integer labels, got object"),  # was OverflowError
    ([[0, 1]] * 2, "'labels' must be a list of integer labels, got int64 of shape (2, 2)"),  # was a concat ValueError
    (1, "'labels' must be a list of integer labels, got int64 of shape ()"),  # was TypeError: len() of unsized
    (["a", "b"], "'labels' must be a list of integer labels, got <U1"),  # was ValueError: invalid literal
    ([0.5, 1.5], "'labels' must be a list of integer labels, got float64"),  # was truncated to 0 and 1 silently
])
def test_cifar_pickle_with_bad_labels_is_one_line(workdir, capsys, labels, message):
    d = workdir / "data" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    (d / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": labels}))
    rc = call(train.main, ["--config", CIFAR, "--data", str(workdir / "data"), "cifar.download=false"])
    assert_refused(rc, capsys.readouterr().err, f"{d / 'data_batch_1'}: {message}", workdir, ("data",))


def _record(data: bytes, length: int | None = None, with_data: bool = True) -> bytes:
    import struct
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    head = struct.pack("<Q", len(data) if length is None else length)
    rec = head + struct.pack("<I", masked_crc32c(head))
    return rec + data + struct.pack("<I", masked_crc32c(data)) if with_data else rec


@pytest.mark.parametrize("blob,message", [
    # checksums that match over bytes that are no Event: was protobuf's DecodeError traceback
    (_record(b"\xff\xff\xff\xff"), "corrupt record at byte 0 (not an Event)"),
    # a header claiming 2**63 bytes: was OverflowError; 2**40: MemoryError (a torn record now)
    (_record(b"", 2**63 + 5, with_data=False), "only empty event files"),
    (_record(b"", 2**40, with_data=False), "only empty event files"),
], ids=["not-an-event", "length-2**63", "length-2**40"])
def test_dawn_export_of_a_hostile_event_file_is_one_line(workdir, capsys, blob, message):
    from dawn import prepare_dawn_tsv
    (workdir / "run").mkdir()
    write(workdir / "run", "events.out.tfevents.1.host", blob)
    rc = call(prepare_dawn_tsv.main, ["--events_path", "run", "--out", "r.tsv"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and message in err, err
    assert sorted(p.name for p in workdir.iterdir()) == ["run"]


def test_resize_into_its_own_data_dir_is_refused(workdir, capsys):
    """OUT = DATA said '0 written, N already done' and exit 0; OUT inside DATA/train added a class folder."""
    from training.bench.jpegtree import make_tree
    make_tree(workdir / "data", images=4, classes=2)
    before = sorted(str(p) for p in (workdir / "data").rglob("*"))
    for out in ("data", "data/train/zz", "./data/"):
        rc = call(resize.main, ["data", out, "--size", "16", "--workers", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "is data dir data or inside it" in err, err
    assert sorted(str(p) for p in (workdir / "data").rglob("*")) == before


def test_symlink_loop_in_a_class_folder_is_refused(workdir, capsys):
    """os.walk(followlinks=True) listed a class folder linked into itself ~40 times over: the resize
    copied every image as often, the trainer's index trained on the duplicates."""
    from training.bench.jpegtree import make_tree
    from training.data import DataError, tree
    make_tree(workdir / "data", images=4, classes=2)
    (workdir / "data" / "train" / "n00000000" / "loop").symlink_to("..")
    rc = call(resize.main, ["data", "out", "--size", "16", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "resize: symlink loop:" in err, err
    assert not (workdir / "out").exists()
    split = str(workdir / "data" / "train")
    with pytest.raises(DataError, match="symlink loop"):
        tree.list_files(split, tree.find_classes(split))


def test_two_class_folders_linked_to_one_folder_are_refused_as_such(tmp_path):
    """Not a loop: the same images under two labels. The error says which it is."""
    from training.bench.jpegtree import make_tree
    from training.data import DataError, tree
    make_tree(tmp_path / "data", images=4, classes=2)
    split = tmp_path / "data" / "train"
    (split / "n00000002").symlink_to(split / "n00000000")
    with pytest.raises(DataError, match=rf"one folder linked twice: {split}/n00000002 is the folder {split}/n00000000 again"):
        tree.list_files(str(split), tree.find_classes(str(split)))


def test_bench_cifar_trace_dir_not_left_by_a_refused_variant(workdir, capsys):
    from test_bench_cifar import write_cifar10
    data = write_cifar10(workdir / "c", n_train=20, n_test=10)
    rc = call(bench.main, ["cifar", "--data", str(data), "--config", CIFAR, "--trace", "tr",
                           "--variants", "bad=cifar.tta_level=7"])
    assert_refused(rc, capsys.readouterr().err, "cifar.tta_level must be 0, 1 or 2, got 7", workdir, ("c",))


@pytest.mark.parametrize("spec, message", [("kill:5:0:0", "FASTIMAGENET_FAULT='kill:5:0:0': no epoch 5 in a run of 3"),
                                           ("bogus", "expected kill|hang:EPOCH:STEP:RANK")])
def test_check_refuses_a_fault_drill_that_cannot_fire(workdir, capsys, monkeypatch, spec, message):
    """The launchers' --check, before torchrun: a drill refused only by the run's first attempt let
    torchrun's restart train the whole run undrilled, exit 0 (its rank is checked by the run)."""
    from training import dist
    monkeypatch.setenv(dist.FAULT_ENV, spec)
    rc = call(train.main, ["--config", TINY, "--check"])
    assert_refused(rc, capsys.readouterr().err, message, workdir)


DRILL_PHASES = ("[{'ep': 0, 'sz': 32, 'bs': 8}, {'ep': (0, 2), 'lr': (0.02, 0.08)}, "
                "{'ep': 1, 'bs': 16, 'keep_dl': True}, {'ep': 2, 'sz': 48, 'bs': 8, 'trndir': '-sz/48'}, "
                "{'ep': (2, 3), 'lr': (0.08, 0.008)}]")


@pytest.mark.parametrize("spec, flags, message", [
    # 24 images, one process: 3 steps of 8 in epoch 0, 2 of 16 in epoch 1 (keep_dl's batch)
    ("kill:1:2:0", [], "epoch 1 has 2 steps per process (STEP 0..1)"),
    ("hang:0:1:0", ["--short-epoch", "train.short_epoch_steps=1"], "epoch 0 has 1 step per process (STEP 0..0)"),
    # epoch 2 trains on its own copy, DATA-sz/48, of 3 images: 1 step (DATA's 24 would give 3)
    ("kill:2:1:0", [], "epoch 2 has 1 step per process (STEP 0..0)"),
    ("kill:2:0:0", ["--max-epochs", "1"], "this run trains epochs 0..0, not 2"),
])
def test_a_fault_drill_past_the_steps_its_epoch_trains_is_refused_before_training(
        workdir, jpeg_tree, capsys, monkeypatch, spec, flags, message):
    """--check knows the schedule, not the data: a STEP past its epoch's last step, or an EPOCH this
    invocation does not train, used to run the whole run undrilled (exit 0, a restart path untested)."""
    from conftest import make_jpeg_tree
    from training import dist
    make_jpeg_tree(Path(f"{jpeg_tree}-sz/48"), train_per_class=1, val_per_class=1)
    monkeypatch.setenv(dist.FAULT_ENV, spec)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    rc = call(train.main, [str(jpeg_tree), "--config", TINY, "--phases", DRILL_PHASES, "--logdir", "run",
                           "data.workers=0", *flags])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.splitlines()[-1] == f"error: FASTIMAGENET_FAULT={spec!r}: {message}"
    assert not (workdir / "run" / "train.log").exists() and not list(workdir.glob("run/checkpoints/*"))


def test_integer_flags_accept_both_ends_of_their_range():
    """``cli.int_range(low, high)`` is inclusive at both ends (``--quality 100``, ``--workers 0``) and
    refuses one past either end, by name of the range."""
    import argparse
    from training.cli import int_range
    parse = int_range(1, 100)
    assert (parse("1"), parse("100")) == (1, 100)
    for bad, why in (("0", "must be in 1..100, got 0"), ("101", "must be in 1..100, got 101"),
                     ("1.5", "expected an integer, got '1.5'")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(why)):
            parse(bad)
    assert int_range(0)("0") == 0


def test_an_output_folder_that_can_be_read_but_not_written_is_refused(tmp_path):
    """``cli.output_problem`` wants a folder it can write in, not one it can read: --results into a
    read-only folder passed --check and failed only after the training. Root writes through a
    folder's mode bits, so there a read-only mount (/proc/sys, in a container) stands in."""
    from training.cli import output_problem
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    folder = next((d for d in (ro, Path("/proc/sys")) if os.access(d, os.R_OK | os.X_OK)
                   and not os.access(d, os.W_OK)), None)
    if folder is None:
        pytest.skip("no read-only folder here (root, and /proc/sys writable)")
    assert output_problem(str(folder / "r.json")) == f"cannot be written ({folder} is not a writable directory)"


def test_brackets_inside_a_string_in_either_quote_are_not_nesting():
    """The nesting bound counts brackets outside strings: a JSON phases list (double quotes) whose
    folder name holds 20 '(' reads as it does in Python's single quotes, not as 20 levels deep."""
    from training.phases import parse_schedule
    name = "-sz/" + "(" * 20
    for q in ("'", '"'):
        phases = (f"[{{{q}ep{q}: 0, {q}sz{q}: 32, {q}bs{q}: 8, {q}trndir{q}: {q}{name}{q}}}, "
                  f"{{{q}ep{q}: [0, 2], {q}lr{q}: 0.1}}]")
        assert parse_schedule(phases).data_phases[0].train_dir == name, q


@pytest.mark.parametrize("left", ["config.yaml", "metadata.json", "train.log", "events.out.tfevents.1.host",
                                  "checkpoints/epoch_0003.pt", "run_000/train.log"])
def test_each_file_a_run_leaves_marks_its_logdir_as_holding_one(tmp_path, left):
    """Any one thing a run leaves (a crashed run may leave only its checkpoints, or the cifar recipe only
    a run_NNN/) keeps a fresh run out; files no run writes do not."""
    from training import logs
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "exported.pt").write_bytes(b"")
    logs.refuse_reuse(str(tmp_path))  # only files of no run: free
    (tmp_path / left).parent.mkdir(exist_ok=True)
    (tmp_path / left).write_text("")
    shown = "run_000" if left.startswith("run_") else left
    with pytest.raises(C.ConfigError, match=rf"already holds a run \({re.escape(shown)}\)"):
        logs.refuse_reuse(str(tmp_path))


@pytest.mark.parametrize("rank,said", [("0", "stopped by SIGINT\n"), ("1", "")])
def test_ctrl_c_outside_training_is_one_line_and_status_130(tmp_path, monkeypatch, capsys, rank, said):
    """Ctrl-C while the data is indexed or between cifar runs (training itself saves and says more):
    rank 0 says so in one line, no traceback, and the shell's status for SIGINT."""
    from training.recipes import cifar

    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(cifar, "main", interrupted)
    monkeypatch.setenv("RANK", rank)
    try:
        rc = train.main(["--config", CIFAR, "--data", str(tmp_path), f"train.logdir={tmp_path / 'run'}"])
    except KeyboardInterrupt:  # caught here: escaping, it would stop pytest itself
        pytest.fail("KeyboardInterrupt left train.main (a traceback)")
    assert (rc, capsys.readouterr().err) == (130, said)
