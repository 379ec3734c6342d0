"""Parameter groups, the SGD optimizer, and setting the scheduled learning rate."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from training.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, no_bn_wd: bool, no_bias_wd: bool = False) -> list[dict]:
    """Split the trainable parameters into a decayed group and one without weight decay.

    no_bn_wd is imagenet18's rule (experimental_utils.split_bn_params): the weight and bias of every
    BatchNorm module (any _BatchNorm: 1d/2d/3d, SyncBatchNorm), nothing else; decaying BN scales
    fights the normalisation and costs accuracy at large batch. no_bias_wd also exempts every
    module's ``bias`` (the fc bias of a ResNet), Jia et al. 2018's "no bias decay"; with both, a
    ResNet's exempt set is every 1-d tensor, which is what --no-bn-wd did here before.
    """
    exempt: set[int] = set()
    for m in model.modules():
        if no_bn_wd and isinstance(m, _BatchNorm):
            exempt.update(id(p) for p in m.parameters(recurse=False))
        if no_bias_wd and isinstance(getattr(m, "bias", None), nn.Parameter):
            exempt.add(id(m.bias))
    params = [p for p in model.parameters() if p.requires_grad]
    if not exempt:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]


def sgd(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.SGD:
    groups = param_groups(model, cfg.weight_decay, cfg.no_bn_wd, cfg.no_bias_wd)
    # foreach on CPU and fused kernels on CUDA: one launch per step instead of one per tensor.
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each group may carry an 'lr_scale' (e.g. a larger lr for BN biases in the CIFAR recipe)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
