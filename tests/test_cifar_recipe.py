"""The CIFAR recipe: network init, optimizer groups, lookahead, TTA, Muon, statistics, results, e2e."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from training import config as C
from training import loop
from training.data import cifar as cd
from training.models import cifar as cm
from training.phases import parse_schedule
from training.recipes import cifar as R

from procs import run_bounded
from test_bench_cifar import write_cifar10
from test_cifar_data import write_cifar100

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_images(cifar_batches):
    split = cd.load_split(cifar_batches, "cifar10", train=True)
    x = torch.from_numpy(split.images[:2000])
    return cd.normalize(x, cd.CIFAR10_MEAN, cd.CIFAR10_STD, torch.float32, False)


def test_whitening_layer_whitens_patch_covariance(train_images):
    eps = 5e-4
    net = cm.CifarNet(widths=(8, 8, 8))
    net.init_whiten(train_images, eps)
    w = net.whiten.weight.detach()
    assert w.shape == (24, 3, 2, 2) and not net.whiten.weight.requires_grad
    assert torch.equal(w[12:], -w[:12])  # filters and their negatives
    p = cm.patches(train_images, 2).double()
    cov = p.T @ p / len(p)
    eig = torch.linalg.eigvalsh(cov).flip(0)
    wf = w[:12].reshape(12, -1).double()
    white = wf @ cov @ wf.T  # second moment of the whitening outputs
    assert torch.allclose(white, torch.diag(eig / (eig + eps)), atol=2e-3)
    assert white.diagonal().min() > 0.4  # eps caps the gain of the weakest direction (eig ~ eps)
    # with a negligible eps every direction comes out at unit variance and uncorrelated: identity,
    # measured through the conv itself on the same images
    net.init_whiten(train_images, 1e-6)
    out = torch.nn.functional.conv2d(train_images, net.whiten.weight[:12])
    flat = out.permute(1, 0, 2, 3).reshape(12, -1).double()
    assert torch.allclose(flat @ flat.T / flat.shape[1], torch.eye(12, dtype=torch.float64), atol=0.01)


def test_dirac_init_is_identity_and_bn_scale_frozen():
    torch.manual_seed(0)
    net = cm.CifarNet(widths=(16, 32, 32))
    g = net.layers[2]  # 16 -> 32
    x = torch.randn(4, 16, 8, 8)
    assert torch.allclose(g.conv1(x)[:, :16], x, atol=1e-6)  # first in_channels filters: identity
    assert not torch.allclose(g.conv1(x)[:, 16:], torch.zeros(4, 16, 8, 8))  # the rest: random
    y = torch.randn(4, 32, 8, 8)
    assert torch.allclose(g.conv2(y), y, atol=1e-6)  # square conv: exactly the identity
    assert not g.norm1.weight.requires_grad and g.norm1.bias.requires_grad
    assert g.norm1.momentum == pytest.approx(0.4) and g.norm1.eps == 1e-12
    no_dirac = cm.CifarNet(widths=(16, 32, 32), dirac=False, bn_frozen_weight=False)
    assert not torch.allclose(no_dirac.layers[2].conv2(y), y, atol=1e-3)
    assert no_dirac.layers[2].norm1.weight.requires_grad
    # reset keeps the parameter objects (a compiled wrapper stays valid) and re-draws them
    before = [p for p in net.parameters()]
    w = net.head.weight.clone()
    net.whiten.bias.requires_grad_(False)  # as frozen by the previous run
    net.reset()
    assert net.whiten.bias.requires_grad
    assert all(a is b for a, b in zip(before, net.parameters()))
    assert not torch.equal(w, net.head.weight)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_unit_std_head_divides_the_logits_by_its_width():
    """airbench94_muon's head: unit-std weights, logits / the head's width, so overriding cifar.widths
    keeps the recipe's logit scale (head_scale multiplies on top); without it head_scale alone."""
    x = torch.randn(3, 3, 32, 32)
    for widths, head_scale in (((8, 16, 24), 1.0), ((8, 16, 40), 0.5)):
        torch.manual_seed(0)
        net = cm.CifarNet(widths=widths, head_unit_std=True, head_scale=head_scale).eval()
        assert net.head.weight.std().item() == pytest.approx(1.0)
        features = net.layers(net.whiten(x)).flatten(1)
        torch.testing.assert_close(net(x), net.head(features) * head_scale / widths[2])
    net = cm.CifarNet(widths=(8, 16, 24), head_scale=1 / 9).eval()
    torch.testing.assert_close(net(x), net.head(net.layers(net.whiten(x)).flatten(1)) / 9)


