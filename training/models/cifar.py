"""The airbench-class CIFAR network (Jordan 2024, arXiv 2404.00498; after tysam's hlb-CIFAR10).

    whiten (2x2 conv, 24 ch, frozen, set from data) -> GELU
    -> 3 x [conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU]   (32 -> 15 -> 7 -> 3 px)
    -> maxpool3 -> linear (no bias) -> x head_scale (/ the head's width too with head_unit_std)

Why each piece (the paper's ablations, section 3):
- Patch-whitening first layer: its filters are the eigenvectors of the covariance of 2x2x3 input
  patches, scaled by 1/sqrt(eigenvalue + eps), and their negatives (so the GELU after it passes both
  signs). The first layer then outputs decorrelated, unit-variance features from step 0 and is not
  trained (its bias trains for the first few epochs only). Largest single speed-up of the method.
- Dirac (identity) init: the first ``in_channels`` filters of every 3x3 conv start as the identity,
  so each block starts close to a residual identity map without residual connections' cost.
- BatchNorm with frozen scale (weight fixed at 1): the scale is redundant with the next conv's
  weights under weight decay; freezing it removes parameters without loss. Biases get a larger lr
  (the recipe's ``bias_lr_scale``). Running statistics use a low momentum (airbench: 0.6 kept,
  0.4 new) because the run is only ~500 steps long.
- Scaled-down logits (x 1/9): a fixed temperature that suits label smoothing and the short run.

The model is re-initialised in place (``reset``) between runs so a torch.compile'd wrapper around it
is compiled once and reused.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.config import ConfigError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
MAX_WIDTH = 4096  # channels of a conv group (the GPU recipe: 256); 4096 is 600 MB of 3x3 weights already


class BatchNorm(nn.BatchNorm2d):
    """BN whose ``momentum`` argument is airbench's: the weight kept on the old running stats."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12,
                 frozen_weight: bool = True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(not frozen_weight)


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias; optionally identity (dirac) initialised on its first in_channels filters."""

    def __init__(self, channels_in: int, channels_out: int, dirac: bool = True):
        self.dirac = dirac  # set before super().__init__, which calls reset_parameters
        super().__init__(channels_in, channels_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.dirac:
            w = self.weight.data
            nn.init.dirac_(w[: min(w.size(0), w.size(1))])


def _windows(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """(N, C, H // kh, kh, W // kw, kw) view of the top-left whole windows of ``x`` (floor mode)."""
    n, c, h, w = x.shape
    return x[:, :, :h - h % kh, :w - w % kw].unflatten(3, (w // kw, kw)).unflatten(2, (h // kh, kh))


class _WindowMax(torch.autograd.Function):
    """Max pooling with kernel = stride = (kh, kw), floor mode, as one amax over a reshaped view.

    max_pool2d also writes an int64 index per output and its backward scatters through it (on
    airbench94's H200 profile: 30% of GPU time, forward and backward); here the forward writes only
    the maxima and the backward is a masked copy of the output gradient. The mask picks each
    window's first maximum in row-major order, the element max_pool2d's index points at, so values
    and gradients equal max_pool2d's, ties included (tests/test_cifar_pool.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
        y = _windows(x, kh, kw).amax(dim=(3, 5))
        if not y.is_contiguous(memory_format=_memory_format(x)):
            # only where it copies: under torch 2.11's compiler, returning .contiguous()'s alias of a
            # saved tensor gave the input a zero gradient (eager was right)
            y = y.contiguous(memory_format=_memory_format(x))
        ctx.save_for_backward(x, y)
        ctx.kernel = (kh, kw)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, y = ctx.saved_tensors
        kh, kw = ctx.kernel
        win = _windows(x, kh, kw)
        # rank of each window position, highest first in row-major order: among the maxima of a
        # window, the highest rank is the first one
        small = torch.uint8 if kh * kw < 256 else torch.int32  # a byte per position where it fits
        rank = torch.arange(kh * kw, 0, -1, device=x.device, dtype=small).view(kh, 1, kw)
        score = torch.where(win == y[:, :, :, None, :, None], rank, 0)
        first = score == score.amax(dim=(3, 5), keepdim=True)
        gx = torch.zeros_like(x, memory_format=_memory_format(x))
        _windows(gx, kh, kw).copy_(torch.where(first, gy[:, :, :, None, :, None], 0))
        return gx, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


class MaxPool(nn.Module):
    """max_pool2d(x, kernel) (``kernel`` 0: the global max, as AdaptiveMaxPool2d(1)) by ``_WindowMax``."""

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = (self.kernel, self.kernel) if self.kernel else x.shape[-2:]
        return _WindowMax.apply(x, kh, kw)


POOLS = {"native": (lambda: nn.MaxPool2d(2), lambda: nn.AdaptiveMaxPool2d(1)),
         "reshape": (lambda: MaxPool(2), lambda: MaxPool(0))}


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, act: type[nn.Module], dirac: bool,
                 bn_momentum: float, bn_eps: float, bn_frozen_weight: bool, pool: str = "native"):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out, dirac)
        self.pool = POOLS[pool][0]()
        self.norm1 = BatchNorm(channels_out, bn_momentum, bn_eps, bn_frozen_weight)
        self.conv2 = Conv(channels_out, channels_out, dirac)
        self.norm2 = BatchNorm(channels_out, bn_momentum, bn_eps, bn_frozen_weight)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class CifarNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 256, 256),
                 whiten_kernel: int = 2, whiten_frozen: bool = True, dirac: bool = True,
                 bn_momentum: float = 0.6, bn_eps: float = 1e-12, bn_frozen_weight: bool = True,
                 act: str = "gelu", head_scale: float = 1 / 9, head_unit_std: bool = False, pool: str = "native"):
        super().__init__()
        if len(widths) != 3 or not all(type(w) is int and 0 < w <= MAX_WIDTH for w in widths):  # bool is no width
            raise ConfigError(f"cifar.widths: expected 3 integers in 1..{MAX_WIDTH}, got {list(widths)!r}")
        if act not in ACTIVATIONS:
            raise ConfigError(f"cifar.act: {act!r} is not one of {', '.join(ACTIVATIONS)}")
        if pool not in POOLS:
            raise ConfigError(f"cifar.pool: {pool!r} is not one of {', '.join(POOLS)}")
        if whiten_kernel < 1 or whiten_kernel > 5:
            raise ConfigError(f"cifar.whiten_kernel: expected 1..5 px, got {whiten_kernel}")
        act_cls = ACTIVATIONS[act]
        # Twice the patch dimension: the whitening filters and their negatives.
        whiten_width = 2 * 3 * whiten_kernel ** 2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(not whiten_frozen)
        self.head_unit_std = head_unit_std
        # airbench94_muon's head: unit-std weights, logits divided by its width, so the scale follows widths[2]
        self.logit_scale = head_scale / widths[2] if head_unit_std else head_scale
        bn = dict(bn_momentum=bn_momentum, bn_eps=bn_eps, bn_frozen_weight=bn_frozen_weight, pool=pool)
        self.layers = nn.Sequential(
            act_cls(),
            ConvGroup(whiten_width, widths[0], act_cls, dirac, **bn),
            ConvGroup(widths[0], widths[1], act_cls, dirac, **bn),
            ConvGroup(widths[1], widths[2], act_cls, dirac, **bn),
            POOLS[pool][1](),  # global max: 3x3 -> 1x1 at 32 px input, as airbench's MaxPool2d(3)
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Fresh random weights in place (parameters keep their identity, so a compiled wrapper stays
        valid); the whitening weight must be set again with ``init_whiten`` afterwards."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()
        self.whiten.bias.zero_()
        self.whiten.bias.requires_grad_(True)  # trains for the first epochs of each run
        if self.head_unit_std:  # airbench94_muon: unit-std head, logits divided by the width instead
            self.head.weight.mul_(1 / self.head.weight.std())

    def half_weights(self, dtype: torch.dtype) -> None:
        """Weights in ``dtype`` (fp16/bf16), BatchNorm kept in fp32 (cuDNN takes half inputs with
        fp32 statistics), as airbench94: no autocast casts per step, half-size optimizer traffic."""
        self.to(dtype)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.float()

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to whiten the (uncentred) covariance of its input patches.

        ``images``: normalised training images (N, 3, H, W). eps (in units of patch variance)
        caps the gain on near-zero-variance directions (at 1/sqrt(eps)).
        """
        weight = whitening_weights(images, self.whiten.kernel_size[0], eps)
        self.whiten.weight.copy_(weight.to(self.whiten.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.whiten(x))
        return self.head(x.flatten(1)) * self.logit_scale


def patches(images: torch.Tensor, k: int) -> torch.Tensor:
    """All k x k patches (stride 1) of ``images`` as rows of a (num_patches, 3*k*k) fp32 matrix,
    in the (channel, row, column) order of a conv weight's flattened filter."""
    cols = F.unfold(images.float(), kernel_size=k)  # (N, C*k*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def whitening_weights(images: torch.Tensor, k: int, eps: float = 5e-4) -> torch.Tensor:
    """(2*3*k*k, 3, k, k) conv weights: rows of V^T / sqrt(lambda + eps) and their negatives, where
    V, lambda are the eigenvectors and eigenvalues of the patch second-moment matrix."""
    p = patches(images, k)
    cov = p.T @ p / p.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest first
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
    c = images.shape[1]
    filters = filters.reshape(-1, c, k, k)
    return torch.cat((filters, -filters))


def build(cfg, num_classes: int) -> CifarNet:
    """The network from a CifarConfig."""
    return CifarNet(num_classes=num_classes, widths=tuple(cfg.widths), whiten_kernel=cfg.whiten_kernel,
                    whiten_frozen=cfg.whiten, dirac=cfg.dirac, bn_momentum=cfg.bn_momentum,
                    bn_eps=cfg.bn_eps, bn_frozen_weight=cfg.bn_frozen_weight, act=cfg.act,
                    head_scale=cfg.head_scale, head_unit_std=cfg.head_unit_std, pool=cfg.pool)
