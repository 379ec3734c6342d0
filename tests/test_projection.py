"""Projected wall time: hand-computed minutes, interpolation, the CLI table, a missing size."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO
from procs import run_bounded
from training.bench import project as P
from training.phases import parse_schedule

# two data phases: 2 epochs at 128 px (bs 100), then 1 epoch at 224 px (bs 50)
SMALL = [{"ep": 0, "sz": 128, "bs": 100}, {"ep": [0, 2], "lr": [1.0, 2.0]},
         {"ep": 2, "sz": 224, "bs": 50}, {"ep": [2, 3], "lr": 0.1}]


def write(path, rates: dict) -> str:
    path.write_text(json.dumps({"meta": {"device": "test GPU", "arch": "resnet50"},
                                "results": [{"size": s, "ours": r} for s, r in rates.items()]}))
    return str(path)


@pytest.fixture
def tp(tmp_path) -> P.Throughput:
    return P.load_throughput(write(tmp_path / "tp.json", {
        128: {"img_s": 100, "eval_img_s": 400},
        224: {"img_s": 50, "eval_img_s": 200, "warmup_overhead_s": 6}}))


def test_hand_computed_minutes(tp):
    # 1003 images on 2 GPUs: 502 per rank. 128 px: ceil(502/100) = 6 steps = 600 images per rank per epoch,
    # 600 / (100 img/s * 0.5) = 12 s, twice = 24 s. 224 px: ceil(502/50) = 11 steps = 550 images,
    # 550 / (50 * 0.5) = 22 s, plus 6 s warm-up for each of its two batch shapes (50 and the last
    # batch's 502 - 500 = 2: static graphs, one compile each). Eval: imagenet18's validation batch (512
    # at 128 px, 256 at 224 px) holds all 200 images, so one rank evaluates them: 200/400 = 0.5 s after
    # epochs 0 and 1, 200/200 = 1 s after epoch 2. Total 60 s.
    proj = P.project(parse_schedule(SMALL), tp, gpus=2, efficiency=0.5, num_train=1003, num_val=200)
    first, second = proj.rows
    assert (first.first_epoch, first.last_epoch, first.size, first.images) == (0, 1, 128, 2400)
    assert (second.first_epoch, second.last_epoch, second.size, second.images) == (2, 2, 224, 1100)
    assert first.train_s == pytest.approx(24.0) and first.eval_s == pytest.approx(1.0) and first.warmup_s == 0
    assert second.train_s == pytest.approx(22.0) and second.eval_s == pytest.approx(1.0)
    assert second.warmup_s == 12
    assert proj.total_s / 60 == pytest.approx(60 / 60)
    only_last = P.project(parse_schedule(SMALL), tp, gpus=2, efficiency=0.5, num_train=1003, num_val=200,
                          eval_every=0)
    assert only_last.total_s == pytest.approx(59)  # one evaluation, after the last epoch
    assert "~1.0 min" in P.format_table(proj, "small.yaml", "resnet50")
    # validation batches of 50: 2 per rank, 100 images each, as the trainer shards them
    even = P.project(parse_schedule(SMALL), tp, gpus=2, efficiency=0.5, num_train=1003, num_val=200, val_batch=50)
    assert [r.eval_s for r in even.rows] == [pytest.approx(0.5), pytest.approx(0.5)]


def test_a_warm_up_per_new_batch_shape(tp):
    """Static graphs: a phase whose shapes were compiled before (back to 224 px at bs 50) compiles
    nothing; 1000 images on 2 GPUs leave no partial batch, so one shape per phase."""
    back = [{"ep": 0, "sz": 224, "bs": 50}, {"ep": 1, "sz": 128, "bs": 100}, {"ep": 2, "sz": 224, "bs": 50},
            {"ep": [0, 3], "lr": 0.1}]
    proj = P.project(parse_schedule(back), tp, gpus=2, efficiency=1.0, num_train=1000, num_val=200)
    assert [r.warmup_s for r in proj.rows] == [6, 0, 0]


def test_evaluation_takes_as_long_as_its_busiest_rank(tp):
    """ImageNet's 50,000 images in imagenet18's batches of 512 at 128 px are 98 batches: on 64 GPUs the
    first 34 ranks get 2 (1,024 images), not 782; the trainer's own sharding says so."""
    from training.data.rectval import val_batches
    proj = P.project(parse_schedule(SMALL), tp, gpus=64, efficiency=1.0, num_train=1_281_167, num_val=50_000)
    busiest = max(sum(len(b.indices) for b in val_batches([(10, 10)] * 50_000, 512, 128, r, 64, False))
                  for r in range(64))
    assert busiest == 1024 and proj.rows[0].eval_s == pytest.approx(2 * 1024 / 400)