def test_param_groups_bias_lr_and_decoupled_weight_decay():
    cfg = C.CifarConfig()
    net = cm.CifarNet(widths=(8, 16, 16))
    groups = R.param_groups(net, cfg, batch_size=1024)
    by = {g["name"]: g for g in groups}
    assert groups[0]["name"] == "filters" and groups[0]["lr_scale"] > 0
    ks = 1024 * (1 + 1 / (1 - 0.85))
    assert by["filters"]["lr_scale"] == pytest.approx(11.5 / ks)
    assert by["norm"]["lr_scale"] == pytest.approx(64 * 11.5 / ks)
    assert by["whiten_bias"]["lr_scale"] == by["norm"]["lr_scale"]  # cifar.whiten_bias_lr_scale 64 (ours)
    airbench = {g["name"]: g for g in R.param_groups(net, C.CifarConfig(whiten_bias_lr_scale=1.0), 1024)}
    assert airbench["whiten_bias"]["lr_scale"] == pytest.approx(by["filters"]["lr_scale"])  # its plain lr
    # the decay per step (lr x weight_decay) is the same in every group: 0.0153 * 1024 / ks
    for g in groups:
        assert g["lr_scale"] * g["weight_decay"] == pytest.approx(0.0153 * 1024 / ks)
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len([p for p in net.parameters() if p.requires_grad])
    muon = R.param_groups(net, C.CifarConfig(optimizer="muon"), 1024)
    assert muon[0]["muon"] and muon[0]["lr_scale"] == 0.24 and len(muon[0]["params"]) == 6


def _run_lrs(files: list[str]) -> list[float]:
    """The lr multiplier of every step of a run of ``files`` (50,000 images), as the loop sets it."""
    cfg = C.build([str(REPO / "configs" / f) for f in files], [])
    sched = R.check_config(cfg)
    lrs = []
    for e in range(sched.num_epochs):
        full = sched.batches_per_epoch(e, 50_000, 1, True)
        lrs += [sched.lr(e, i, full) for i in range(sched.iters_per_epoch(e, 50_000, 1, True))]
    return lrs


def test_the_lr_of_each_step_is_airbenchs():
    """airbench sets step s's lr to f(s) (airbench94_muon: 1 - s / total; airbench94: LambdaLR's
    f(s)), so its first step trains at the ramp's start and its last step of a ramp to 0 still
    trains; imagenet18's arithmetic (f(s + 1)) gave the last Muon step lr 0, a step that did nothing."""
    muon = _run_lrs(["cifar10.yaml", "cifar10_muon.yaml"])
    assert len(muon) == 200 and muon == pytest.approx([1 - s / 200 for s in range(200)], abs=1e-12)
    sgd = _run_lrs(["cifar10.yaml"])
    total = 476  # airbench94: ceil(48 steps x 9.9 epochs), warm-up int(0.23 x 476) = 109 steps
    ab = [0.2 + 0.8 * s / 109 if s < 109 else 1.0 - 0.93 * (s - 109) / (total - 109) for s in range(total)]
    assert len(sgd) == total  # the last 0.9 epoch: ceil(0.9 x 48) steps of the 48 the loader yields, not of 49
    assert sgd[0] == pytest.approx(0.2) and max(abs(x - y) for x, y in zip(sgd, ab)) < 0.003
    assert _run_lrs(["cifar10_cpu.yaml"])[-1] > 0  # its ramp to 0 too
    # the imagenet recipe keeps imagenet18's arithmetic
    from training.recipes import imagenet
    assert not imagenet.check_config(C.build([str(REPO / "configs" / "tiny_cpu.yaml")], [])).step_start


def test_step_hooks_lookahead_and_whiten_bias_freeze():
    sched = parse_schedule([{"ep": 0, "sz": 32, "bs": 10}, {"ep": [0, 2], "lr": [1.0, 0.0]}])
    cfg = C.CifarConfig(lookahead_start_epoch=0, lookahead_every=2, whiten_bias_epochs=1)
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD([{"params": [net.weight], "name": "filters"},
                           {"params": [net.bias], "name": "whiten_bias", "lr_scale": 5.0}], lr=0.1)
    hooks = R.StepHooks(net, opt, sched, num_images=45, drop_last=True, cfg=cfg)
    assert hooks.steps == [4, 4] and hooks.total == 8
    state = type("S", (), {"epoch": 0})()
    w0 = net.weight.detach().clone()
    for i in range(4):
        with torch.no_grad():
            net.weight.add_(1.0)
        hooks(state, i)
        if i == 1:  # first lookahead step: only snapshots
            assert torch.allclose(hooks.ema[0], w0 + 2)
    assert opt.param_groups[1]["lr_scale"] == 0.0  # frozen after 1 epoch
    assert not net.bias.requires_grad  # and no gradient: backward stops earlier
    # at the end of the epoch the weights are the EMA, which lags the raw weights
    assert torch.equal(net.weight, hooks.ema[0]) and (net.weight < w0 + 4).all()


