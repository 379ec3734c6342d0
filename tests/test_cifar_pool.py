"""cifar.pool=reshape: the amax max-pool equals max_pool2d / adaptive_max_pool2d in values and
gradients, ties included, in both memory formats; the network built with it equals the native one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.config import ConfigError
from training.models import cifar as cm


def pooled_and_grads(pool, x: torch.Tensor, upstream_seed: int = 1):
    x = x.detach().clone().requires_grad_()
    y = pool(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64).to(y.dtype)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, kernel", [((2, 3, 8, 8), 2), ((2, 4, 31, 31), 2), ((1, 5, 7, 6), 2),
                                           ((3, 2, 9, 9), 3), ((2, 6, 3, 3), 0), ((2, 3, 5, 4), 0),
                                           ((2, 3, 17, 17), 0)])  # a window of 289 > 255 positions
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_max_pool2d_with_ties(shape, kernel, channels_last, dtype):
    gen = torch.Generator().manual_seed(0)
    # 3 distinct values: most windows hold ties, often of their maximum
    x = torch.randint(0, 3, shape, generator=gen).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    native = (lambda t: F.adaptive_max_pool2d(t, 1)) if kernel == 0 else (lambda t: F.max_pool2d(t, kernel))
    y_ref, g_ref = pooled_and_grads(native, x)
    y, g = pooled_and_grads(cm.MaxPool(kernel), x)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)
    assert y.dtype == dtype and g.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # the gradient goes to one element per window (max_pool2d's index), never split between ties
    assert (g != 0).sum() == (y_ref.numel() if kernel == 0 else (g_ref != 0).sum())
    # and on continuous values (no ties) as well
    x = torch.randn(shape, generator=gen).to(dtype)
    for a, b in zip(pooled_and_grads(native, x), pooled_and_grads(cm.MaxPool(kernel), x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, kernel", [((2, 3, 8, 8), 2), ((2, 3, 7, 7), 2), ((2, 3, 3, 3), 0)])
def test_compiled_pool_has_eagers_values_and_gradients(shape, kernel, channels_last):
    """The cifar.pool=reshape rows of `bench cifar` compile it: under torch 2.11 (the GPU machine's)
    a compiled pool once returned an alias of a tensor saved for backward and the input's gradient
    came out zero, every layer below the head untrained. aot_eager traces as inductor does, without
    its compile time."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pool = cm.MaxPool(kernel)
    torch._dynamo.reset()
    compiled = torch.compile(pool, backend="aot_eager", dynamic=False, fullgraph=True)
    y_ref, g_ref = pooled_and_grads(pool, x)
    y, g = pooled_and_grads(compiled, x)
    torch._dynamo.reset()
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref) and g.abs().sum() > 0
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_network_with_reshape_pool_equals_native():
    torch.manual_seed(0)
    native = cm.CifarNet(widths=(8, 16, 16))
    torch.manual_seed(0)
    reshaped = cm.CifarNet(widths=(8, 16, 16), pool="reshape")
    assert isinstance(reshaped.layers[1].pool, cm.MaxPool) and isinstance(reshaped.layers[4], cm.MaxPool)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    outs = []
    for net in (native, reshaped):
        net.init_whiten(x)
        y = net(x)
        y.square().sum().backward()
        outs.append((y.detach(), [p.grad for p in net.parameters() if p.requires_grad]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))
    with pytest.raises(ConfigError, match="cifar.pool"):
        cm.CifarNet(pool="avg")
