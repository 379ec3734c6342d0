"""ImageNet models: any torchvision classification architecture, with imagenet18's tweaks."""
from __future__ import annotations

import torch.nn as nn
import torchvision

from training.config import ConfigError

FC_INIT_STD = 0.01  # imagenet18's init_dist_weights: every Linear weight ~ N(0, 0.01)


def check_arch(arch: str) -> None:
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"unknown --arch {arch!r}: not a torchvision classification model")


def build(arch: str, num_classes: int, init_bn0: bool = False) -> nn.Module:
    """``arch`` is a torchvision classification model name (resnet50, resnet18, ...).

    init_bn0 is imagenet18's init_dist_weights (training/resnet.py): it zero-initialises the last
    BN gamma of each residual block so every block starts as the identity, which lets the
    large-batch warm-up run at high lr (Goyal et al., 2017), and draws every Linear weight (the fc)
    from N(0, 0.01); Linear biases keep PyTorch's default init, as there.
    """
    check_arch(arch)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if init_bn0:
        from torchvision.models.resnet import BasicBlock, Bottleneck
        zeroed = 0
        for m in model.modules():
            last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
            if last_bn is not None:
                nn.init.zeros_(last_bn.weight)
                zeroed += 1
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, FC_INIT_STD)
        if not zeroed:
            raise ConfigError(f"--init-bn0: {arch} has no torchvision residual blocks to zero-initialise")
    return model
