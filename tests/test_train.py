"""The trainer end to end on CPU: events at the right steps, the lr it applies, DDP over gloo with
known accuracies, exact resume, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import REPO, make_jpeg_tree
from procs import run_bounded
from training import checkpoint, dist
from training import config as C
from training import train as trainer
from training.models import resnet
from training.optim import sgd
from training.phases import parse_schedule

TINY_CONFIG = REPO / "configs" / "tiny_cpu.yaml"
TINY = ["--config", str(TINY_CONFIG), "data.workers=0", "train.print_freq=1"]


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def train(*args: str, nproc: int = 1, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "training/train.py", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "training/train.py", *args]
    r = run_bounded(cmd, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 24 train images (3 classes x 8), 12 validation images, varied sizes and aspect ratios
    return make_jpeg_tree(tmp_path_factory.mktemp("jpeg") / "data")


def test_an_epoch_ending_on_one_image_at_32px_trains(tmp_path):
    """33 images at batch 8 end each epoch on one image, which ResNet-18's last BatchNorm (1 x 1 px at
    32 px) could not train on: the run stopped with a traceback after its first epoch. That image
    is left out (a different one each epoch), as the logged steps show."""
    data = make_jpeg_tree(tmp_path / "data", classes=3, train_per_class=11, val_per_class=1)
    r = train(str(data), *TINY, f"train.logdir={tmp_path / 'run'}", "--max-epochs", "1")
    assert "epoch 0 [4/4]" in r.stderr and "[5/" not in r.stderr, r.stderr[-2000:]


def final_weights(logdir: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((logdir / "checkpoints").glob("epoch_*.pt"))
    return torch.load(ckpts[-1], weights_only=True)["model"]


@pytest.mark.parametrize("loader", ["torchvision", "dali"])
def test_two_process_gloo_run_logs_one_eval_per_epoch(data, tmp_path, loader):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    logdir = tmp_path / "run"
    r = train(str(data), *TINY, f"train.logdir={logdir}", f"data.loader={loader}", nproc=2)
    # one line, from rank 0, names the backend, where it decodes and its workers
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("loader: ")]
    assert said == [{"torchvision": "loader: torchvision (PIL decode on the CPU), 0 worker processes per process, "
                                                    "uint8 batches normalised on cpu",
                     "dali": "loader: dali (CPU decode), 1 thread per process"}[loader]], r.stderr
    s = scalars(logdir)
    # 24 images, 2 ranks: 12 per rank per epoch whatever the batch size, so 24 global images per epoch
    assert [st for st, _ in s["losses/test_1"]] == [24, 48, 72]
    assert [v for _, v in s["epoch"]] == [0, 1, 2]
    assert [v for _, v in s["sizes/image"]] == [32, 32, 48]
    assert [v for _, v in s["sizes/batch"]] == [8, 16, 8]  # keep_dl at epoch 1, new phase at 2
    assert s["sizes/world"] == [(0, 2), (24, 2), (48, 2)]  # with each phase's sizes, as imagenet18
    assert all(0 <= v <= 100 for _, v in s["losses/test_5"])
    assert len(s["first"]) == 1
    rows = [line for line in (logdir / "train.log").read_text().splitlines() if line.startswith("~~")]
    assert rows[0] == "~~epoch\thours\ttop1\ttop5" and len(rows) == 4
    assert (logdir / "config.yaml").exists()
    # the DAWN exporter reads our run: its hours and accuracies are the `~~` rows'
    exported = run_bounded([sys.executable, "dawn/prepare_dawn_tsv.py", "--events_path", str(logdir)], cwd=REPO,
                           timeout=120)
    assert exported.returncode == 0, exported.stderr
    tsv = exported.stdout.splitlines()
    ours = [r[2:].split("\t\t") for r in rows[1:]]
    theirs = [r.split("\t") for r in tsv[1:]]
    assert [[e, h] for e, h, _, _ in theirs] == [o[0].split("\t") for o in ours]
    assert [[t1, t5] for _, _, t1, t5 in theirs] == [o[1:] for o in ours]


def test_a_run_resumed_on_fewer_processes_exports_both_world_sizes(data, tmp_path):
    """Metadata is logged once per run, so the DAWN JSON's worldSize comes from the `sizes/world`
    each launch logs: 2 processes for epoch 0, then 1 after the resume, in that order; its command
    from the `run/launch` each launch logs: both, in that order."""
    from dawn.events import load_run
    from dawn.prepare_dawn_tsv import dawn_entry, eval_rows
    logdir = tmp_path / "run"
    train(str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", nproc=2)
    train(str(data), *TINY, f"train.logdir={logdir}", "--resume", "auto")
    run = load_run(logdir)
    assert [r.epoch for r in eval_rows(run)] == [0, 1, 2]
    entry = dawn_entry(run, eval_rows(run), 93.0, False)
    assert entry["misc"]["worldSize"] == [2, 1]
    first, resumed = entry["misc"]["command"]
    assert first.endswith("train.max_epochs=1") and resumed.endswith("--resume auto"), entry["misc"]["command"]
    assert entry["framework"] == f"PyTorch {torch.__version__}"


def test_applied_and_logged_lr_follow_the_schedule(data, tmp_path, one_thread):
    """The lr the optimizer steps with, and the `sizes/lr` it logs, at every step of tiny_cpu.yaml
    (24 images: 3, 2 and 3 steps). imagenet18's ramp counts an epoch's iterations from 1: epoch 0
    of [0.02, 0.08] over 2 epochs of 3 steps goes 0.03, 0.04, 0.05; epoch 1 (2 steps, 4 in the
    ramp) 0.065, 0.08; epoch 2 ([0.08, 0.008] over 3 steps) 0.056, 0.032, 0.008."""
    known = [0.03, 0.04, 0.05, 0.065, 0.08, 0.056, 0.032, 0.008]
    applied = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: applied.append([g["lr"] for g in opt.param_groups]))
    try:
        assert trainer.main([str(data), *TINY, f"train.logdir={tmp_path}"]) == 0
    finally:
        hook.remove()
    sched = parse_schedule(C.build([str(TINY_CONFIG)], []).phases)
    scheduled = [sched.lr(e, i, n) for e, n in ((0, 3), (1, 2), (2, 3)) for i in range(n)]
    assert scheduled == pytest.approx(known, rel=1e-12)
    assert applied == [[lr, lr] for lr in scheduled]  # both parameter groups (no_bn_wd), exactly
    logged = scalars(tmp_path)["sizes/lr"]
    assert [st for st, _ in logged] == [8, 16, 24, 40, 48, 56, 64, 72]
    assert [v for _, v in logged] == pytest.approx(known, rel=1e-6)  # float32 in the event file


def constant_checkpoint(path: Path, bias: torch.Tensor) -> Path:
    """A tiny_cpu checkpoint of a ResNet-18 whose logits are ``bias`` whatever the image (the last
    layer's weights are zero): its accuracy on any set is known from the labels alone."""
    cfg = C.build([str(TINY_CONFIG)], [(["model", "num_classes"], len(bias))])
    model = resnet.build(cfg.model.arch, len(bias), cfg.model.init_bn0)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(bias)
    payload = {"model": model.state_dict(), "optimizer": sgd(model, cfg.optim, torch.device("cpu")).state_dict(),
               "scaler": None, "epoch": 3, "step": 72, "config": C.to_dict(cfg), "arch": cfg.model.arch,
               "start_time": time.time()}
    return checkpoint.save(payload, path, 3, keep=1)


def test_two_process_evaluation_counts_each_image_once_with_known_accuracy(tmp_path):
    # 9 validation images, 3 per class: 2 ranks cannot split them evenly, so neither rank's share
    # alone holds 9 images or scores exactly 1/3 or 2/3.
    root = make_jpeg_tree(tmp_path / "data", classes=3, train_per_class=2, val_per_class=3)
    bias = torch.tensor([3.0, 0.0, -1.0, 2.0, 1.0, 0.5, -2.0])  # top-5 classes 0, 3, 4, 5, 1: not 2
    ckpt = constant_checkpoint(tmp_path / "ckpt", bias)
    # validation batches of 2: 5 of them, 3 for rank 0 and 2 for rank 1 (with the default batch,
    # max(bs, 128), one batch holds all 9 and rank 0 alone would evaluate them)
    r = train(str(root), *TINY, "model.num_classes=7", "-e", "--resume", str(ckpt), "data.val_batch_size=2",
              f"train.logdir={tmp_path / 'eval'}", nproc=2)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["images"] == 9
    assert result["top1"] == pytest.approx(100 / 3) and result["top5"] == pytest.approx(200 / 3)
    nll = -torch.log_softmax(bias.double(), 0)[:3]
    assert result["loss"] == pytest.approx(nll.mean().item(), rel=1e-6)


def test_teardown_collects_a_dropped_ddp_wrapper_before_the_group_goes(monkeypatch):
    """A DDP wrapper that only the cyclic collector can free (train.py's is, through the frames of the
    torch._dynamo import its constructor starts) and that is freed after destroy_process_group holds the
    group's last reference and destroys it with the GIL held: torch 2.11 deadlocked there when a gloo
    thread still had a tensor to free (the two-process evaluation above hung at exit, now and then)."""
    import gc
    import weakref
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    gc.disable()  # an automatic collection could free the wrapper in time by chance
    try:
        cycle = [torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))]
        cycle.append(cycle)
        wrapper = weakref.ref(cycle[0])
        del cycle
        destroy, alive = torch.distributed.destroy_process_group, []
        monkeypatch.setattr(torch.distributed, "destroy_process_group",
                            lambda *a, **k: (alive.append(wrapper() is not None), destroy(*a, **k)))
        dist.teardown()
    finally:
        gc.enable()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert alive == [False]