@pytest.mark.parametrize("num_val,gpus", [(1, 1), (511, 2), (50_000, 64), (50_000, 1), (10**18, 64)])
def test_the_busiest_rank_is_counted_not_listed(tp, num_val, gpus):
    """As rectval.val_batches deals them; 10**18 images (whole batches, a whole share each) at once."""
    from training.data.rectval import val_batches
    proj = P.project(parse_schedule(SMALL), tp, gpus=gpus, efficiency=1.0, num_train=1000, num_val=num_val)
    busiest = num_val // 64 if num_val == 10**18 else \
        len([i for b in val_batches([(1, 1)] * num_val, 512, 128, 0, gpus, False) for i in b.indices])
    assert proj.rows[0].eval_s == pytest.approx(2 * busiest / 400)


def test_checkpoint_wait_is_added_per_epoch_or_said_to_be_left_out(tp):
    plain = P.project(parse_schedule(SMALL), tp, gpus=2, efficiency=0.5, num_train=1003, num_val=200)
    assert "checkpoints: not included" in P.format_table(plain, "small.yaml", "resnet50")
    proj = P.project(parse_schedule(SMALL), tp, gpus=2, efficiency=0.5, num_train=1003, num_val=200,
                     checkpoint_s=2.0)
    assert [r.checkpoint_s for r in proj.rows] == [4.0, 2.0]  # 2 s after each of the 3 epochs
    assert proj.total_s == pytest.approx(60 + 6)
    table = P.format_table(proj, "small.yaml", "resnet50")
    assert "checkpoints: the step's measured wait, 2 s per epoch" in table
    assert table.splitlines()[-2].split()[-2:] == ["0.10", "1.10"]  # ckpt min, total min


def test_interpolates_seconds_per_image_against_pixels(tp):
    r = P.rate_at(tp, 176)
    f = (176**2 - 128**2) / (224**2 - 128**2)
    assert r.train_img_s == pytest.approx(1 / (1 / 100 + f * (1 / 50 - 1 / 100)))
    assert r.source == "interp 128-224" and r.warmup_s == pytest.approx(6 * f)
    with pytest.raises(P.ProjectionError, match="size 288 px is not in"):
        P.rate_at(tp, 288)


def test_an_unmeasured_eval_rate_is_three_times_the_training_rate(tmp_path):
    """A throughput file without eval_img_s: evaluation runs at EVAL_SPEEDUP (3) x the training img/s,
    and the table says so. 1 GPU, 200 val images at 128 px (100 img/s train): 200 / 300 s per evaluation."""
    tp = P.load_throughput(write(tmp_path / "tp.json", {128: {"img_s": 100}, 224: {"img_s": 50}}))
    assert tp.rates[128].eval_img_s == 300 and not tp.rates[128].eval_measured
    proj = P.project(parse_schedule(SMALL), tp, gpus=1, efficiency=1.0, num_train=100, num_val=200)
    assert proj.rows[0].eval_s == pytest.approx(2 * 200 / 300)  # after epochs 0 and 1
    assert proj.rows[1].eval_s == pytest.approx(200 / 150)
    assert "taken as 3x training img/s" in P.format_table(proj, "small.yaml", "resnet50")


def test_cli_efficiency_defaults_to_1_on_one_gpu_and_0_9_on_more(tmp_path):
    """One GPU has no all-reduce to lose time to: its default efficiency is 100%; more GPUs: 90%."""
    f = write(tmp_path / "tp.json", {128: {"img_s": 3000}, 224: {"img_s": 1000}, 288: {"img_s": 600}})
    one = bench("--config", "configs/imagenet18/8x8.yaml", "--gpus", "1", "--throughput", f)
    assert one.returncode == 0, one.stderr
    assert "scaling efficiency 100% on training steps" in one.stdout
    two = bench("--config", "configs/imagenet18/8x8.yaml", "--gpus", "2", "--throughput", f)
    assert "scaling efficiency 90% on training steps" in two.stdout


