"""Parameter groups, the SGD optimizer, and setting the scheduled learning rate."""
from __future__ import annotations

import torch
import torch.nn as nn

from training.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, no_bn_wd: bool) -> list[dict]:
    """With no_bn_wd, BatchNorm parameters and biases (all 1-d tensors) get no weight decay:
    decaying BN scales fights the normalisation and costs accuracy at large batch (imagenet18)."""
    if not no_bn_wd:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.SGD:
    groups = param_groups(model, cfg.weight_decay, cfg.no_bn_wd)
    # foreach on CPU and fused kernels on CUDA: one launch per step instead of one per tensor.
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each group may carry an 'lr_scale' (e.g. a larger lr for BN biases in the CIFAR recipe)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