def test_a_whitening_bias_of_zero_epochs_never_trains():
    """cifar.whiten_bias_epochs=0 (configs/cifar10_cpu.yaml): frozen before the first step, so no
    step computes the 31 x 31 px input gradient the bias needs (it used to train for one step)."""
    sched = parse_schedule([{"ep": 0, "sz": 32, "bs": 10}, {"ep": [0, 1], "lr": [1.0, 0.0]}])
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD([{"params": [net.weight], "name": "filters"},
                           {"params": [net.bias], "name": "whiten_bias", "lr_scale": 5.0}], lr=0.1)
    R.StepHooks(net, opt, sched, num_images=45, drop_last=True, cfg=C.CifarConfig(whiten_bias_epochs=0))
    assert opt.param_groups[1]["lr_scale"] == 0.0 and not net.bias.requires_grad
    net2 = nn.Linear(3, 2)
    R.StepHooks(net2, torch.optim.SGD([{"params": [net2.bias], "name": "whiten_bias"}], lr=0.1), sched,
                num_images=45, drop_last=True, cfg=C.CifarConfig(whiten_bias_epochs=0.1))
    assert net2.bias.requires_grad  # a fraction of an epoch still trains it


def test_lookahead_sets_the_weights_to_the_ema_only_at_the_runs_end_as_airbench():
    """cifar.lookahead_epoch_end=false: the steps since the last EMA update are kept at the end of
    every epoch but the last (airbench94); with it on they are dropped there too."""
    sched = parse_schedule([{"ep": 0, "sz": 32, "bs": 10}, {"ep": [0, 2], "lr": [1.0, 0.0]}])
    for epoch_end in (False, True):
        cfg = C.CifarConfig(lookahead_start_epoch=0, lookahead_every=3, lookahead_epoch_end=epoch_end)
        net = nn.Linear(3, 2)
        opt = torch.optim.SGD([{"params": [net.weight], "name": "filters"}], lr=0.1)
        hooks = R.StepHooks(net, opt, sched, num_images=45, drop_last=True, cfg=cfg)
        for epoch in (0, 1):
            state = type("S", (), {"epoch": epoch})()
            for i in range(4):  # the EMA updates after steps 3 and 6 of 8
                with torch.no_grad():
                    net.weight.add_(1.0)
                hooks(state, i)
            at_ema = torch.equal(net.weight, hooks.ema[0])
            assert at_ema == (epoch_end or epoch == 1), (epoch_end, epoch)  # the run's last step: always


def test_tta_views_and_weights():
    # a "model" reading one pixel: the views' logits are that pixel of each view
    model = lambda x: x[:, 0, 5, 7:8].float() * torch.ones(1, 2)  # noqa: E731
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    tta0, plain = R.tta_logits(model, x, 0)
    assert torch.equal(tta0, plain)
    tta1, _ = R.tta_logits(model, x, 1)
    assert torch.allclose(tta1[:, 0], 0.5 * x[:, 0, 5, 7] + 0.5 * x[:, 0, 5, 24])
    tta2, _ = R.tta_logits(model, x, 2)
    up_left = 0.5 * x[:, 0, 4, 6] + 0.5 * x[:, 0, 4, 25]  # padded[0:32] shifts content by +1 px
    down_right = 0.5 * x[:, 0, 6, 8] + 0.5 * x[:, 0, 6, 23]
    assert torch.allclose(tta2[:, 0], 0.5 * tta1[:, 0] + 0.25 * up_left + 0.25 * down_right)


@pytest.mark.parametrize("level", [1, 2])
def test_tta_holds_when_each_call_overwrites_the_last_output(level):
    """CUDA graphs (cifar.compile_mode reduce-overhead) return each call's logits in one static
    buffer that the next call overwrites: the plain logits must be kept before the other views run."""
    net = lambda x: x[:, 0, 5, 7:8].float() * torch.ones(1, 2)  # noqa: E731
    static = torch.empty(2, 2)
    graphed = lambda x: static.copy_(net(x))  # noqa: E731
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    for got, want in zip(R.tta_logits(graphed, x, level), R.tta_logits(net, x, level)):
        assert torch.equal(got, want)


