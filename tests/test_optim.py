"""Weight-decay parameter groups: imagenet18's --no-bn-wd (BatchNorm only) and the separate no_bias_wd."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from training.config import OptimConfig
from training.models import resnet
from training.optim import param_groups, sgd


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _bn_names(model: nn.Module) -> set[str]:
    return {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)
            for p in ("weight", "bias")}


def test_no_bn_wd_is_imagenet18s_batchnorm_only_rule():
    model = resnet.build("resnet50", 1000)
    decay, exempt = param_groups(model, 1e-4, no_bn_wd=True)
    # ResNet-50: 53 BatchNorm2d (weight, bias) exempt; 53 bias-free convs and the fc weight + bias decay
    assert (len(decay["params"]), len(exempt["params"])) == (55, 106)
    assert (decay["weight_decay"], exempt["weight_decay"]) == (1e-4, 0.0)
    assert _names(model, exempt) == _bn_names(model)
    convs = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, nn.Conv2d)}
    assert _names(model, decay) == convs | {"fc.weight", "fc.bias"}


def test_no_bias_wd_exempts_biases_and_with_no_bn_wd_every_1d_tensor():
    for arch in ("resnet50", "resnet18"):
        model = resnet.build(arch, 10)
        decay, exempt = param_groups(model, 1e-4, no_bn_wd=True, no_bias_wd=True)
        one_d = {n for n, p in model.named_parameters() if p.ndim <= 1}  # what --no-bn-wd exempted before
        assert _names(model, exempt) == one_d == _bn_names(model) | {"fc.bias"}
        assert _names(model, decay) == {n for n, p in model.named_parameters() if p.ndim > 1}
    decay, exempt = param_groups(model, 1e-4, no_bn_wd=False, no_bias_wd=True)
    assert _names(model, exempt) == {n for n in _bn_names(model) if n.endswith(".bias")} | {"fc.bias"}
    assert [len(g["params"]) for g in param_groups(model, 1e-4, False)] == [len(list(model.parameters()))]


@pytest.mark.parametrize("no_bias_wd,kept", [(False, {"1.weight", "1.bias"}),
                                              (True, {"1.weight", "1.bias", "0.bias", "2.bias"})])
def test_sgd_step_decays_all_but_the_exempt(no_bias_wd, kept):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = OptimConfig(momentum=0.0, weight_decay=0.5, no_bn_wd=True, no_bias_wd=no_bias_wd)
    opt = sgd(model, cfg, torch.device("cpu"))
    for g in opt.param_groups:
        g["lr"] = 0.1
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():  # zero gradient: a decayed tensor shrinks by lr * wd = 5%
        factor = 1.0 if n in kept else 0.95
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)
