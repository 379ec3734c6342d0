"""bench throughput / decode on the CPU, the loop's per-stage profile table, the profiler trace."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import REPO
from procs import run_bounded
from training import bench, loop
from training.dist import DistInfo
from training.logs import RunLogger
from training.phases import parse_schedule
from training.profiling import TraceWindow


def test_throughput_cli_cpu_writes_both_paths_ratio_and_memory(tmp_path):
    out = tmp_path / "tp.json"
    r = run_bounded([sys.executable, "-m", "training.bench", "throughput", "--arch", "resnet18", "--sizes", "32",
                     "--batch-size", "4", "--steps", "2", "--warmup", "1", "--repeats", "1", "--device", "cpu",
                     "--json", str(out)], cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio ours/reference" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["meta"]["arch"] == "resnet18" and doc["meta"]["device_type"] == "cpu"
    (row,) = doc["results"]
    assert row["size"] == 32 and row["batch_size"] == 4
    for name in ("reference", "ours"):
        p = row[name]
        assert p["img_s"] > 0 and len(p["img_s_windows"]) == 1 and p["step_ms"] > 0
        assert p["warmup_s"] > 0 and p["peak_mem_mib"] > 0 and p["memory_kind"].startswith("rss")
    assert row["ratio"] == pytest.approx(row["ours"]["img_s"] / row["reference"]["img_s"])
    assert row["ours"]["eval_img_s"] > 0 and row["reference"]["eval_img_s"] is None
    assert row["reference"]["config"]["host_syncs_per_step"] == 3
    ours = row["ours"]["config"]
    assert ours["host_syncs_per_step"] == 0 and ours["optimizer"] == "foreach"
    assert (ours["precision"], ours["channels_last"], ours["compile_mode"]) == ("fp32", False, "")


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision >= 0.29 points to TorchCodec
def test_decode_cli_cpu(tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert bench.main(["decode", "--images", "4", "--width", "64", "--height", "48", "--batch-size", "2",
                       "--repeats", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["images"] == 4 and doc["results"]["cpu"]["img_s"] > 0
    assert "cpu" in capsys.readouterr().out


def test_a_json_write_cut_short_leaves_the_last_whole_document(tmp_path, monkeypatch):
    """Benchmarks rewrite their JSON as they go; a write cut short (a full disk, a kill) must not leave
    the file half written."""
    out = tmp_path / "b.json"
    bench.write_json(str(out), {"rounds": 1})

    def cut_short(self, text, *a, **k):
        Path.write_bytes(self, text[:5].encode())
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", cut_short)
    with pytest.raises(OSError):
        bench.write_json(str(out), {"rounds": 2})
    assert json.loads(out.read_text()) == {"rounds": 1}


def test_decode_figures_come_from_the_median_pass_of_the_asked_images(monkeypatch):
    """Known timings in, known figures out: a fake decode_jpeg advances a fake clock; the images are
    the asked size and quality (q50: libjpeg's base table, DC step 16), one CPU thread decodes them,
    and the GPU path decodes in batches and waits for the device before the clock is read."""
    import io

    from PIL import Image

    from training.bench import decode
    clock, calls, syncs, threads = FakeClock(), [], [], []
    steps = iter([0.5] * 2 + [1.0] * 4 + [0.25] * 4 + [0.5] * 4)  # warm-up batch, then passes of 4, 1 and 2 s

    def fake_decode(item, device=None):
        calls.append(len(item) if isinstance(item, list) else 1)
        clock.now += next(steps)
    monkeypatch.setattr(decode.time, "perf_counter", clock)
    monkeypatch.setattr(decode, "decode_jpeg", fake_decode)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    doc = decode.run_decode(4, 64, 48, 50, 2, 3, [torch.device("cpu")])
    r = doc["results"]["cpu"]
    assert threads == [1] and calls == [1] * 14  # one image a call on the CPU
    assert r["img_s_passes"] == pytest.approx([1, 4, 2]) and r["img_s"] == pytest.approx(2)  # the median pass
    assert r["warmup_s"] == pytest.approx(1) and r["mpix_s"] == pytest.approx(2 * 64 * 48 / 1e6)
    jpegs = decode.generate_jpegs(4, 64, 48, 50)
    assert doc["meta"]["mean_kib"] == pytest.approx(sum(j.numel() for j in jpegs) / 4 / 1024)
    assert (doc["meta"]["quality"], doc["meta"]["batch_size"], doc["meta"]["repeats"]) == (50, 2, 3)
    img = Image.open(io.BytesIO(jpegs[0].numpy().tobytes()))
    assert img.size == (64, 48) and img.quantization[0][0] == 16
    monkeypatch.setattr(torch.cuda, "synchronize", syncs.append)
    calls.clear()
    steps = iter([0.1] * 3)
    decode.measure(jpegs[:3], torch.device("cuda"), 2, 1)
    assert calls == [2, 2, 1] and len(syncs) == 2  # nvJPEG's batches; each pass synchronised
    defaults = bench.build_parser().parse_args(["decode"])  # ImageNet's typical JPEG, as the help says
    assert (defaults.images, defaults.width, defaults.height, defaults.quality) == (512, 500, 375, 90)
    assert (defaults.batch_size, defaults.repeats) == (128, 5)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_timer_totals_and_table(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    timer = loop.StageTimer(True, torch.device("cuda", 0))
    for stage, seconds in (("data wait", 1.0), ("forward", 2.0), ("backward", 4.0), ("data wait", 1.0),
                           ("evaluation", 1.5), ("checkpoint", 0.5)):
        clock.now += seconds
        timer.mark(stage)
    assert dict(timer.totals) == {"data wait": 2.0, "forward": 2.0, "backward": 4.0, "evaluation": 1.5,
                                  "checkpoint": 0.5}
    assert len(syncs) == 6  # one device sync per boundary, so GPU time lands in its stage
    rows = timer.table(3).splitlines()
    assert rows[0].startswith("profile epoch 3")
    assert [r.split()[0] for r in rows[1:]] == ["data", "forward", "backward", "evaluation", "checkpoint", "total"]
    assert rows[-1].split() == ["total", "10.000", "100.0%"]
    assert rows[3].split() == ["backward", "4.000", "40.0%"]


def test_stage_timer_disabled_is_a_no_op(monkeypatch):
    def boom(*_):
        raise AssertionError("a disabled timer must not touch the clock or the device")
    timer = loop.StageTimer(False, torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "synchronize", boom)
    monkeypatch.setattr(loop.time, "perf_counter", boom)
    for stage in ("data wait", "forward", "backward", "optimizer", "evaluation", "checkpoint"):
        timer.mark(stage)
    assert not timer.totals


class Batches:
    """Loader protocol over fixed CPU batches."""

    def __init__(self, n: int, batch_size: int = 4):
        gen = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(batch_size, 6, generator=gen), torch.randint(0, 3, (batch_size,), generator=gen))
                        for _ in range(n)]
        self.batch_size, self.num_images, self.classes = batch_size, n * batch_size, ["a", "b", "c"]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Source:
    def __init__(self):
        self.train, self.val = Batches(3), Batches(2)

    def for_epoch(self, epoch: int):
        return self.train, self.val


def test_run_prints_one_table_per_epoch_with_evaluation_and_checkpoint(tmp_path, capsys):
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": [0, 2], "lr": 0.1}])
    state = loop.TrainState(model, model, opt, None, schedule)
    saved = []
    hooks = loop.Hooks(loss_fn=nn.CrossEntropyLoss(), after_epoch=lambda s: saved.append(s.epoch))
    logger = RunLogger(tmp_path / "run", True)
    ctx = loop.RunContext(dist=DistInfo(0, 1, 0, torch.device("cpu")), logger=logger, num_train=12, profile=True)
    loop.run(state, Source(), hooks, ctx)
    logger.close()
    err = capsys.readouterr().err
    tables = err.split("profile epoch ")[1:]
    assert saved == [1, 2] and len(tables) == 2
    for block in tables:
        stages = [line.split()[0] for line in block.splitlines()[1:] if line.startswith("  ")]
        assert stages == ["data", "forward", "backward", "optimizer", "logging", "evaluation", "checkpoint", "total"]


def test_profile_trace_writes_a_tensorboard_trace(tmp_path, capsys):
    model = nn.Linear(6, 3)
    with TraceWindow(str(tmp_path / "trace"), torch.device("cpu")) as trace:
        hook = trace.hook
        for i in range(10):
            model(torch.randn(4, 6)).sum().backward()
            hook(None, i)
    assert list(Path(tmp_path / "trace").glob("*.pt.trace.json"))
    assert "warning" not in capsys.readouterr().err  # the window was recorded whole
    assert TraceWindow("", torch.device("cpu")).hook is None  # off: no hook, no profiler


def test_throughput_figures_come_from_the_median_window(monkeypatch):
    """Known timings in, known figures out: 5 steps of 4 images a window, windows of 3, 1 and 2 s."""
    from training.bench import throughput as tp
    times = iter([3.0, 1.0, 2.0, 0.5])  # the three windows, then the evaluation's 5 batches
    monkeypatch.setattr(tp, "_timed", lambda fn, device: next(times))
    monkeypatch.setattr(tp, "_host_timed", lambda fn, device: 10.0)
    cpu = torch.device("cpu")
    r = tp.measure_path("ours", tp.ours_config(cpu), "resnet18", 32, 4, steps=5, warmup_steps=2, repeats=3,
                        device=cpu, num_classes=10)
    assert r.img_s_windows == pytest.approx([20 / 3, 20, 10]) and r.img_s == pytest.approx(10)
    assert r.step_ms == pytest.approx(400) and r.eval_img_s == pytest.approx(40)
    assert (r.warmup_s, r.warmup_overhead_s) == (10.0, pytest.approx(10 - 2 * 0.4))  # 2 warm steps at 0.4 s


def test_throughput_paths_are_torchvisions_amp_and_our_trainers_defaults():
    from types import SimpleNamespace

    from training.bench import throughput as tp
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert tp.reference_config(gpu) == tp.PathConfig("fp16", False, "", True)  # its --amp, NCHW
    assert tp.reference_config(cpu).precision == "fp32"  # its autocast is CUDA-only
    assert tp.ours_config(gpu) == tp.PathConfig("bf16", True, "", True)
    assert tp.ours_config(cpu) == tp.PathConfig("fp32", False, "", True)
    assert not tp.ours_config(gpu, channels_last=False).channels_last  # --no-channels-last
    fp16 = tp.reference_config(gpu)
    fused, plain = SimpleNamespace(defaults={"fused": True}), SimpleNamespace(defaults={"foreach": True})
    # loss, top-1, top-5, and the GradScaler's inf check unless a fused optimizer keeps it on the device
    syncs = [tp._host_syncs(n, fp16, o) for n, o in (("reference", plain), ("ours", plain), ("ours", fused))]
    assert syncs == [4, 1, 0]


def test_throughput_peak_memory_on_the_cpu_is_reset_per_path():
    """On the CPU each path's peak is the resident set's peak since that path began (VmHWM, reset by
    /proc/self/clear_refs), not the process's: 400 MiB held and freed before the reset is not in it.
    In a process of its own, so that no other test's peak is in it either."""
    code = ("import torch\nfrom training.bench import throughput as tp\ncpu = torch.device('cpu')\n"
            "b = b'x' * (400 << 20)\ndel b\nbefore, _ = tp._peak_memory_mib(cpu, False)\n"
            "ok = tp._reset_peak_memory(cpu)\nprint(before, *tp._peak_memory_mib(cpu, ok))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    before, after, kind = r.stdout.split()
    assert kind == "rss_peak" and float(after) < float(before) - 300, r.stdout


def test_throughput_ours_is_the_model_and_optimizer_imagenet18_trains():
    """`bench throughput`'s "ours" claims the imagenet recipe's build for imagenet18: zero-initialised
    last BN of each block (init_bn0) and no weight decay on BN (no_bn_wd), the weight decay it sets."""
    from training import config as C
    from training.bench import throughput as tp
    from training.models import resnet
    from training.optim import sgd
    cpu = torch.device("cpu")
    cfg = C.build([str(REPO / "configs" / "imagenet18" / "1x8.yaml")], [])
    torch.manual_seed(0)
    _, _, bench_opt = tp._build_ours(tp.ours_config(cpu), "resnet18", 32, 2, 10, cpu)
    recipe_opt = sgd(resnet.build("resnet18", 10, cfg.model.init_bn0), cfg.optim, cpu)

    def groups(opt) -> list:  # each group's settings and its tensors' shapes and all-zero-ness
        return [({k: v for k, v in g.items() if k != "params"},
                 [(tuple(p.shape), bool((p == 0).all())) for p in g["params"]]) for g in opt.param_groups]
    assert groups(bench_opt) == groups(recipe_opt)
    assert [g["weight_decay"] for g in bench_opt.param_groups] == [cfg.optim.weight_decay, 0.0]
    assert sum(zero for _, ps in groups(bench_opt) for _, zero in ps) > 8  # every block's last BN weight, biases


def test_jpegtree_writes_imagenet_like_jpegs_and_the_resized_copy(tmp_path):
    from PIL import Image
    from training.bench import jpegtree
    facts = jpegtree.make_tree(tmp_path / "d", images=12, classes=3, side=(40, 60), workers=2)
    train = sorted((tmp_path / "d" / "train").rglob("*.JPEG"))
    assert facts["train"] == len(train) == 12 and facts["validation"] == 3
    assert {p.parent.name for p in train} == {"n00000000", "n00000001", "n00000002"}
    with Image.open(train[0]) as im:
        assert im.format == "JPEG" and all(40 <= s <= 60 for s in im.size)
    jpegtree.resized_copy(tmp_path / "d", "-sz/160", 32, workers=1)
    with Image.open(tmp_path / "d-sz/160" / train[0].relative_to(tmp_path / "d")) as im:
        assert min(im.size) == 32


def test_jpegtree_images_are_each_their_own_at_the_asked_side_and_quality(tmp_path):
    """One side for all: every file must still differ (a validation image equal to a training one would
    score the model on what it trained on); mean_kib is the files' mean; a lower quality, smaller files."""
    from PIL import Image
    from training.bench import jpegtree
    facts = jpegtree.make_tree(tmp_path / "d", images=4, classes=2, side=(32, 32), workers=1)
    files = sorted((tmp_path / "d").rglob("*.JPEG"))
    assert len(files) == 6 and len({f.read_bytes() for f in files}) == 6
    assert all(Image.open(f).size == (32, 32) for f in files)
    assert facts["mean_kib"] == pytest.approx(sum(f.stat().st_size for f in files) / len(files) / 1024)
    low = jpegtree.make_tree(tmp_path / "q", images=4, classes=2, side=(32, 32), quality=30, workers=1)
    assert low["mean_kib"] < 0.8 * facts["mean_kib"]


def test_an_interrupted_generation_or_copy_is_made_again_not_measured(tmp_path):
    """bench pipeline generates its tree when DATA has none; a tree or copy left half-written (the
    generation interrupted) used to be measured as it was, silently."""
    from training.bench import jpegtree
    from training.bench.pipeline import ensure_tree
    data, said = tmp_path / "d", []

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.JPEG"))

    ensure_tree(data, {"", "-sz/160"}, 5, log=said.append)  # fewer images than the default 100 classes
    whole, copy = files(data), files(Path(f"{data}-sz/160"))
    assert len(whole) == 5 + 5 and copy == whole
    assert all(any(c.iterdir()) for c in (data / "train").iterdir())  # no empty class folder
    assert jpegtree.generated(data) | {"side": None} == {"images": 5, "classes": 5, "seed": 0, "quality": 90,
                                                          "side": None, "complete": True, "copies": ["-sz/160"]}
    ensure_tree(data, {"", "-sz/160"}, 5, log=said.append)
    assert len(said) == 3  # generating, its facts, the copy; the second call found all done

    jpegtree.mark(data, jpegtree.generated(data) | {"complete": False, "copies": []})  # killed mid-generation
    next((data / "train").rglob("*.JPEG")).unlink()
    with pytest.raises(SystemExit) as e:  # another size: completing it would mix two trees
        ensure_tree(data, {""}, 6, log=said.append)
    assert e.value.code == 2
    said.clear()
    ensure_tree(data, {""}, 5, log=said.append)
    assert said[0].startswith(f"bench: completing the part-generated 5 textured JPEGs under {data}")
    assert files(data) == whole and jpegtree.generated(data)["complete"]

    (Path(f"{data}-sz/160") / copy[0]).unlink()  # the copy killed midway: not recorded as made
    ensure_tree(data, {"", "-sz/160"}, 5, log=said.append)
    assert said[-1] == "bench: completing the -sz/160 copy" and files(Path(f"{data}-sz/160")) == whole

    (data / ".jpegtree.json").rename(tmp_path / "d.json")  # a tree of the user's: used as it is
    (Path(f"{data}-sz/160") / copy[0]).unlink()
    said.clear()
    ensure_tree(data, {"", "-sz/160"}, 5, log=said.append)
    assert said == [] and len(files(Path(f"{data}-sz/160"))) == 9
    for split in ("train", "validation"):  # the tree gone, its copy left: not taken for a new tree's
        for f in (data / split).rglob("*.JPEG"):
            f.unlink()
        (data / split).rename(tmp_path / f"old-{split}")
    with pytest.raises(SystemExit) as e:
        ensure_tree(data, {""}, 5, log=said.append)
    assert e.value.code == 2 and not (data / "train").exists()
    with pytest.raises(ValueError, match="every class folder needs an image"):
        jpegtree.make_tree(tmp_path / "e", images=3, classes=4)


def test_a_killed_generation_leaves_its_tree_marked_unfinished(tmp_path, monkeypatch):
    from concurrent.futures import ProcessPoolExecutor
    from training.bench import jpegtree

    class Killed(ProcessPoolExecutor):
        def map(self, *args, **kwargs):
            raise KeyboardInterrupt  # Ctrl-C while the images are written

    monkeypatch.setattr(jpegtree, "ProcessPoolExecutor", Killed)
    with pytest.raises(KeyboardInterrupt):
        jpegtree.make_tree(tmp_path / "k", images=2, classes=1)
    assert jpegtree.generated(tmp_path / "k")["complete"] is False


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pipeline_cli_measures_each_loader_in_whole_epoch_windows(tmp_path, capsys):
    """Known answers: 24 train images at batch 4 are 6 batches an epoch; with --skip 1 each window
    holds the 20 images after an epoch's first batch, and the output is what the loop receives."""
    pytest.importorskip("nvidia.dali")
    from training.bench import jpegtree
    data = tmp_path / "d"
    jpegtree.make_tree(data, images=24, classes=3, side=(40, 60), workers=2)
    out = tmp_path / "p.json"
    assert bench.main(["pipeline", str(data), "--source", "full", "--sizes", "32", "--loader", "torchvision", "dali",
                       "--workers", "1", "--batch-size", "4", "--seconds", "0.2", "--skip", "1",
                       "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [(r["loader"], r["size"]) for r in doc["results"]] == [("torchvision", 32), ("dali", 32)]
    # each row runs in a spawned process, but its loader's workers start as the trainer's would
    assert [r["worker_start"] for r in doc["results"]] == [multiprocessing.get_start_method()] * 2
    for r in doc["results"]:
        assert r["batches_per_epoch"] == 6 and r["epochs"] >= 2 and len(r["img_s_windows"]) == r["epochs"]
        assert r["img_s"] > 0 and r["first_start_s"] > 0 and r["restart_s"] is not None
        assert (r["dtype"], r["device"], r["shape"], r["labels_device"]) == ("float32", "cpu", [4, 3, 32, 32], "cpu")
    assert "torchvision" in capsys.readouterr().out


def test_pipeline_window_of_worker_processes_counts_only_what_it_waited_for(monkeypatch):
    """W workers, each batch C s of sleep (no CPU: they run in parallel even here), so the loader's
    steady rate is W x batch / C. The first W batches of an epoch arrive together: a window opened
    after batch --skip 0 counted the other W - 1 as if made inside it (1.25x here)."""
    import time as _time

    from torch.utils.data import DataLoader, Dataset

    import training.data as data
    from training.bench import pipeline
    W, C, BS, N = 4, 0.2, 2, 16  # workers, s per batch, batch, batches an epoch (4 rounds)

    class Slow(Dataset):
        def __len__(self):
            return N * BS

        def __getitem__(self, i):
            _time.sleep(C / BS)
            return torch.zeros(3, 4, 4), 0

    class Loader:
        def __init__(self):
            self.dl = DataLoader(Slow(), batch_size=BS, num_workers=W, persistent_workers=True)

        def set_epoch(self, epoch):
            pass

        def __iter__(self):
            return iter(self.dl)

        def __len__(self):
            return len(self.dl)

        def close(self):
            self.dl._iterator._shutdown_workers()

    monkeypatch.setattr(data, "get_backend", lambda *a, **k: data.Backend("torchvision", lambda spec: Loader(), None))
    r = pipeline.measure("torchvision", "unused", "", 4, BS, W, 0.01, 0, "cpu")
    assert r["skip"] == W - 1 and r["epochs"] == 2
    assert r["img_s"] == pytest.approx(W * BS / C, rel=0.1), r["img_s_windows"]


def test_pipeline_restart_is_the_later_passes_starts_not_the_first(monkeypatch):
    """The first pass's start builds the pipeline (here 0.5 s), a later pass's start only restarts
    it (0.02 s): ``first_start_s`` is the one, ``restart_s`` the median of the others alone."""
    import time as _time

    import training.data as data
    from training.bench import pipeline

    class ColdStart:
        passes = 0

        def set_epoch(self, epoch):
            pass

        def __iter__(self):
            _time.sleep(0.5 if self.passes == 0 else 0.02)
            self.passes += 1
            return iter([(torch.zeros(2, 3, 4, 4), torch.zeros(2))] * 3)

        def __len__(self):
            return 3

        def close(self):
            pass

    monkeypatch.setattr(data, "get_backend", lambda *a, **k: data.Backend("cold", lambda spec: ColdStart(), None))
    r = pipeline.measure("cold", "unused", "", 4, 2, 0, 0.01, 0, "cpu")
    assert r["epochs"] == 2 and r["first_start_s"] >= 0.5
    assert 0.02 <= r["restart_s"] < 0.25  # the cold start in the median: (0.5 + 0.02) / 2


def _end_to_end(monkeypatch, tmp_path, epochs: int, totals: dict) -> tuple[list[dict], list[str]]:
    """end_to_end's rows for sizes 128 and 224 when every epoch's stage table holds ``totals``, and its command."""
    import subprocess as sp

    from training.bench import pipeline
    timer = loop.StageTimer(False, torch.device("cpu"), sync=False)
    timer.totals.update(totals)
    tables = "\n".join(timer.table(e) for e in range(2 * epochs))
    cmds = []
    monkeypatch.setattr(pipeline, "_count", lambda *a: 100)
    monkeypatch.setattr(pipeline.subprocess, "run",
                        lambda cmd, **k: cmds.append(cmd) or sp.CompletedProcess(cmd, 0, "", tables))
    args = bench.build_parser().parse_args(["pipeline", str(tmp_path), "--sizes", "128", "224", "--e2e-epochs",
                                            str(epochs), "--device", "cpu"])
    args.e2e_batch = {}
    return pipeline.end_to_end("synthetic", str(tmp_path), {128: "", 224: ""}, args), cmds[0]


def test_end_to_end_gives_no_img_s_from_a_warm_up_epoch(monkeypatch, tmp_path):
    """--e2e-epochs 1: each size's only epoch is its warm-up (compile, autotune): no steady rate."""
    rows, _ = _end_to_end(monkeypatch, tmp_path, 1, {"data wait": 1.0, "forward": 30.0, "backward": 2.0,
                                                     "optimizer": 1.0})
    assert [(r["epochs"], r["img_s"], r["data_wait_share"]) for r in rows] == [(1, None, None)] * 2
    assert [r["warmup_epoch_s"] for r in rows] == [34.0, 34.0]


def test_end_to_end_times_the_trainer_unsynced(monkeypatch, tmp_path):
    """Host times as in training (a synced profile serialises the host's loader work with the device's),
    the device's queued work landing in the logging stage's sync: img/s over all training stages."""
    rows, cmd = _end_to_end(monkeypatch, tmp_path, 2, {"data wait": 1.0, "forward": 0.5, "backward": 0.25,
                                                       "optimizer": 0.25, "logging": 3.0, "evaluation": 9.0})
    assert "--profile" in cmd and "train.profile_sync=false" in cmd
    assert [(r["img_s"], r["data_wait_share"]) for r in rows] == [(20.0, 0.2), (20.0, 0.2)]  # 100 images / 5 s


@pytest.mark.filterwarnings("error::UserWarning")  # torch's "NumPy array is not writable", once per worker
def test_float_path_yields_our_batches_from_float_workers(jpeg_tree):
    """bench pipeline's torchvision:float (the classic path, issue 11) must deliver the batches ours
    does, so comparing the two measures only where normalisation happens and what crosses over."""
    from training.bench import floatpath
    from training.data import LoaderSpec, imagefolder
    from training.phases import DataPhase
    phase = DataPhase(start=0, size=32, batch_size=5, train_dir="", val_dir="", min_scale=0.35, rect_val=False,
                      keep_dl=False)
    spec = LoaderSpec(root=str(jpeg_tree), phase=phase, rank=0, world_size=1, device=torch.device("cpu"),
                      workers=1, seed=3, channels_last=True)
    ours, classic = imagefolder.train_loader(spec), floatpath.train_loader(spec)
    try:
        for loader in (ours, classic):
            loader.set_epoch(1)
        pairs = list(zip(ours, classic))
        sent = next(iter(classic._loader))[0]
    finally:
        ours.close()
        classic.close()
    assert len(pairs) == len(ours) == 5  # 24 images in batches of 5
    for (x, y), (xf, yf) in pairs:
        assert torch.equal(y, yf) and xf.dtype == x.dtype == torch.float32
        assert xf.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xf, x, atol=1e-5, rtol=0)  # same pixels, normalised where they were made
    assert sent.dtype == torch.float32 and sent.shape == (5, 3, 32, 32)  # the workers send float CHW


def test_float_path_drops_an_image_failing_to_decode_and_yields_the_specs_dtype(jpeg_tree):
    """As ours does: a file whose header reads but whose data does not is skipped and named, not a crash
    of the run being measured; a bf16 run's batches reach it as bf16."""
    from loader_helpers import bad_huffman_jpeg, phase, spec
    from training.bench import floatpath
    bad_huffman_jpeg(sorted((jpeg_tree / "train").rglob("*.JPEG"))[0], jpeg_tree / "train" / "n00000002" / "huff.JPEG")
    loader = floatpath.train_loader(spec(jpeg_tree, phase=phase(bs=5), dtype=torch.bfloat16))
    try:
        batches = list(loader)
    finally:
        loader.close()
    assert sum(len(y) for _, y in batches) == 24 and [Path(p).name for p in loader.skipped] == ["huff.JPEG"]
    assert {x.dtype for x, _ in batches} == {torch.bfloat16}


def test_end_to_end_counts_the_images_the_trainer_trains_on(jpeg_tree):
    """Any suffix, bad files left out: the img/s of an end-to-end row divides by this count."""
    from training.bench.pipeline import _count
    for i, path in enumerate(sorted((jpeg_tree / "train").rglob("*.JPEG"))):
        path.rename(path.with_suffix(".jpg"))
        if i == 0:
            path.with_suffix(".jpg").write_bytes(b"\xff\xd8 not a whole image")
    assert _count(str(jpeg_tree), "") == 23  # 24 files, one unreadable


def test_end_to_end_defaults_to_the_loaders_the_trainer_has(tmp_path, monkeypatch):
    from training.bench import pipeline
    seen = []
    monkeypatch.setattr(pipeline, "ensure_tree", lambda *a: None)
    monkeypatch.setattr(pipeline, "check_images", lambda *a: None)
    monkeypatch.setattr(pipeline, "end_to_end", lambda loader, *a: seen.append(loader) or [])
    args = bench.build_parser().parse_args(["pipeline", str(tmp_path), "--loader", "--end-to-end", "--device", "cpu"])
    args.loader = ["torchvision", "torchvision:float"]
    pipeline.run(args)
    assert seen == ["torchvision"]  # the float path is a loader row only: the trainer has no such loader


def test_bench_bad_arguments_before_any_work(tmp_path, capsys):
    for argv in (["throughput", "--compile", "bogus"], ["pipeline", str(tmp_path), "--dir", "32=-nope", "--sizes", "32"]):
        (tmp_path / "train").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err
    assert bench.main(["throughput", "--compile", "default", "--warmup", "0", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: --warmup 0 with --compile: the compilation would be timed")


def test_pipeline_reads_the_trainers_stage_tables():
    from training.bench.pipeline import TRAIN_STAGES, _stage_tables
    timer = loop.StageTimer(False, torch.device("cpu"))
    timer.totals.update({"data wait": 0.5, "forward": 1.0, "backward": 2.0, "optimizer": 0.5, "logging": 0.25,
                         "evaluation": 1.0})
    text = "noise\n" + timer.table(0, {"checkpoint write": 3.0}) + "\nepoch 1 ...\n" + timer.table(1)
    tables = _stage_tables(text)
    assert tables == [dict(timer.totals)] * 2
    assert sum(tables[0][k] for k in TRAIN_STAGES) == 4.25


def test_pipeline_bad_arguments_one_line_exit_2(capsys):
    for argv in (["pipeline", "--sizes", "0"], ["pipeline", "--dir", "128"], ["pipeline", "--e2e-batch", "128=x"]):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2


@pytest.mark.parametrize("value,message", [
    ("abc", "error: argument --seconds: expected a number of seconds, got 'abc'"),
    ("inf", "error: argument --seconds: must be a positive finite number of seconds, got inf")])
def test_pipeline_seconds_must_be_a_finite_number(value, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["pipeline", "--seconds", value, "--sizes", "0"])  # accepted, --sizes stops it at once
    assert e.value.code == 2 and capsys.readouterr().err == message + "\n"


def _pipeline_refusal(capsys, argv: list[str]) -> str:
    """The one error line of a pipeline command that must exit 2 before any measuring."""
    with pytest.raises(SystemExit) as e:
        bench.main(["pipeline", *argv, "--sizes", "32", "--loader", "torchvision", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("file", [".", "train"])
def test_pipeline_data_or_its_train_that_is_a_file_is_refused_writing_nothing(tmp_path, capsys, file):
    data = tmp_path / "d"
    (data if file == "." else data / file).parent.mkdir(parents=True, exist_ok=True)
    (data / file if file != "." else data).write_text("")
    before = sorted(tmp_path.rglob("*"))
    assert _pipeline_refusal(capsys, [str(data), "--generate", "4"]) == \
        f"error: {data / file if file != '.' else data} is not a directory\n"
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("tree,message", [("train", "no class folders in {d}/train"),
                                          ("train/a", "class folder holds no images: {d}/train/a")])
def test_pipeline_empty_train_or_class_folder_is_refused_with_no_json(tmp_path, capsys, tree, message):
    data = tmp_path / "d"
    (data / tree).mkdir(parents=True)
    out = tmp_path / "p.json"
    err = _pipeline_refusal(capsys, [str(data), "--source", "full", "--json", str(out)])
    assert err == f"error: {message.format(d=data)}\n" and not out.exists()


def test_pipeline_end_to_end_checks_arch_first_and_says_error_once(tmp_path, capsys, monkeypatch):
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert _pipeline_refusal(capsys, [str(tmp_path), "--end-to-end", "synthetic", "--arch", "nosuch"]) == \
        "error: unknown --arch 'nosuch': not a torchvision classification model\n"
    import subprocess as sp

    from training.bench import pipeline
    monkeypatch.setattr(pipeline, "_count", lambda *a: 100)
    monkeypatch.setattr(pipeline.subprocess, "run",
                        lambda cmd, **k: sp.CompletedProcess(cmd, 2, "", "error: unknown --arch 'x'\n"))
    args = bench.build_parser().parse_args(["pipeline", str(tmp_path), "--device", "cpu"])
    args.e2e_batch = {}
    rows = pipeline.end_to_end("synthetic", str(tmp_path), {128: ""}, args)
    assert pipeline._e2e_row(rows[0]).split(None, 2)[2] == "error: unknown --arch 'x'"


@pytest.mark.parametrize("argv,message", [
    (["--arch", "resnet18", "--sizes", "32", "--batch-size", "1"], "--arch resnet18 cannot train at --sizes 32 with "
     "--batch-size 1: Expected more than 1 value per channel when training, got input size torch.Size([1, 512, 1, 1])"),
    (["--arch", "vit_b_16", "--sizes", "32", "--batch-size", "2"], "--arch vit_b_16 cannot train at --sizes 32 with "
     "--batch-size 2: Wrong image height! Expected 224 but got 32!"),
    (["--arch", "nosuch"], "unknown --arch 'nosuch': not a torchvision classification model")])
def test_throughput_model_that_cannot_run_is_one_line_before_any_progress(argv, message, capsys):
    assert bench.main(["throughput", *argv, "--device", "cpu", "--steps", "1", "--warmup", "0",
                       "--repeats", "1"]) == 2
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", f"error: {message}\n")


def test_decode_sides_are_bounded_as_jpeg_bounds_them(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["decode", "--width", "70000", "--height", "2"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: argument --width: must be in 1..65535, got 70000\n"


def test_synthetic_loader_counts_dtype_layout_and_batches_per_rank():
    """--loader synthetic counts batches as the real loaders do: train pads each rank to ceil(N / world)
    images, validation covers N // 4 images exactly once across ranks; images come in the spec's dtype and
    memory format, labels cover every class, and each rank draws its own fixed batch."""
    from loader_helpers import phase, spec
    from training.data import synthetic
    s = partial(spec, "", world=3, dtype=torch.bfloat16, channels_last=True, synthetic_images=22,
                synthetic_classes=3, phase=phase(size=8, bs=3))
    trains = [synthetic.train_loader(s(rank=r)) for r in range(3)]
    for t in trains:  # ceil(22 / 3) = 8 images a rank
        batches = list(t)
        assert len(t) == 3 and [len(y) for _, y in batches] == [3, 3, 2]
        for x, _ in batches:
            assert x.dtype == torch.bfloat16 and x.shape[1:] == (3, 8, 8)
            assert x.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(next(iter(trains[0]))[0], next(iter(trains[1]))[0])  # per rank
    assert torch.equal(next(iter(trains[0]))[0], next(iter(synthetic.train_loader(s(rank=0))))[0])  # fixed
    vals = [synthetic.val_loader(s(rank=r)) for r in range(3)]  # 22 // 4 = 5 images: 2, 2 and 1
    assert [[len(y) for _, y in v] for v in vals] == [[2], [2], [1]] and [len(v) for v in vals] == [1, 1, 1]
    assert [len(synthetic.val_loader(s(rank=r, phase=phase(size=8, bs=1)))) for r in range(3)] == [2, 2, 1]
    trains[0].set_batch_size(4)  # keep_dl: a larger batch than the one drawn
    assert len(trains[0]) == 2 and [len(y) for _, y in trains[0]] == [4, 4]
    wide = synthetic.train_loader(s(rank=0, world=1, phase=phase(size=8, bs=64)))
    assert set(next(iter(wide))[1].tolist()) == {0, 1, 2}


_IMPORTED = """
import sys
from training import bench
try:
    bench.main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.startswith("training.bench.") or m in ("torch", "torchvision")))
"""


@pytest.mark.parametrize("argv, imported", [
    (["--help"], []),  # every subcommand and its help, at once (it took ~7 s: each module imported)
    ([], []),  # no subcommand: said at once, none imported
    (["project", "--help"], ["training.bench.project"]),  # no torch, no other subcommand
    (["decode", "--help"], ["torch", "torchvision", "training.bench.decode", "training.bench.jpegtree"]),
])
def test_the_bench_imports_only_the_module_of_the_subcommand_given(argv, imported):
    r = run_bounded([sys.executable, "-c", _IMPORTED, *argv], cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == repr(imported)
    if argv == ["--help"]:  # the subcommands' help is still there, from the package
        text = " ".join(r.stdout.split())  # argparse wraps the lines
        assert all(f"{name} {about}" in text for name, about in bench.SUBCOMMANDS.items())