def test_selective_tta_views_only_the_least_confident_in_whole_batches():
    """cifar.tta_fraction: the TTA logits for the ceil(fraction * N) images whose plain prediction is
    least confident, the plain logits for the others; the model only ever sees full batches."""
    torch.manual_seed(0)
    weight = torch.randn(3 * 32 * 32, 10)
    seen = []

    def model(x):
        seen.append(len(x))
        return x.flatten(1) @ weight / 40

    x = torch.randn(11, 3, 32, 32)
    plain = model(x)
    full, _ = R.tta_logits(model, x, 2)
    confidence = plain.softmax(1).amax(1)
    for fraction, k in ((1.0, 11), (0.5, 6), (0.1, 2), (0.0, 0)):
        seen.clear()
        got = R.selective_tta_logits(model, x, plain, 2, fraction, batch_size=4)
        chosen = set(confidence.argsort()[:k].tolist())
        for i in range(11):
            want = full[i] if i in chosen else plain[i]
            torch.testing.assert_close(got[i], want)
        assert set(seen) <= {4} and len(seen) == 5 * math.ceil(k / 4)  # 5 more views per batch of 4
    assert torch.equal(R.selective_tta_logits(model, x, plain, 0, 0.5, batch_size=4), plain)
    x100 = torch.randn(100, 3, 32, 32)
    seen.clear()
    R.selective_tta_logits(model, x100, model(x100), 2, 0.07, batch_size=7)  # 0.07 * 100 = 7.000000000000001
    assert seen == [100] + [7] * 5  # 7 images: one batch, not a second padded one


def test_evaluate_scores_the_selective_tta_over_the_whole_test_set():
    torch.manual_seed(1)

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3 * 32 * 32, 10))

        def forward(self, x):
            return x.flatten(1) @ self.w / 40

    net, x, y = Linear(), torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    loader = [(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8)]
    shapes = []
    net.register_forward_pre_hook(lambda m, args: shapes.append(len(args[0])))
    with torch.no_grad():
        plain = net(x)
        for fraction in (1.0, 0.5):
            want = R.selective_tta_logits(net, x, plain, 2, fraction, batch_size=4)
            extra = {}
            shapes.clear()
            got = R.make_evaluate(net, net, torch.device("cpu"), "fp32", 2, extra, fraction=fraction)(net, loader)
            assert set(shapes) == {4}  # the loader's batch, the one shape a compiled model was built for
            assert got.top1 == pytest.approx(100 * (want.argmax(1) == y).float().mean().item())
            assert got.loss == pytest.approx(nn.functional.cross_entropy(want, y).item(), rel=1e-5)
            assert extra["accuracy_no_tta"] == pytest.approx(100 * (plain.argmax(1) == y).float().mean().item())
            assert got.count == 12


def test_plain_accuracy_breaks_ties_as_the_tta_accuracy():
    """At tta_level 0 the two accuracies are one number, even where half-precision logits tie
    (argmax takes the first of tied classes, topk another)."""
    class Tied(nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 10)
            logits[:, [3, 7]] = 1.0
            return logits
    model = Tied()
    extra: dict = {}
    evaluate = R.make_evaluate(model, model, torch.device("cpu"), "fp32", 0, extra)
    labels = torch.tensor([3, 7, 7, 1])
    result = evaluate(model, [(torch.zeros(4, 3, 32, 32), labels)])
    assert result.top1 == extra["accuracy_no_tta"]
    assert result.top1 in (25.0, 50.0) and result.top5 == 75.0


