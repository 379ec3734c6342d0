"""The CIFAR recipe's speed options (issue 12) against the default path: cifar.half_weights,
cifar.muon_batched, cifar.epoch_augment (cifar.pool is in test_cifar_pool.py)."""
from __future__ import annotations

import math

import pytest
import torch

from training import config as C
from training.models import cifar as cm
from training.recipes import cifar as R

from conftest import REPO
from test_cifar_data import write_cifar100

REPO_CI = "configs/cifar10_ci.yaml"
TINY = [(["train", "short_epoch"], True), (["train", "short_epoch_steps"], 2), (["cifar", "dataset"], "cifar100"),
        (["cifar", "eval_batch_size"], 20), (["phases"], [{"ep": 0, "sz": 32, "bs": 20}, {"ep": [0, 2], "lr": [1.0, 0.1]}])]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_cifar100(tmp_path_factory.mktemp("cifar"), n_train=100, n_test=40))


def trainer(data: str, *overrides: tuple[list[str], object]) -> R.Trainer:
    cfg = C.build([str(REPO / REPO_CI)], TINY + list(overrides))
    return R.Trainer(cfg, R.check_config(cfg), torch.device("cpu"), data)


def test_half_weights_net_in_half_bn_in_fp32_no_autocast(data):
    # lookahead every step: its EMA lerps fp16/bf16 weights and fp32 BN statistics alike
    t = trainer(data, (["cifar", "half_weights"], True), (["train", "precision"], "bf16"),
                (["cifar", "lookahead_every"], 1))
    net = t.model
    group = net.layers[1]
    assert net.whiten.weight.dtype == group.conv1.weight.dtype == net.head.weight.dtype == torch.bfloat16
    assert group.norm1.bias.dtype == group.norm1.running_var.dtype == torch.float32
    assert t.precision == "fp32"  # no autocast around the step
    images, _ = next(iter(t.train))
    assert images.dtype == torch.bfloat16 and next(iter(t.val))[0].dtype == torch.bfloat16
    res = t.run(0, None)
    assert math.isfinite(res.accuracy) and group.conv1.weight.dtype == torch.bfloat16
    assert group.norm1.running_mean.dtype == torch.float32 and group.norm1.running_mean.abs().sum() > 0
    with pytest.raises(C.ConfigError, match="half_weights needs train.precision"):
        trainer(data, (["cifar", "half_weights"], True))


def test_batched_newton_schulz_equals_per_layer():
    from training.muon import Muon, orthogonalize, orthogonalize_batch
    gen = torch.Generator().manual_seed(0)
    gs = [torch.randn(s, generator=gen) for s in ((4, 27), (8, 72), (8, 72), (30, 6))]  # the last one tall
    for got, g in zip(orthogonalize_batch(gs), gs):
        assert got.shape == g.shape and torch.allclose(got, orthogonalize(g), atol=1e-5)
    # and inside the optimizer, over a few steps of conv filter banks
    shapes = ((8, 3, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3))
    params = {b: [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes] for b in (False, True)}
    for p, q in zip(*params.values()):
        q.data.copy_(p.data)
    opts = {b: Muon([{"params": params[b], "muon": True, "batched": b}], lr=0.1, momentum=0.6) for b in params}
    for _ in range(3):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for b, opt in opts.items():
            for p, g in zip(params[b], grads):
                p.grad = g.clone()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(*params.values()))
    cfg = C.CifarConfig(optimizer="muon", muon_batched=True)
    assert R.param_groups(cm.CifarNet(widths=(8, 16, 16)), cfg, 100)[0]["batched"] is True


@pytest.mark.parametrize("drop_last", [True, False])
def test_epoch_augment_yields_the_same_batches(drop_last):
    from test_cifar_data import make_loader, pattern_images
    images, labels = pattern_images(70), torch.arange(70) % 10
    kw = dict(bs=16, translate=2, cutout=8, flip="alternate", channels_last=True, drop_last=drop_last, seed=3)
    per_batch, per_epoch = make_loader(images, labels, **kw), make_loader(images, labels, epoch_augment=True, **kw)
    for epoch in range(2):
        per_batch.set_epoch(epoch)
        per_epoch.set_epoch(epoch)
        pairs = list(zip(per_batch, per_epoch, strict=True))
        assert len(pairs) == (4 if drop_last else 5)
        for (x, y), (x2, y2) in pairs:
            assert torch.equal(x, x2) and torch.equal(y, y2) and x2.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(pairs[0][0][0], next(iter(make_loader(images, labels, **kw)))[0])  # epochs differ


def test_epoch_augment_augments_each_epoch_once_in_a_timed_run(data, monkeypatch):
    """start_run sets epoch 0, then the loop's for_epoch sets it again: the whole-epoch gather (inside
    the timed region) must run once per epoch, not twice for the first."""
    t = trainer(data, (["cifar", "epoch_augment"], True))
    made = []
    augment = t.train.augment
    monkeypatch.setattr(t.train, "augment", lambda idx: made.append(t.train.epoch) or augment(idx))
    t.run(0, None)
    assert made == [0, 1]


def test_a_warmup_run_gives_the_true_labels_back(data):
    """A warm-up run (compiling only) trains on random labels; the timed runs after it must train on
    the data's own labels again."""
    t = trainer(data)
    labels = t.train.labels.clone()
    t.run(0, None, warmup=True)
    assert torch.equal(t.train.labels, labels)
    t.close()