def bench(*args: str) -> subprocess.CompletedProcess:
    return run_bounded([sys.executable, "-m", "training.bench", "project", *args], cwd=REPO, timeout=60)


def test_cli_table_for_8x8(tmp_path):
    f = write(tmp_path / "tp.json", {128: {"img_s": 3000}, 224: {"img_s": 1000}, 288: {"img_s": 600}})
    r = bench("--config", "configs/imagenet18/8x8.yaml", "--gpus", "64", "--throughput", f)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[0] == "phase")
    rows = [line.split() for line in lines[header + 1:-2]]
    # data phases of 8x8: 128 px bs 128, keep_dl bs 256, 224 px bs 128, keep_dl bs 224, 288 px bs 128
    assert [(row[1], int(row[2]), int(row[3])) for row in rows] == [
        ("0-5", 128, 128), ("6-13", 128, 256), ("14-16", 224, 128), ("17-28", 224, 224), ("29-36", 288, 128)]
    total = next(line.split() for line in lines if line.startswith("total"))
    assert float(total[-1]) == pytest.approx(sum(float(row[-1]) for row in rows), abs=0.03)
    # ceil(1281167/64) = 20019 images per rank per epoch at 0.9 efficiency: 14 epochs at 3000 img/s,
    # 15 at 1000, 8 at 600, plus 37 evaluations of the busiest rank's 896-1,024 images at 3x the training rate
    assert 11 < float(total[-1]) < 14
    assert "scaling efficiency 90%" in r.stdout and lines[-1].startswith("64 GPU(s) of this kind: ~")


@pytest.mark.parametrize("content,message", [
    ('{"results": [{"size": 128, "ours": {"img_s": 10, "warmup_overhead_s": "30s"}}]}',
     "results[0].ours.warmup_overhead_s must be seconds >= 0, got '30s'"),
    (b"\xff\xfe not text", "not UTF-8 text"),
])
def test_bad_throughput_file_is_one_line(tmp_path, content, message):
    f = tmp_path / "tp.json"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(P.ProjectionError, match=re.escape(message)):
        P.load_throughput(str(f))


def test_checkpoint_wait_must_be_a_number_of_seconds(tp):
    with pytest.raises(P.ProjectionError, match="--checkpoint-s must be >= 0"):
        P.project(parse_schedule(SMALL), tp, gpus=2, efficiency=0.5, checkpoint_s=float("nan"))


@pytest.mark.parametrize("config,content,message", [
    ("imagenet18/8x8.yaml", {"results": [{"size": -300, "ours": {"img_s": 10}}, {"size": 300, "ours": {"img_s": 10}}]},
     "throughput file {f}: results[0] needs a positive integer 'size' and a positive 'ours.img_s'"),
    ("imagenet18/8x8.yaml", "[" * 200_000 + "]" * 200_000,
     "throughput file {f}: nested too deeply to be a throughput file"),
    ("imagenet18/8x8.yaml", {"results": [{"size": s, "ours": {"img_s": 5e-324}} for s in (128, 224, 288)]},
     "throughput file {f}: its rates give no finite time (img/s too small)"),
    ("cifar10.yaml", {"results": [{"size": 32, "ours": {"img_s": 10}}]},
     "--config configs/cifar10.yaml: the cifar recipe; project projects the imagenet recipe's schedules "
     "(time cifar runs with bench cifar)"),
], ids=["negative size", "nested 200k deep", "underflowing img/s", "cifar config"])
def test_unusable_input_exits_2_with_one_line(tmp_path, config, content, message):
    f = tmp_path / "tp.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    r = bench("--config", f"configs/{config}", "--gpus", "8", "--throughput", str(f))
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"error: {message.format(f=f)}\n")


def test_missing_size_exits_2_with_one_line(tmp_path):
    f = write(tmp_path / "tp.json", {128: {"img_s": 3000}, 224: {"img_s": 1000}})
    r = bench("--config", "configs/imagenet18/8x8.yaml", "--gpus", "8", "--throughput", f)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: size 288 px is not in")