def test_muon_orthogonalizes_and_its_sgd_groups_match_torch_sgd():
    from training.muon import Muon, orthogonalize
    torch.manual_seed(0)
    g = torch.randn(32, 72)
    s = torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert s.min() > 0.5 and s.max() < 1.5
    p1 = nn.Parameter(torch.randn(5, 4))
    p2 = nn.Parameter(p1.detach().clone())
    ours = Muon([{"params": [p1], "lr": 0.1, "weight_decay": 0.01}], momentum=0.85, nesterov=True)
    ref = torch.optim.SGD([p2], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for step in range(3):
        grad = torch.randn(5, 4)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.allclose(p1, p2, atol=1e-6)
    w = nn.Parameter(torch.randn(8, 4, 3, 3))
    opt = Muon([{"params": [w], "lr": 0.1, "muon": True, "momentum": 0.6}])
    w.grad = torch.randn_like(w)
    opt.step()
    assert w.norm().item() == pytest.approx(math.sqrt(8), rel=0.1)  # normalised, then a ~unit step


def test_statistics_against_hand_computed():
    s = R.summarize([94.1, 93.9, 94.3, 93.7])
    assert s["n"] == 4 and s["mean"] == pytest.approx(94.0) and s["min"] == 93.7
    std = math.sqrt((0.01 + 0.01 + 0.09 + 0.09) / 3)  # 0.258199
    assert s["std"] == pytest.approx(std)
    half = 3.182 * std / 2  # t_{0.975, 3} = 3.182
    assert s["ci95"] == pytest.approx([94.0 - half, 94.0 + half])
    assert s["share_ge_threshold"] == 0.5
    one = R.summarize([93.5])
    assert one["std"] == 0.0 and one["ci95"] is None and one["share_ge_threshold"] == 0.0
    # t quantiles: table values and the expansion beyond df 30
    for df, t in ((1, 12.706), (9, 2.262), (24, 2.064), (40, 2.021), (60, 2.000), (120, 1.980), (10**6, 1.960)):
        assert R.t975(df) == pytest.approx(t, abs=1.5e-3)


def test_results_json_schema():
    cfg = C.build([str(REPO / "configs" / "cifar10.yaml")], [])
    runs = [R.RunResult(0, 94.2, 93.6, 3.5), R.RunResult(1, 93.8, 93.1, 3.3), R.RunResult(2, 94.0, 93.4, 3.4)]
    out = json.loads(json.dumps(R.results_json(cfg, runs, {"warmup_seconds": 20.0})))
    assert [set(r) for r in out["runs"]] == [{"seed", "accuracy", "accuracy_no_tta", "train_seconds"}] * 3
    assert out["mean_accuracy"] == pytest.approx(94.0) and out["std_accuracy"] == pytest.approx(0.2)
    assert out["median_train_seconds"] == 3.4 and out["share_ge_94"] == pytest.approx(2 / 3)
    assert out["config"]["recipe"] == "cifar" and out["config"]["cifar"]["lr"] == 11.5
    assert out["warmup_seconds"] == 20.0 and len(out["ci95_mean_accuracy"]) == 2
    assert any(">= 94%: 2/3 (67%)" in line for line in R.format_summary(runs))


def test_the_results_file_holds_each_finished_run_when_the_job_is_cut_off(tmp_path):
    """`--runs 3 --results F` stopped in its second run (Ctrl-C, a time limit, a crash): F is whole
    and holds the first run, with the 3 asked in its config; nothing half-written is left beside it."""
    results = tmp_path / "out" / "r.json"
    cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")],
                  [(["cifar", "runs"], 3), (["cifar", "results"], str(results)), (["train", "logdir"], str(tmp_path / "run"))])
    done = [R.RunResult(0, 91.5, 90.25, 3.5)]

    class Cut:  # a trainer whose second run is interrupted
        train = val = type("Data", (), {"num_images": 10})
        threads, data_seconds = 1, 0.5

        def run(self, seed: int, logdir: str | None) -> R.RunResult:
            if seed - cfg.train.seed >= len(done):
                raise KeyboardInterrupt
            return done[seed - cfg.train.seed]

    with pytest.raises(KeyboardInterrupt):
        R._runs(cfg, Cut(), torch.device("cpu"))
    out = json.loads(results.read_text())
    assert out["runs"] == [{"seed": 0, "accuracy": 91.5, "accuracy_no_tta": 90.25, "train_seconds": 3.5}]
    assert out["mean_accuracy"] == 91.5 and out["config"]["cifar"]["runs"] == 3
    assert sorted(p.name for p in results.parent.iterdir()) == ["r.json"]


def test_configs_parse_and_reject_unused_sections():
    for name in ("cifar10.yaml", "cifar10_cpu.yaml", "cifar10_ci.yaml", "cifar10_muon.yaml"):
        cfg = C.build([str(REPO / "configs" / name)], [])
        R.check_config(cfg)
    cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")], [(["optim", "label_smoothing"], 0.1)])
    with pytest.raises(C.ConfigError, match="optim.label_smoothing is not used by the cifar recipe"):
        R.check_config(cfg)
    for sz, kernel in ((33, 2), (8, 2), (9, 3)):  # 2x2 whitening: 9 px -> 8 -> 4 -> 2 -> 1 after the pools
        cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")],
                      [(["phases"], [{"ep": 0, "sz": sz, "bs": 64}, {"ep": [0, 1], "lr": 1.0}]),
                       (["cifar", "whiten_kernel"], kernel)])
        with pytest.raises(C.ConfigError, match=f"trains at sz {7 + kernel}..32 px .* got sz {sz} at epoch 0"):
            R.check_config(cfg)
    for sz in (9, 32):
        R.check_config(C.build([str(REPO / "configs" / "cifar10_ci.yaml")],
                               [(["phases"], [{"ep": 0, "sz": sz, "bs": 64}, {"ep": [0, 1], "lr": 1.0}])]))
    for key, value in (("trndir", "-sz/160"), ("min_scale", 0.35), ("rect_val", True)):  # imagenet's alone
        cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")],
                      [(["phases"], [{"ep": 0, "sz": 32, "bs": 64, key: value}, {"ep": [0, 1], "lr": 1.0}])])
        with pytest.raises(C.ConfigError, match=f"phases: {key} \\(at epoch 0\\) is not used by the cifar recipe"):
            R.check_config(cfg)
    for key, value in (("whiten_kernel", 9), ("widths", [8, 16]), ("act", "tanh")):  # the model's own checks
        with pytest.raises(C.ConfigError, match=f"cifar.{key}"):
            R.check_config(C.build([str(REPO / "configs" / "cifar10_ci.yaml")], [(["cifar", key], value)]))
    with pytest.raises(C.ConfigError, match="cifar.flip"):
        C.build([], [(["cifar", "flip"], "sometimes")])


