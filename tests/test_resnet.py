"""imagenet18's init_bn0 (its resnet.py init_dist_weights) on torchvision ResNets."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.resnet import Bottleneck

from training.config import ConfigError
from training.models import resnet


def _build(init_bn0: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet.build("resnet50", 1000, init_bn0=init_bn0)


def test_init_bn0_zeroes_last_bn_and_draws_fc_weight_from_normal_0_01():
    plain, bn0 = _build(False), _build(True)
    bound = 1 / math.sqrt(2048)  # PyTorch's Linear default: U(-1/sqrt(fan_in), +1/sqrt(fan_in))
    assert plain.fc.weight.abs().max() <= bound  # left at the default without init_bn0
    w = bn0.fc.weight.detach()
    assert w.shape == (1000, 2048)
    # 2,048,000 draws: the sample std of N(0, 0.01) is within 1e-4 of 0.01 (~14 standard errors)
    assert abs(w.std().item() - 0.01) < 1e-4 and abs(w.mean().item()) < 1e-4
    # tails no uniform init can have: P(|N(0, 0.01)| > 0.0221) = 2 * (1 - Phi(2.2097)) = 0.0271
    assert abs((w.abs() > bound).float().mean().item() - 0.0271) < 1e-3
    # the fc bias keeps PyTorch's default init, as imagenet18 left it; so does everything drawn before
    torch.testing.assert_close(bn0.fc.bias, plain.fc.bias)
    zeroed = [m.bn3.weight for m in bn0.modules() if isinstance(m, Bottleneck)]
    assert len(zeroed) == 16 and all(bool((g == 0).all()) for g in zeroed)
    for (name, p), q in zip(plain.named_parameters(), bn0.parameters()):
        if name != "fc.weight" and not name.endswith("bn3.weight"):
            torch.testing.assert_close(q, p, msg=name)


def test_init_bn0_needs_residual_blocks():
    with pytest.raises(ConfigError, match="no torchvision residual blocks"):
        resnet.build("mobilenet_v2", 10, init_bn0=True)

def test_init_bn0_zeroes_the_second_bn_of_each_basic_block():
    """resnet18/34's BasicBlock ends in bn2: that gamma is zeroed (the block starts as the identity),
    bn1's is left at 1."""
    from torchvision.models.resnet import BasicBlock
    torch.manual_seed(0)
    blocks = [m for m in resnet.build("resnet18", 10, init_bn0=True).modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert all(bool((b.bn2.weight == 0).all()) and bool((b.bn1.weight == 1).all()) for b in blocks)
