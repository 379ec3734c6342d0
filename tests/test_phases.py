"""The phase DSL against the real imagenet18 run in ../shared/fixtures (its `Changing LR` log lines)."""
from __future__ import annotations

import json
import re
import sys

import pytest

from conftest import FIXTURE_EVENTS, REPO
from procs import run_bounded
from training.phases import PhaseError, load_phases, parse_schedule

PHASES = (FIXTURE_EVENTS / "phases.txt").read_text()
N, W = 1_281_167, 64  # ImageNet train images; 8 machines x 8 GPUs


@pytest.fixture(scope="module")
def sched():
    return parse_schedule(PHASES)


def test_known_answers_from_fixture(sched):
    plan = sched.plan(N, W)
    assert len(plan) == 37
    assert plan[0].iters == 157
    assert plan[0].lr_first == 1.9220382165605094
    assert plan[4].lr_last == pytest.approx(3.52)
    assert plan[11].lr_first == 3.831898734177215
    assert plan[11].iters == 79  # bs 256 after the keep_dl phase


def test_every_logged_lr_change_matches_to_the_bit(sched):
    """event.log prints 'Changing LR from A to B' at each epoch's first and last iteration of a ramp;
    every B must be exactly our value for that epoch and iteration."""
    log = (FIXTURE_EVENTS / "event.log").read_text().split("~~")
    plan = sched.plan(N, W)
    checked = 0
    for epoch, chunk in enumerate(log[1:]):  # chunk k holds the lines printed during epoch k
        values = [float(v) for v in re.findall(r"Changing LR from \S+ to (\S+)", chunk)]
        if values:
            assert plan[epoch].lr_first == values[0]
            if len(values) > 1:
                assert plan[epoch].lr_last == values[1]
            checked += 1
    assert checked >= 25


def test_full_epoch_table(sched):
    table = [(r.size, r.batch_size, r.min_scale, r.rect_val, r.train_dir) for r in sched.plan(N, W)]
    expect = ([(128, 128, 0.08, False, "-sz/160")] * 6 + [(128, 256, 0.08, False, "-sz/160")] * 8
              + [(224, 128, 0.087, False, "-sz/352")] * 3 + [(224, 224, 0.087, False, "-sz/352")] * 12
              + [(288, 128, 0.5, True, "")] * 8)
    assert table == expect
    assert sched.data_phase(20).val_dir == "-sz/352"


def test_iterations_per_epoch_follow_distributed_sampler(sched):
    # ceil(ceil(N / world) / bs)
    assert sched.iters_per_epoch(0, 10, 3) == 1  # ceil(ceil(10/3)=4 / 128)
    assert sched.iters_per_epoch(0, 1000, 2) == 4  # 500 / 128 -> 4
    assert sched.iters_per_epoch(6, 1000, 2) == 2  # bs 256
    assert sched.iters_per_epoch(0, 385, 3) == 1  # the sampler pads 385 to 3 x 129: 128, and one left out
    assert sched.iters_per_epoch(0, 390, 3) == 2  # 130 each: a batch of 128, one of 2
    assert sched.iters_per_epoch(0, 259, 2) == 2  # padded to 2 x 130 (unpadded, 129: 128 and one left out)


def test_batch_shapes_are_each_phases_full_and_partial_batch(sched):
    # 20,019 images per rank: bs 128 and 256 leave 51, bs 224 leaves 83; in order of first use
    assert sched.batch_shapes(N, W) == [(128, 128), (51, 128), (256, 128), (128, 224), (51, 224),
                                        (224, 224), (83, 224), (128, 288), (51, 288)]
    assert sched.batch_shapes(100, 1) == [(100, 128), (100, 224), (100, 288)]  # one short batch each
    # the fractional final epoch runs only part of its batches: no partial batch from it
    frac = parse_schedule([{"ep": 0, "sz": 32, "bs": 8}, {"ep": [0, 1.5], "lr": [0.1, 0.0]}])
    assert frac.batch_shapes(20, 1) == [(8, 32), (4, 32)]
    assert frac.batch_shapes(24, 1) == [(8, 32)]
    # a phase of bs 6 in that partial epoch: 2 of its 4 batches (6, 6, 6, 2) run, so never the 2
    new_bs = parse_schedule([{"ep": 0, "sz": 32, "bs": 8}, {"ep": 1, "sz": 32, "bs": 6},
                             {"ep": [0, 1.5], "lr": [0.1, 0.0]}])
    assert new_bs.batch_shapes(20, 1) == [(8, 32), (4, 32), (6, 32)]
    # a later phase reading another data copy with other images has its own partial batch
    copies = parse_schedule([{"ep": 0, "sz": 32, "bs": 8}, {"ep": 2, "sz": 48, "bs": 8}, {"ep": [0, 3], "lr": 0.1}])
    assert copies.batch_shapes(20, 1) == [(8, 32), (4, 32), (8, 48), (4, 48)]
    assert copies.batch_shapes(lambda epoch: 20 if epoch < 2 else 18, 1) == [(8, 32), (4, 32), (8, 48), (2, 48)]