def test_resume_matches_uninterrupted_run(data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(str(data), *TINY, f"train.logdir={full}")
    train(str(data), *TINY, f"train.logdir={part}", "train.max_epochs=1")
    assert [p.name for p in sorted((part / "checkpoints").glob("*.pt"))] == ["epoch_0001.pt"]
    train(str(data), *TINY, f"train.logdir={part}", "--resume", "auto")
    a, b = final_weights(full), final_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run exports as one run: one `first`, evals at consecutive steps
    s = scalars(part)
    assert len(s["first"]) == 1
    assert [st for st, _ in s["losses/test_1"]] == [st for st, _ in scalars(full)["losses/test_1"]]


def test_resume_is_exact_for_a_model_drawing_random_numbers(data, tmp_path, one_thread):
    """MobileNetV3's dropout draws from torch's global generator. The checkpoint holds no generator
    state: the loop reseeds from (seed, epoch) at every epoch, so a run resumed at an epoch boundary
    draws the masks of the uninterrupted run."""
    args = [str(data), *TINY, "--arch", "mobilenet_v3_small", "model.init_bn0=false"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert trainer.main([*args, f"train.logdir={full}"]) == 0
    assert trainer.main([*args, f"train.logdir={part}", "train.max_epochs=1"]) == 0
    assert trainer.main([*args, f"train.logdir={part}", "--resume", "auto"]) == 0
    a, b = final_weights(full), final_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/data"], "data dir /nonexistent/data/train does not exist"),
    (["DATA", "optim.momentun=0.9"], "unknown config key 'optim.momentun'"),
    (["DATA", "optim.momentum=fast"], "config key 'optim.momentum': expected float"),
    (["DATA", "--arch", "resnet5O"], "unknown --arch 'resnet5O'"),
])
def test_bad_input_one_line_exit_2(data, tmp_path, args, message):
    args = [str(data) if a == "DATA" else a for a in args]
    r = train(*args, *TINY, f"train.logdir={tmp_path / 'r'}", check=False)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_checkpoint_from_another_arch_is_refused(data, tmp_path):
    logdir = tmp_path / "r18"
    train(str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1")
    ckpt = next((logdir / "checkpoints").glob("*.pt"))
    r = train(str(data), *TINY, "--arch", "resnet34", f"train.logdir={tmp_path / 'r34'}",
              "--resume", str(ckpt), check=False)
    assert r.returncode == 2 and "checkpoint is for arch 'resnet18'" in r.stderr, r.stderr
    r = train(str(data), *TINY, "model.num_classes=5", f"train.logdir={tmp_path / 'five'}", "--resume", str(ckpt),
              check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert ("checkpoint does not fit resnet18 with 5 classes: size mismatch for fc.weight: copying a param with "
            "shape torch.Size([3, 512]) from checkpoint, the shape in current model is torch.Size([5, 512])") in r.stderr


def test_checkpoint_with_other_weight_decay_groups_is_refused_in_one_line(data, tmp_path):
    logdir = tmp_path / "biases_exempt"
    train(str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "optim.no_bias_wd=true")
    ckpt = next((logdir / "checkpoints").glob("*.pt"))
    r = train(str(data), *TINY, f"train.logdir={tmp_path / 'biases_decayed'}", "--resume", str(ckpt), check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "this run's" in r.stderr and "optim.no_bias_wd=False" in r.stderr, r.stderr


def test_unwritable_logdir(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a logdir beneath a regular file cannot be created, even by root
    r = train(str(data), *TINY, f"train.logdir={blocker / 'run'}", check=False)
    assert r.returncode == 2 and "not writable" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_compile_static_gives_each_schedule_shape_its_own_graph(monkeypatch):
    """imagenet18 8x8 trains 9 batch shapes; dynamo's default cap of 8 graphs would run the 9th
    eagerly, and the default dynamic=None would make the graph shape-generic at the 2nd."""
    from training.recipes.imagenet import compile_static

    shapes = parse_schedule((REPO / "configs/imagenet18/8x8.yaml").read_text().split("phases:", 1)[1]
                            ).batch_shapes(1_281_167, 64)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend=counting_backend, **kw))
    conf = torch._dynamo.config
    name = "recompile_limit" if hasattr(conf, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(conf, name, 8)
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=8), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(1), torch.nn.Linear(4, 2))
    model = compile_static(net, len(shapes))
    try:
        for _ in range(2):  # second pass: every shape is served from its graph, nothing recompiles
            for bs, size in shapes:
                model(torch.zeros(bs, 3, size, size))
    finally:
        torch._dynamo.reset()
    assert len(shapes) == 9 and len(graphs) == 9


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_imagenet_loss_is_cross_entropy_with_the_configs_label_smoothing(data, tmp_path, monkeypatch, smoothing):
    """``optim.label_smoothing`` reaches the loss the loop trains with (no shipped config sets it, so
    only this pins it): known answer on two logits rows, against the formula."""
    from training import loop
    seen = {}
    monkeypatch.setattr(loop, "run", lambda state, loaders, hooks, ctx: seen.setdefault("loss", hooks.loss_fn))
    assert trainer.main([str(data), *TINY, f"train.logdir={tmp_path / 'run'}", f"optim.label_smoothing={smoothing}",
                         "train.max_epochs=1"]) == 0
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]), torch.tensor([0, 2])
    logp = torch.log_softmax(logits, 1)
    want = (-(1 - smoothing) * logp[[0, 1], labels] - smoothing * logp.mean(1)).mean()
    torch.testing.assert_close(seen["loss"](logits, labels), want)