@pytest.mark.parametrize("epoch_augment", [False, True])
def test_each_data_phase_trains_at_its_size_and_evaluation_at_32(tmp_path, epoch_augment):
    root = write_cifar10(tmp_path / "data", n_train=200, n_test=50)
    cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")],
                  [(["phases"], [{"ep": 0, "sz": 12, "bs": 50}, {"ep": 1, "sz": 32, "bs": 100},
                                 {"ep": [0, 3], "lr": [1.0, 0.0]}]), (["cifar", "eval_batch_size"], 50),
                   (["train", "print_freq"], 1000), (["cifar", "epoch_augment"], epoch_augment)])
    trainer = R.Trainer(cfg, R.check_config(cfg), torch.device("cpu"), str(root))
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args: seen.append((m.training, tuple(args[0].shape))))
    trainer.run(seed=0, logdir=None)
    train = [shape for training, shape in seen if training]
    assert train == [(50, 3, 12, 12)] * 4 + [(100, 3, 32, 32)] * 4  # epoch 0 at 12 px, epochs 1-2 at 32
    assert {shape[1:] for training, shape in seen if not training} == {(3, 32, 32)}


def test_between_runs_a_trainer_holds_no_augmented_copy_and_its_runs_repeat(tmp_path):
    """The padded, normalised copy of the training images (1.5 GB in fp32 for CIFAR-10) lives only
    while a run does: bench cifar keeps every variant's trainer built, and 12 variants held 12 copies
    (OOM on a 24 GB machine). The next run makes it again: the same seed trains to the same weights."""
    root = write_cifar10(tmp_path / "data", n_train=200, n_test=50)
    cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")],
                  [(["phases"], [{"ep": 0, "sz": 32, "bs": 50}, {"ep": [0, 2], "lr": [1.0, 0.0]}]),
                   (["cifar", "eval_batch_size"], 50), (["train", "print_freq"], 1000)])
    trainer = R.Trainer(cfg, R.check_config(cfg), torch.device("cpu"), str(root))
    first = trainer.run(seed=3, logdir=None)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.train.windows is None and trainer.train.epoch_images is None
    again = trainer.run(seed=3, logdir=None)
    assert (again.accuracy, again.accuracy_no_tta) == (first.accuracy, first.accuracy_no_tta)
    assert all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_images_are_kept_in_the_dtype_the_first_conv_computes_in(tmp_path, precision, dtype):
    """On the CPU too: bf16 autocast would cast fp32 images to bf16 at the first conv anyway."""
    root = write_cifar10(tmp_path / "data")
    cfg = C.build([str(REPO / "configs" / "cifar10_ci.yaml")], [(["train", "precision"], precision)])
    trainer = R.Trainer(cfg, R.check_config(cfg), torch.device("cpu"), str(root))
    assert trainer.train.windows.dtype == dtype and trainer.val.images.dtype == dtype