def test_input_forms_agree():
    literal = "[{'ep': 0, 'sz': 32, 'bs': 4}, {'ep': (0, 2), 'lr': (0.1, 0.2)}]"
    as_json = json.dumps([{"ep": 0, "sz": 32, "bs": 4}, {"ep": [0, 2], "lr": [0.1, 0.2]}])
    as_yaml = "- {ep: 0, sz: 32, bs: 4}\n- {ep: [0, 2], lr: [0.1, 0.2]}\n"
    in_config = "model: {arch: resnet18}\nphases:\n" + "".join("  " + line + "\n" for line in as_yaml.splitlines())
    parsed = [parse_schedule(s).raw for s in (literal, as_json, as_yaml, in_config)]
    assert all(p == parsed[0] for p in parsed)
    assert parse_schedule(load_phases(literal)).raw == parsed[0]


def test_lr_interpolation_formula():
    s = parse_schedule([{"ep": 0, "sz": 8, "bs": 1}, {"ep": 0, "lr": 0.5}, {"ep": [2, 4], "lr": [1.0, 3.0]}])
    B = 10
    assert s.lr(0, 0, B) == 0.5 and s.lr(1, 9, B) == 0.5
    # lr = lr0 + ((e - e0) * B + i + 1) * (lr1 - lr0) / ((e1 - e0) * B)
    assert s.lr(2, 0, B) == pytest.approx(1.0 + 1 * 2.0 / 20)
    assert s.lr(3, 4, B) == pytest.approx(1.0 + 15 * 2.0 / 20)
    assert s.lr(3, 9, B) == pytest.approx(3.0)


def test_epoch_step_holds_lr_through_an_epoch():
    s = parse_schedule([{"ep": 0, "sz": 8, "bs": 1}, {"ep": [0, 4], "lr": [0.0, 4.0], "epoch_step": True}])
    assert [s.lr(1, i, 10) for i in (0, 5, 9)] == [1.0, 1.0, 1.0]


