"""Muon (Jordan et al. 2024): momentum SGD whose update for each conv filter bank is orthogonalised.

For a weight viewed as a matrix W (out x in*k*k), the momentum-smoothed gradient G is replaced by
(approximately) U V^T from its SVD G = U S V^T, computed with a few Newton-Schulz iterations. Every
direction of the update then gets the same step size, which lets the small CIFAR nets of airbench
take large, well-conditioned steps (airbench94_muon: 94% in 8 epochs instead of 9.9).

One optimizer object serves the whole model so the shared loop's ``set_lr`` (lr * lr_scale per
group) drives both kinds of groups: groups with ``muon=True`` take Muon steps; the others take
ordinary Nesterov SGD steps with coupled weight decay, exactly as torch.optim.SGD.
"""
from __future__ import annotations

import torch

# Quintic Newton-Schulz coefficients chosen to maximise the slope at zero (from the Muon write-up):
# the iteration does not converge to exactly 1 but to roughly U S' V^T with S' in ~[0.7, 1.2],
# which trains as well as the exact U V^T.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _newton_schulz(x: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
    """The iteration on a batch of matrices (B, rows, cols), rows <= cols."""
    a, b, c = NS_COEFFS
    x = x / (x.norm(dim=(1, 2), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1: inside the basin
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _work_dtype(g: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if g.is_cuda else torch.float32


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """~U V^T of a 2-d ``g`` by ``steps`` Newton-Schulz iterations (bf16 on CUDA, fp32 elsewhere)."""
    x = g.to(_work_dtype(g))
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.T
    x = _newton_schulz(x[None], steps, eps)[0]
    return (x.T if transposed else x).to(g.dtype)


def orthogonalize_batch(gs: list[torch.Tensor], steps: int = 3, eps: float = 1e-7) -> list[torch.Tensor]:
    """``orthogonalize`` of several 2-d matrices in one batched iteration (Hiverge's trick): each is
    turned so rows <= cols and zero-padded to the largest; the padding stays zero through the
    iteration and leaves each matrix's own result unchanged (X X^T is block-diagonal), so the
    launches of one iteration serve every layer."""
    turned = [g.T if g.shape[0] > g.shape[1] else g for g in gs]
    rows, cols = max(t.shape[0] for t in turned), max(t.shape[1] for t in turned)
    x = gs[0].new_zeros((len(gs), rows, cols), dtype=_work_dtype(gs[0]))
    for i, t in enumerate(turned):
        x[i, :t.shape[0], :t.shape[1]] = t
    x = _newton_schulz(x, steps, eps)
    out = []
    for i, (g, t) in enumerate(zip(gs, turned)):
        o = x[i, :t.shape[0], :t.shape[1]]
        out.append((o.T if t is not g else o).to(g.dtype))
    return out


class Muon(torch.optim.Optimizer):
    """Param groups: ``muon`` (bool), ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` (SGD
    groups only), ``ns_steps``, ``normalize`` (Muon groups: rescale each filter bank to
    Frobenius norm sqrt(out_channels) before the step, which stands in for weight decay) and
    ``batched`` (Muon groups: one Newton-Schulz iteration for all filter banks, ``orthogonalize_batch``)."""

    def __init__(self, params, lr: float = 0.0, momentum: float = 0.0, nesterov: bool = True,
                 weight_decay: float = 0.0, muon: bool = False, ns_steps: int = 3, normalize: bool = True,
                 batched: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      muon=muon, ns_steps=ns_steps, normalize=normalize, batched=batched))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["muon"]:
                self._muon_step(group, params)
            else:
                self._sgd_step(group, params)
        return loss

    def _buffers(self, params, grads):
        bufs, fresh = [], []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.clone()
                fresh.append(True)
            else:
                fresh.append(False)
            bufs.append(state["momentum_buffer"])
        return bufs, fresh

    def _sgd_step(self, group, params) -> None:
        """torch.optim.SGD's update (first step: buffer = gradient), with foreach kernels."""
        lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if m:
            bufs, fresh = self._buffers(params, grads)
            old = [b for b, f in zip(bufs, fresh) if not f]
            if old:
                torch._foreach_mul_(old, m)
                torch._foreach_add_(old, [g for g, f in zip(grads, fresh) if not f])
            grads = torch._foreach_add(grads, bufs, alpha=m) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-lr)

    def _muon_step(self, group, params) -> None:
        lr, m = group["lr"], group["momentum"]
        smoothed = []
        for p in params:
            g = p.grad
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(g)
            buf.mul_(m).add_(g)
            g = g.add(buf, alpha=m) if group["nesterov"] else buf
            if group["normalize"]:
                p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
            smoothed.append(g.reshape(len(g), -1))
        if group["batched"]:
            updates = orthogonalize_batch(smoothed, group["ns_steps"])
        else:
            updates = [orthogonalize(g, group["ns_steps"]) for g in smoothed]
        for p, update in zip(params, updates):
            p.add_(update.view(p.shape), alpha=-lr)