def train_py(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return run_bounded([sys.executable, str(REPO / "training" / "train.py"), *args], cwd=REPO, timeout=timeout)


def test_missing_data_exits_2_with_one_line(tmp_path):
    r = train_py("--config", str(REPO / "configs" / "cifar10_ci.yaml"), "--data", str(tmp_path / "none"),
                 "cifar.download=false", f"train.logdir={tmp_path / 'run'}", timeout=120)
    assert r.returncode == 2
    # The hint that follows depends on whether ../shared sits beside the checkout (test_cifar_data).
    assert r.stderr.startswith(f"error: no cifar-10-batches-py in {tmp_path / 'none'}: ")
    assert r.stderr.strip().count("\n") == 0 and r.stderr.rstrip().endswith("(or pass --data DIR)")


def test_a_non_finite_loss_is_one_line_exit_1(tmp_path):
    root = write_cifar100(tmp_path / "data", n_train=300, n_test=100)
    r = train_py("--config", str(REPO / "configs" / "cifar10_ci.yaml"), "--data", str(root), "--dataset", "cifar100",
                 f"train.logdir={tmp_path / 'run'}", "cifar.eval_batch_size=50", "cifar.lr=1.0e+30",
                 "--phases", "[{'ep': 0, 'sz': 32, 'bs': 100}, {'ep': [0, 1], 'lr': 1.0}]", timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("error: non-finite loss at epoch 0 step ") and r.stderr.count("\n") == 1, r.stderr


def test_cifar100_end_to_end_on_generated_data(tmp_path):
    root = write_cifar100(tmp_path / "data", n_train=250, n_test=100)
    results = tmp_path / "r.json"
    r = train_py("--config", str(REPO / "configs" / "cifar10_ci.yaml"), "--data", str(root), "--dataset", "cifar100",
                 "--results", str(results), f"train.logdir={tmp_path / 'run'}", "cifar.eval_batch_size=50",
                 "--phases", "[{'ep': 0, 'sz': 32, 'bs': 100}, {'ep': [0, 2], 'lr': [1.0, 0.0]}]",
                 "train.precision=auto", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(results.read_text())
    # auto: bf16 autocast where this CPU has native bf16, else fp32; the results name what ran
    assert out["config"]["train"]["precision"] == ("bf16" if loop.native_bf16(torch.device("cpu")) else "fp32")
    assert "warning" not in r.stderr
    assert out["config"]["cifar"]["dataset"] == "cifar100" and len(out["runs"]) == 1
    assert 0 <= out["runs"][0]["accuracy"] <= 100
    # 250 images in batches of 100, the partial one dropped: 2 steps an epoch, each epoch's last shown
    steps = re.findall(r"epoch (\d) \[(\d+)/(\d+)\]", r.stderr)
    assert ("0", "2", "2") in steps and ("1", "2", "2") in steps and all(n == "2" for _, _, n in steps), steps


def test_ci_config_end_to_end_on_real_cifar10(cifar_batches, tmp_path):
    """The short CI run: real data, the same code path as the GPU recipe, a loose accuracy floor."""
    results = tmp_path / "results.json"
    r = train_py("--config", str(REPO / "configs" / "cifar10_ci.yaml"), "--data", str(cifar_batches),
                 "--results", str(results), f"train.logdir={tmp_path / 'run'}", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(results.read_text())
    run = out["runs"][0]
    assert run["accuracy"] > 40, r.stdout
    assert run["accuracy_no_tta"] > 35 and run["train_seconds"] > 0
    assert out["mean_accuracy"] == run["accuracy"] and out["config"]["cifar"]["widths"]
    assert "run 0 seed 0: accuracy" in r.stdout and "data load to device" in r.stdout
    assert "warning" not in r.stderr  # fp32 on the CPU: nothing to warn about
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert len(events) >= 2  # the run's own events and the summary


def test_reset_zeroes_the_whitening_bias():
    """airbench starts the whitening conv's bias at 0 (the whitening is of the data, not shifted by a
    random offset), at construction and at every ``reset`` between runs."""
    torch.manual_seed(0)
    net = cm.CifarNet(widths=(8, 8, 8))
    assert torch.equal(net.whiten.bias, torch.zeros(24))
    with torch.no_grad():
        net.whiten.bias.fill_(1.0)
    net.reset()
    assert torch.equal(net.whiten.bias, torch.zeros(24))


def test_the_loss_is_the_summed_label_smoothed_cross_entropy():
    """loss_fn(eps): sum over the batch of -(1 - eps) log p_y - eps / C * sum_c log p_c."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    logp = logits.log_softmax(1)
    for eps in (0.0, 0.2):
        want = sum(-(1 - eps) * logp[i, labels[i]] - eps / 3 * logp[i].sum() for i in range(2))
        torch.testing.assert_close(R.loss_fn(eps)(logits, labels), want)


def test_tta_shifted_views_reflect_at_the_border():
    """The shifted views pad by reflection (airbench's F.pad mode='reflect'): a model reading the
    corner pixel sees x[1, 1] (and x[1, 30] mirrored) in both shifted views, not zero padding."""
    model = lambda x: x[:, 0, 0, 0:1].float() * torch.ones(1, 2)  # noqa: E731
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) + 1
    tta1, _ = R.tta_logits(model, x, 1)
    tta2, _ = R.tta_logits(model, x, 2)
    shifted = 0.5 * x[:, 0, 1, 1] + 0.5 * x[:, 0, 1, 30]
    assert torch.allclose(tta2[:, 0], 0.5 * tta1[:, 0] + 0.5 * shifted)


def test_lookahead_ema_follows_airbenchs_schedule():
    """From lookahead_start_epoch, every lookahead_every steps: decay = lookahead_decay ** every x
    (step / total) ** pow, ema += (1 - decay) (w - ema), then w = ema -- for every float tensor of the
    state dict, BN running statistics included (airbench94's LookaheadState over net.state_dict())."""
    sched = parse_schedule([{"ep": 0, "sz": 32, "bs": 10}, {"ep": [0, 3], "lr": [1.0, 0.0]}])
    cfg = C.CifarConfig(lookahead_start_epoch=1, lookahead_every=2, lookahead_decay=0.9, lookahead_pow=2.0,
                        lookahead_epoch_end=False)
    net = nn.BatchNorm1d(1)
    opt = torch.optim.SGD([{"params": list(net.parameters()), "name": "filters"}], lr=0.1)
    hooks = R.StepHooks(net, opt, sched, num_images=45, drop_last=True, cfg=cfg)
    assert hooks.total == 12
    w = ema = None
    count = 0
    for epoch in range(3):
        state = type("S", (), {"epoch": epoch})()
        for i in range(4):
            count += 1
            with torch.no_grad():
                net.weight.add_(1.0)
                net.running_mean.add_(1.0)
            w = net.weight.item()
            hooks(state, i)
            if epoch >= 1 and count % 2 == 0:
                if ema is None:
                    ema = w
                else:
                    decay = 0.9 ** 2 * (count / 12) ** 2
                    ema = ema + (1 - decay) * (w - ema)
                w = ema
            if epoch == 0:
                assert hooks.ema is None  # before lookahead_start_epoch: no EMA at all
            assert net.weight.item() == pytest.approx(w, rel=1e-6), (epoch, i)
            assert net.running_mean.item() == pytest.approx(w - 1, rel=1e-6), (epoch, i)  # same EMA, 1 lower


def test_muon_steps_the_orthogonalised_nesterov_momentum():
    """A Muon group's update is orthogonalize(g + m * buf) with buf = m * buf + g (Nesterov, buffer
    starting at zero): checked over steps whose gradients differ in direction."""
    from training.muon import Muon, orthogonalize
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(4, 2, 3, 3, generator=gen))
    opt = Muon([{"params": [w], "lr": 0.1, "muon": True, "momentum": 0.6, "normalize": False}])
    want, buf = w.detach().clone(), torch.zeros(4, 18)
    for _ in range(3):
        g = torch.randn(4, 2, 3, 3, generator=gen)
        w.grad = g.clone()
        opt.step()
        buf = 0.6 * buf + g.reshape(4, -1)
        want -= 0.1 * orthogonalize(g.reshape(4, -1) + 0.6 * buf).view(4, 2, 3, 3)
        torch.testing.assert_close(w.detach(), want)
    groups = R.make_optimizer(cm.CifarNet(widths=(8, 16, 16)), C.CifarConfig(optimizer="muon"), 100,
                              torch.device("cpu")).param_groups
    assert all(g["nesterov"] for g in groups)  # the recipe's Muon: Nesterov in every group


def test_newton_schulz_applies_the_muon_quintic_to_each_singular_value():
    """orthogonalize scales G to Frobenius norm 1, then each step maps every singular value s to
    3.4445 s - 4.7750 s^3 + 2.0315 s^5 (the Muon write-up's coefficients), keeping the singular vectors."""
    from training.muon import orthogonalize
    p = lambda s: 3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5  # noqa: E731
    g = torch.diag(torch.tensor([3.0, 4.0]))  # Frobenius norm 5: singular values 0.6, 0.8
    for steps in (1, 2):
        want = torch.tensor([0.6, 0.8])
        for _ in range(steps):
            want = p(want)
        torch.testing.assert_close(orthogonalize(g, steps=steps), torch.diag(want), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(orthogonalize(torch.tensor([[3.0, 4.0]]), steps=1),
                               torch.tensor([[0.6, 0.8]]) * p(1.0), atol=1e-5, rtol=1e-5)


def test_the_cpu_timer_measures_the_elapsed_seconds():
    """Off the GPU the timed region is wall-clock seconds from start() to stop() (perf_counter)."""
    import time
    timer = R.Timer(torch.device("cpu"))
    timer.start()
    time.sleep(0.05)
    seconds = timer.stop()
    assert 0.05 <= seconds < 5 and timer.seconds == seconds


def test_results_json_means_each_accuracy_separately():
    """mean_accuracy is the TTA accuracies' mean, mean_accuracy_no_tta the plain ones', and
    median_train_seconds the median (one slow run does not move it, as it would a mean)."""
    cfg = C.build([str(REPO / "configs" / "cifar10.yaml")], [])
    runs = [R.RunResult(0, 94.2, 93.6, 3.0), R.RunResult(1, 93.8, 93.0, 3.1), R.RunResult(2, 94.0, 93.3, 6.0)]
    out = R.results_json(cfg, runs, {})
    assert out["mean_accuracy"] == pytest.approx(94.0) and out["mean_accuracy_no_tta"] == pytest.approx(93.3)
    assert out["median_train_seconds"] == 3.1