def test_epoch_step_holds_lr_through_an_epoch_with_airbenchs_arithmetic_too():
    """step_start (the cifar recipe's lr): an epoch_step ramp still gives every step of an epoch the
    value at the epoch's start, 0 + 1 * (4 - 0) / 4 in epoch 1."""
    s = parse_schedule([{"ep": 0, "sz": 8, "bs": 1}, {"ep": [0, 4], "lr": [0.0, 4.0], "epoch_step": True}],
                       step_start=True)
    assert [s.lr(1, i, 10) for i in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [s.lr(3, i, 10) for i in (0, 9)] == [3.0, 3.0]


def test_min_scale_1_is_accepted():
    """min_scale's range is (0, 1], as its error says: 1 (crops of the whole area, as imagenet18's
    last phases ask for with 0.5 and more) is a schedule, not a typo."""
    s = parse_schedule([{"ep": 0, "sz": 32, "bs": 8, "min_scale": 1}, {"ep": [0, 1], "lr": 0.1}])
    assert s.data_phase(0).min_scale == 1.0


def test_fractional_final_epoch():
    s = parse_schedule([{"ep": 0, "sz": 32, "bs": 100}, {"ep": [0, 2.5], "lr": [0.2, 0.0]}])
    assert s.num_epochs == 3
    assert s.iters_per_epoch(2, 1000) == 5  # half of 10
    assert s.lr(2, 4, 10) == pytest.approx(0.0, abs=1e-12)


def test_keep_dl_keeps_everything_but_batch_size_and_new_phase_resets():
    s = parse_schedule(PHASES)
    assert s.data_phase(6).keep_dl and s.data_phase(6).size == 128 and s.data_phase(6).train_dir == "-sz/160"
    assert s.data_phase(29).train_dir == ""  # nothing inherited by a new data phase
    assert s.data_phase(29).min_scale == 0.5


BAD = [
    ("[{'ep':0,'sz':8,'bs':2,'colour':1},{'ep':(0,1),'lr':1}]", "phase 0: unknown key 'colour'"),
    ("[{'ep':0,'bs':2},{'ep':(0,1),'lr':1}]", "phase 0: key 'sz': missing"),
    ("[{'ep':1,'sz':8,'bs':2},{'ep':(0,2),'lr':1}]", "phase 0: key 'ep': the first data phase must start at epoch 0"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(1,2),'lr':1}]", "lr does not cover epoch 0"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,4),'lr':1},{'ep':2,'sz':8,'bs':2},{'ep':1,'sz':8,'bs':4}]",
     "phase 3: key 'ep': epochs not increasing"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,4),'lr':1},{'ep':(3,5),'lr':1}]", "phase 2: key 'ep': epochs not increasing"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':0,'lr':(1,2)}]", "phase 1: key 'lr': a linear lr [start, end] needs an end epoch"),
    ("[{'ep':0,'sz':0,'bs':2},{'ep':(0,1),'lr':1}]", "phase 0: key 'sz': expected a positive integer"),
    ("[{'ep':0,'sz':8,'bs':-2},{'ep':(0,1),'lr':1}]", "phase 0: key 'bs': expected a positive integer"),
    ("[{'ep':0,'sz':8,'bs':2,'min_scale':1.5},{'ep':(0,1),'lr':1}]", "phase 0: key 'min_scale': expected a number in (0, 1]"),
    ("[{'ep':0,'sz':8,'bs':2,'min_scale':0},{'ep':(0,1),'lr':1}]", "phase 0: key 'min_scale'"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,1),'lr':1},{'ep':1,'bs':4,'keep_dl':True,'sz':16}]",
     "phase 2: key 'sz': a keep_dl phase changes only the batch size"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,1),'lr':-1}]", "phase 1: key 'lr': negative learning rate"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,1),'lr':(0.1,-0.1)}]", "phase 1: key 'lr': negative learning rate"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':0,'lr':1}]", "the last lr phase needs an end epoch"),
    ("[{'ep':0,'sz':8,'bs':2}]", "no lr phase"),
    ("[]", "non-empty list"),
    ("{'ep': 0}", "non-empty list"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(2,1),'lr':1}]", "phase 1: key 'ep': end epoch 1 must be after start 2"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,1),'lr':1},{'ep':(1,1),'lr':1}]",
     "phase 2: key 'ep': end epoch 1 must be after start 1"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':0,'sz':16,'bs':4},{'ep':(0,1),'lr':1}]",
     "phase 1: key 'ep': epochs not increasing: data phase at 0 after one at 0"),
    ("[{'ep':0.5,'sz':8,'bs':2},{'ep':(0,1),'lr':1}]", "phase 0: key 'ep': a data phase starts at a whole epoch"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,1),'lr':1,'sz':8}]", "phase 1: key 'sz': only a data phase"),
    ("[{'ep':0,'sz':8,'bs':2},{'ep':(0,1),'lr':1},{'ep':1,'sz':8}]", "phase 2: key 'bs': a phase needs 'bs'"),
    ("[[1,2]]", "phase 0: expected a dict"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_validation_errors_name_phase_and_key(text, message):
    with pytest.raises(PhaseError) as e:
        parse_schedule(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_injection_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"[{{'ep': 0, 'sz': __import__('os').system('touch {marker}'), 'bs': 1}}]"
    with pytest.raises(PhaseError, match="not a literal"):
        parse_schedule(evil)
    r = run_bounded([sys.executable, "training/train.py", "--phases", evil, "--dry-run"], cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: phases: not a literal") and r.stderr.count("\n") == 1
    assert not marker.exists()


@pytest.mark.parametrize("expr", ["0.1*8", "2**10", "2.0*8"])
def test_arithmetic_is_refused_as_not_a_literal_naming_it(expr):
    lr = "(1.0,2.0*8)" if expr == "2.0*8" else expr
    text = f"[{{'ep':0,'sz':128,'bs':256}},{{'ep':(0,6),'lr':{lr}}}]"
    with pytest.raises(PhaseError, match=re.escape(f"phases: not a literal (found {expr!r})")):
        load_phases(text)


def test_arithmetic_in_phases_is_one_line_exit_2_and_negatives_reach_the_range_checks():
    r = run_bounded([sys.executable, "training/train.py", "--dry-run", "--phases",
                     "[{'ep':0,'sz':128,'bs':256},{'ep':(0,6),'lr':0.1*8}]"], cwd=REPO, timeout=120)
    assert (r.returncode, r.stderr) == (2, "error: phases: not a literal (found '0.1*8'); only literals are "
                                           "accepted and nothing is evaluated\n")
    with pytest.raises(PhaseError, match="negative learning rate -0.1"):  # a literal beside bare words
        parse_schedule(load_phases("[{ep: 0, sz: 128, bs: 256}, {ep: [0, 6], lr: -0.1}]"))
    assert load_phases("[{ep: 0, sz: a-b}]") == [{"ep": 0, "sz": "a-b"}]  # words stay YAML's


def test_dry_run_cli_prints_one_json_object_per_epoch():
    r = run_bounded([sys.executable, "training/train.py", "--phases", PHASES, "--dry-run",
                     "--num-train-images", str(N), "--world-size", str(W)], cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 37
    assert set(rows[0]) == {"epoch", "size", "batch_size", "val_batch_size", "iters", "lr_first", "lr_last",
                            "min_scale", "rect_val", "train_dir", "val_dir"}
    assert rows[0]["lr_first"] == 1.9220382165605094 and rows[0]["iters"] == 157
    assert rows[11]["lr_first"] == 3.831898734177215
    assert rows[29] | {} == {"epoch": 29, "size": 288, "batch_size": 128, "val_batch_size": 128, "iters": 157,
                             "lr_first": 0.019186242038216558, "lr_last": 0.01704, "min_scale": 0.5,
                             "rect_val": True, "train_dir": "", "val_dir": ""}


@pytest.mark.parametrize("text,message", [
    ("[{'ep':0,'sz':32,'bs':8},{'ep':(0,3),'lr':0.1},{'ep':3,'sz':64,'bs':8}]",
     "phase 2: key 'ep': the data phase at epoch 3 never runs: the last epoch is 2 (the lr phases end at 3)"),
    ("[{'ep':0,'sz':32,'bs':8},{'ep':(0,3),'lr':0.1},{'ep':40,'bs':16,'keep_dl':True}]",
     "phase 2: key 'ep': the data phase at epoch 40 never runs: the last epoch is 2"),
    ("[{'ep':0,'sz':32,'bs':8},{'ep':(0,2.5),'lr':0.1},{'ep':3,'sz':64,'bs':8}]",
     "phase 2: key 'ep': the data phase at epoch 3 never runs: the last epoch is 2 (the lr phases end at 2.5)"),
])
def test_a_data_phase_at_or_past_the_schedules_end_is_refused(text, message):
    """The lr phases' last end sets the run's length: a data phase starting there or later never runs."""
    with pytest.raises(PhaseError) as e:
        parse_schedule(text)
    assert str(e.value) == message or str(e.value).startswith(message), str(e.value)
    assert parse_schedule(text, trained=True).num_epochs == 3  # a checkpoint's or a run's record: let be


def test_a_data_phase_in_the_last_epoch_runs():
    for end in (3, 2.5):  # the last epoch whole, or partial
        s = parse_schedule([{"ep": 0, "sz": 32, "bs": 8}, {"ep": [0, end], "lr": 0.1}, {"ep": 2, "sz": 64, "bs": 8}])
        assert [row.size for row in s.plan(100)] == [32, 32, 64]


def test_dry_run_bad_phases_exit_2_one_line():
    r = run_bounded([sys.executable, "training/train.py", "--phases", "[{'ep':0,'bs':2}]", "--dry-run"],
                    cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "phase 0" in r.stderr


def test_shipped_configs_parse():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        r = run_bounded([sys.executable, "training/train.py", "--config", str(path), "--dry-run",
                         "--world-size", "8"], cwd=REPO, timeout=120)
        assert r.returncode == 0, (path, r.stderr)


def test_lr_phase_starting_mid_epoch_switches_mid_epoch():
    # airbench-style: the peak at 2.277 epochs falls inside epoch 2 (B = 98 steps per epoch)
    s = parse_schedule([{"ep": 0, "sz": 32, "bs": 512}, {"ep": [0, 2.277], "lr": [0.0, 1.0]},
                        {"ep": [2.277, 9.9], "lr": [1.0, 0.0]}])
    lrs = [s.lr(2, i, 98) for i in range(98)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == 1.0 and peak == 27  # step 27 ends at 2 + 28/98 > 2.277: held at the peak
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rising before
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # falling after
    last = s.iters_per_epoch(9, 98 * 512) - 1
    assert last == 88 and s.lr(9, last, 98) == 0.0  # the partial final epoch ends at lr 0
