"""ghn.fastconv: stride == dilation convolutions run on the subsampled input, with the same outputs and gradients."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn.archs.darts import ConvNorm
from ghn.fastconv import StridedDilatedConvs, fast_convs, has_strided_dilated_conv


def _conv_and_grads(x, w, b, mode, **kw):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    with mode:
        y = F.conv2d(x, w, b, **kw)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y.detach(), x.grad, w.grad] + ([b.grad] if b is not None else [])


@pytest.mark.parametrize("d,k,pad_mult,size,depthwise,bias", [
    (d, k, pm, s, dw, b) for d, k, pm, s, dw, b in itertools.product((2, 3), (1, 3, 5), (0, 1, 2), (5, 8, 14),
                                                                     (True, False), (True, False))
    if ((d + k + pm + s) % 3 == 0 or (d == 2 and k == 5 and pm == 2))  # a spread of cases, the DARTS one in full
    and s + 2 * pm * d >= d * (k - 1) + 1])  # at least one output pixel
def test_strided_dilated_conv_is_exact(d, k, pad_mult, size, depthwise, bias):
    torch.manual_seed(d * 100 + k * 10 + size)
    c = 6
    x = torch.randn(3, c, size, size + 1)
    w = torch.randn(c, 1 if depthwise else c, k, k)
    b = torch.randn(c) if bias else None
    kw = dict(stride=d, padding=pad_mult * d, dilation=d, groups=c if depthwise else 1)
    ref = _conv_and_grads(x, w, b, torch.enable_grad(), **kw)
    new = _conv_and_grads(x, w, b, StridedDilatedConvs(), **kw)
    for r, n in zip(ref, new):
        assert r.shape == n.shape
        torch.testing.assert_close(n, r, rtol=1e-5, atol=1e-5)


def test_other_convs_pass_through_unchanged():
    calls = []

    class Spy(StridedDilatedConvs):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.conv2d:
                calls.append(kwargs or {})
            return super().__torch_function__(func, types, args, kwargs)

    x, w = torch.randn(2, 4, 9, 9), torch.randn(4, 4, 3, 3)
    for kw in (dict(stride=2, padding=1), dict(dilation=2, padding=2), dict(stride=2, dilation=2, padding=1),
               dict(stride=2, dilation=2, padding="valid")):
        with Spy():
            y = F.conv2d(x, w, **kw)
        assert torch.equal(y, F.conv2d(x, w, **kw))
    assert len(calls) == 4


def test_generated_reduction_op_is_exact_under_functional_call():
    torch.manual_seed(0)
    m = nn.Sequential(ConvNorm(8, 8, 5, 2, "bn", "relu", separable=True, dilation=2),
                      ConvNorm(8, 8, 3, 2, "ln", "relu", separable=True, dilation=2)).train()
    plain = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1))
    assert has_strided_dilated_conv(m) and not has_strided_dilated_conv(plain)
    assert isinstance(fast_convs(m), StridedDilatedConvs)
    params = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters()}
    x = torch.randn(4, 8, 15, 15).contiguous(memory_format=torch.channels_last)
    outs = []
    for ctx in (torch.enable_grad(), fast_convs(m)):
        with ctx:
            y = torch.func.functional_call(m, params, (x,))
        g = torch.autograd.grad(y.square().mean(), list(params.values()))
        outs.append((y.detach(), g))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
